"""``python -m pyproperf view``: one self-contained HTML report of any pprof file.

The page holds its own script and style (``report.js``, ``report.css``,
both ours, inlined) and the profile as JSON (``_model``), plus the source
lines of the sampled functions (``_source``).  Nothing is fetched when it is
viewed: a Content-Security-Policy allows no network at all, and only our
own script (by its hash) may run.  Names, files and labels in a profile are
untrusted text: the JSON is escaped so that it cannot end its ``<script>``
element, and the script writes text with ``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from functools import cache
from importlib import resources
from typing import Any

from pyproperf import _io, _read, _top
from pyproperf._view import _model, _source

__all__ = ["DEFAULT_MAX_NODES", "html_path_for", "render", "size_text", "write_report"]

DEFAULT_MAX_NODES = _model.DEFAULT_MAX_NODES

# What may not appear raw in a <script> element's JSON: "</script", "<!--"
# and the like all need "<"; "&" and ">" are escaped as well, and U+2028/9 by
# ensure_ascii.  JSON.parse reads the \\u escapes back as the same text.
_UNSAFE = re.compile(r"[<>&]")


@cache
def _asset(name: str) -> str:
    return resources.files("pyproperf._view").joinpath(name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render(
    profile: Any,
    *,
    title: str,
    source: bool = True,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> bytes:
    """The report of a decoded profile (``_builder.decode``), as UTF-8 HTML."""
    model = _model.build(profile, title=title, max_nodes=max_nodes)
    sources = _source.collect(model) if source else {}
    model.meta["sourceEmbedded"] = source
    data = _script_json(model.to_json(sources))
    js, css = _asset("report.js"), _asset("report.css")
    for name, text in (("report.js", js), ("report.css", css)):
        if re.search(r"</(script|style)", text, re.IGNORECASE):  # pragma: no cover - our files
            raise RuntimeError(f"{name} must not contain a closing tag")
    csp = (
        "default-src 'none'; "
        f"script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    parts = {
        "CSP": html.escape(csp),
        "TITLE": html.escape(title),
        "CSS": css,
        "DATA": data,
        "JS": js,
    }
    # One pass: text put in is never searched for markers again.
    page = re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m.group(1)], _asset("template.html"))
    return page.encode("utf-8")


def size_text(size: int) -> str:
    """A report's size for people: ``85 kB``, ``3.1 MB``."""
    return f"{size / 1e6:.1f} MB" if size >= 1_000_000 else f"{max(1, round(size / 1000))} kB"


def html_path_for(profile_path: str) -> str:
    """Where ``run --html`` puts the report: ``cpu.pb.gz`` -> ``cpu.html``."""
    base = profile_path
    for suffix in (".pb.gz", ".pprof", ".pb", ".gz", ".prof"):
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return base + ".html"


def write_report(
    profile_path: str,
    output: str,
    *,
    max_size: int = _read.DEFAULT_MAX_SIZE,
    source: bool = True,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> int:
    """Read ``profile_path`` and write its report to ``output`` whole; the report's size.

    ValueError (one line) for a file that is not a profile; OSError if the
    report cannot be written (nothing half-written is left).
    """
    profile = _top.load(profile_path, max_size)
    page = render(
        profile, title=os.path.basename(profile_path), source=source, max_nodes=max_nodes
    )
    _io.write_file(output, page)
    return len(page)
