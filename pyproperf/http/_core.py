"""Transport-free core of ``pyproperf.http``: Go's net/http/pprof handlers.

``route(method, path, query, max_seconds)`` turns one request into either a
finished ``Response`` or a ``Job`` (``/profile`` and ``NAME?seconds=N``)
that the transport runs: ``job.start()``, wait ``job.seconds`` (returning
early if the client leaves), then ``job.finish()`` or ``job.cancel()``.
The WSGI app, the ASGI app and the stdlib server differ only in how they
read the request, wait and write the response.

Status codes, headers and messages are Go 1.27's (pprof-reference §6).
Nothing from the request is echoed back or logged, except a redirect's
``Location``, which is re-quoted.
"""

from __future__ import annotations

import contextlib
import gc
import html
import io
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pyproperf import _builder, _cpu, _registry

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "PREFIX",
    "Job",
    "Response",
    "check_max_seconds",
    "check_prefix",
    "parse_query",
    "route",
]

log = logging.getLogger("pyproperf.http")

PREFIX = "/debug/pprof/"
# Longest /profile or delta profile served, in seconds (Go has no cap).
DEFAULT_MAX_SECONDS = 300
# Go's default /profile duration when ``seconds`` is missing or invalid.
DEFAULT_PROFILE_SECONDS = 30
MAX_HZ = 1000

PLAIN = "text/plain; charset=utf-8"
NOSNIFF = ("X-Content-Type-Options", "nosniff")

# Profiles whose ``seconds=N`` gives a delta profile (Go's profileSupportsDelta).
DELTA_PROFILES = frozenset(
    {"allocs", "block", "goroutineleak", "goroutine", "heap", "mutex", "threadcreate"}
)

# Go's profileDescriptions, verbatim.
DESCRIPTIONS = {
    "allocs": "A sampling of all past memory allocations",
    "block": "Stack traces that led to blocking on synchronization primitives",
    "cmdline": "The command line invocation of the current program",
    "goroutine": "Stack traces of all current goroutines. Use debug=2 as a query parameter to "
    "export in the same format as an unrecovered panic.",
    "heap": "A sampling of memory allocations of live objects. You can specify the gc GET "
    "parameter to run GC before taking the heap sample.",
    "mutex": "Stack traces of holders of contended mutexes",
    "profile": "CPU profile. You can specify the duration in the seconds GET parameter. After "
    "you get the profile file, use the go tool pprof command to investigate the profile.",
    "symbol": "Maps given program counters to function names. Counters can be specified in a "
    "GET raw query or POST body, multiple counters are separated by '+'.",
    "threadcreate": "Stack traces that led to the creation of new OS threads",
    "trace": "A trace of execution of the current program. You can specify the duration in "
    "the seconds GET parameter. After you get the trace file, use the go tool trace command "
    "to investigate the trace.",
    "goroutineleak": "Stack traces of all leaked goroutines. Use debug=2 as a query parameter "
    "to export in the same format as an unrecovered panic.",
}

_INDEX_HEAD = """<html>
<head>
<title>/debug/pprof/</title>
<style>
.profile-name{
\tdisplay:inline-block;
\twidth:6rem;
}
</style>
</head>
<body>
/debug/pprof/
<br>
<p>Set debug=1 as a query parameter to export in legacy text format</p>
<br>
Types of profiles available:
<table>
<thead><td>Count</td><td>Profile</td></thead>
"""
_INDEX_MIDDLE = """</table>
<a href="goroutine?debug=2">full goroutine stack dump</a>
<br>
<p>
Profile Descriptions:
<ul>
"""
_INDEX_TAIL = """</ul>
</p>
</body>
</html>"""


@dataclass
class Response:
    """A complete HTTP response: status, headers in order, body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def error(status: int, text: str) -> Response:
    """Go's serveError: plain text, ``X-Go-Pprof: 1``, message plus newline."""
    headers = [NOSNIFF, ("Content-Type", PLAIN), ("X-Go-Pprof", "1")]
    return Response(status, headers, text.encode() + b"\n")


def _http_error(status: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    """Go's http.Error (mux errors: 404, 405): plain text without X-Go-Pprof."""
    return Response(status, [("Content-Type", PLAIN), NOSNIFF, *extra], text.encode() + b"\n")


def method_not_allowed() -> Response:
    return _http_error(405, "Method Not Allowed", (("Allow", "GET, HEAD"),))


def not_found() -> Response:
    return _http_error(404, "404 page not found")


def _octet(filename: str, body: bytes) -> Response:
    headers = [
        NOSNIFF,
        ("Content-Type", "application/octet-stream"),
        ("Content-Disposition", f'attachment; filename="{_header_safe(filename)}"'),
    ]
    return Response(200, headers, body)


def _header_safe(text: str) -> str:
    """Quote a profile name for a header: no quotes, controls or non-ASCII."""
    return re.sub(r'[^\x20-\x7e]|["\\]', _percent, text)


def _percent(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass"))


# -- Go's query parsing and number syntax ------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape(text: str) -> str | None:
    """Go's QueryUnescape: ``+`` is a space, ``%XX`` a byte; None if malformed."""
    if _BAD_ESCAPE.search(text):
        return None
    raw = text.replace("+", " ").encode("latin-1", "replace")
    out = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return out.decode("utf-8", "replace")


def parse_query(raw: str) -> dict[str, str]:
    """Go's url.ParseQuery, first value per key (what ``r.FormValue`` returns).

    Pairs containing ``;`` or a bad ``%`` escape are dropped, as Go drops them.
    """
    values: dict[str, str] = {}
    for pair in raw.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        k, v = _unescape(key), _unescape(value)
        if k is None or v is None:
            continue
        values.setdefault(k, v)
    return values


def parse_int(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``: None on a syntax or range error."""
    if not _INT.fullmatch(text):
        return None
    n = int(text)
    return n if -_INT64_MAX - 1 <= n <= _INT64_MAX else None


def atoi(text: str) -> int:
    """Go's ``strconv.Atoi`` with the error ignored: 0 if malformed, clamped if huge."""
    if not _INT.fullmatch(text):
        return 0
    return max(-_INT64_MAX - 1, min(_INT64_MAX, int(text)))


# -- routing -----------------------------------------------------------------------------


class Job(Protocol):
    """A request that waits ``seconds`` between ``start`` and ``finish``."""

    seconds: int

    def start(self) -> Response | None:
        """Begin; a Response here is an error answered at once (nothing left running)."""

    def finish(self) -> Response:
        """End early or on time and build the answer; never leaves anything running."""

    def cancel(self) -> None:
        """The client left: stop and discard; idempotent."""


def route(
    method: str,
    path: str,
    query: str,
    *,
    prefix: str = PREFIX,
    max_seconds: int = DEFAULT_MAX_SECONDS,
    mount: str = "",
) -> Response | Job:
    """Answer one request.

    ``path`` is URL-decoded and relative to ``mount`` (a WSGI SCRIPT_NAME or
    ASGI root_path, used only to build redirects); ``query`` is the raw
    query string.  Paths outside ``prefix`` get Go's 404 page.
    """
    if not path.startswith(prefix):
        if path == prefix[:-1]:
            return _redirect_or_405(method, mount + prefix, query)
        return not_found()
    if method not in ("GET", "HEAD"):
        return method_not_allowed()
    name = path[len(prefix) :]
    cleaned = _clean(name)
    if cleaned != name:
        return _redirect(mount + prefix + cleaned, query)
    params = parse_query(query)
    if name == "":
        return index()
    if name == "cmdline":
        return cmdline()
    if name == "profile":
        return profile(params, max_seconds)
    if name == "symbol":
        return symbol()
    if name == "trace":
        return error(500, "Could not enable tracing: Go execution traces do not exist in Python")
    return named_profile(name, params, max_seconds)


def _clean(name: str) -> str:
    """Go's mux path cleaning for the part after the prefix (``//``, ``.``, ``..``)."""
    if "//" not in name and "." not in name and not name.startswith("/"):
        return name
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    trailing = name.endswith(("/", "/.", "/.."))
    out = "/".join(parts)
    return out + "/" if trailing and out else out


def _redirect_or_405(method: str, target: str, query: str) -> Response:
    if method not in ("GET", "HEAD"):
        return method_not_allowed()
    return _redirect(target, query)


def _redirect(target: str, query: str) -> Response:
    """Go's mux redirect (307) to the cleaned path; the path is re-quoted, never echoed raw."""
    location = url_path(target)
    if query:
        # ``query`` holds the raw bytes as latin-1 (WSGI, ASGI and http.server alike).
        location += "?" + re.sub(r"[^\x21-\x7e]", lambda m: f"%{ord(m.group()) & 0xFF:02X}", query)
    body = f'<a href="{html.escape(location)}">Temporary Redirect</a>.\n\n'
    return Response(
        307, [("Content-Type", "text/html; charset=utf-8"), ("Location", location)], body.encode()
    )


_PATH_ESCAPE = re.compile(r"[^A-Za-z0-9\-_.~$&+,/:;=@]")


def url_path(path: str) -> str:
    """Go's ``url.URL{Path: path}.String()`` for a relative path (escapes, ``./`` guard)."""
    out = _PATH_ESCAPE.sub(_percent, path)
    first = out.split("/", 1)[0]
    if ":" in first:
        out = "./" + out
    return out


# -- the endpoints -----------------------------------------------------------------------


def index() -> Response:
    """The /debug/pprof/ page, byte for byte as Go's (counts of this process)."""
    entries: list[tuple[str, int]] = []
    for p in _registry.profiles():
        try:
            count = p.count()
        except Exception:
            log.exception("pyproperf.http: count of profile %s failed", _loggable(p.name()))
            count = 0
        entries.append((p.name(), count))
    entries += [(n, 0) for n in ("cmdline", "profile", "symbol", "trace")]
    entries.sort(key=lambda e: e[0].encode("utf-8", "surrogatepass"))
    out = [_INDEX_HEAD]
    for name, count in entries:
        href = url_path(name) + "?debug=1"
        out.append(f"<tr><td>{count}</td><td><a href='{href}'>{_escape(name)}</a></td></tr>\n")
    out.append(_INDEX_MIDDLE)
    for name, _ in entries:
        desc = DESCRIPTIONS.get(name, "")
        out.append(f"<li><div class=profile-name>{_escape(name)}: </div> {_escape(desc)}</li>\n")
    out.append(_INDEX_TAIL)
    body = "".join(out).encode("utf-8", "surrogateescape")
    return Response(200, [NOSNIFF, ("Content-Type", "text/html; charset=utf-8")], body)


def _escape(text: str) -> str:
    """Go's html.EscapeString: ``<>&'"`` (``'`` as ``&#39;``, ``"`` as ``&#34;``)."""
    return html.escape(text).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def _loggable(text: str, limit: int = 80) -> str:
    """A name made safe for a log line: escaped and cut short."""
    return ascii(text[:limit])[1:-1] + ("..." if len(text) > limit else "")


def cmdline() -> Response:
    """The process arguments joined with NUL bytes, as Go's Cmdline (``sys.orig_argv``)."""
    argv = getattr(sys, "orig_argv", None) or sys.argv
    body = b"\x00".join(os.fsencode(a) for a in argv)
    return Response(200, [NOSNIFF, ("Content-Type", PLAIN)], body)


def symbol() -> Response:
    """No program counters to resolve in Python: ``num_symbols: 0`` tells pprof so."""
    return Response(200, [NOSNIFF, ("Content-Type", PLAIN)], b"num_symbols: 0\n")


def check_max_seconds(max_seconds: object) -> int:
    """Validate a ``max_seconds`` option: a positive int."""
    if not isinstance(max_seconds, int) or isinstance(max_seconds, bool):
        raise TypeError(f"max_seconds must be an int, not {type(max_seconds).__name__}")
    if max_seconds < 1:
        raise ValueError(f"max_seconds must be at least 1, got {max_seconds}")
    return max_seconds


def check_prefix(prefix: object) -> str:
    """Validate a ``prefix`` option: a path that starts and ends with ``/``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not (prefix.startswith("/") and prefix.endswith("/")):
        raise ValueError(f"prefix must start and end with '/', got {prefix!r}")
    return prefix


def _too_long(max_seconds: int) -> Response:
    return error(400, f"profile duration exceeds server's limit of {max_seconds} seconds")


def profile(params: Mapping[str, str], max_seconds: int) -> Response | Job:
    """``/profile``: Go's parameter handling, plus ``hz`` and ``clock``, then a CPU job."""
    sec = parse_int(params.get("seconds", ""))
    if sec is None or sec <= 0:
        sec = DEFAULT_PROFILE_SECONDS
    if sec > max_seconds:
        return _too_long(max_seconds)
    hz = 100
    if "hz" in params:
        parsed = parse_int(params["hz"])
        if parsed is None or not 1 <= parsed <= MAX_HZ:
            return error(400, f'invalid value for "hz" - must be an integer from 1 to {MAX_HZ}')
        hz = parsed
    clock = params.get("clock", "cpu") or "cpu"
    if clock not in ("cpu", "wall"):
        return error(400, 'invalid value for "clock" - must be "cpu" or "wall"')
    return CPUJob(sec, hz, clock)


class CPUJob:
    """A CPU (or wall-clock) profile of ``seconds``; stopped on finish, cancel or error."""

    def __init__(self, seconds: int, hz: int, clock: str) -> None:
        self.seconds = seconds
        self.hz = hz
        self.clock = clock
        self._buf = io.BytesIO()
        self._running = False
        self._token: object = None

    def start(self) -> Response | None:
        try:
            self._token = _cpu.start_owned_cpu_profile(self._buf, hz=self.hz, clock=self.clock)
        except RuntimeError as exc:
            return error(500, f"Could not enable CPU profiling: {exc}")
        except Exception:
            log.exception("pyproperf.http: start_cpu_profile failed")
            return error(500, "Could not enable CPU profiling: internal error")
        self._running = True
        return None

    def _stop(self) -> None:
        if self._running:
            self._running = False
            _cpu.stop_owned_cpu_profile(self._token)

    def finish(self) -> Response:
        try:
            self._stop()
        except Exception:
            log.exception("pyproperf.http: stop_cpu_profile failed")
            return error(500, "Could not write CPU profile: internal error")
        return _octet("profile", self._buf.getvalue())

    def cancel(self) -> None:
        try:
            self._stop()
        except Exception:
            log.exception("pyproperf.http: stop_cpu_profile failed")


def named_profile(name: str, params: Mapping[str, str], max_seconds: int) -> Response | Job:
    """``/debug/pprof/NAME``: Go's handler.ServeHTTP."""
    p = _registry.lookup(name)
    if p is None:
        return error(404, "Unknown profile")
    seconds = params.get("seconds", "")
    if seconds != "":
        sec = parse_int(seconds)
        if sec is None or sec <= 0:
            return error(400, 'invalid value for "seconds" - must be a positive integer')
        if name not in DELTA_PROFILES:
            return error(400, '"seconds" parameter is not supported for this profile type')
        if sec > max_seconds:
            return _too_long(max_seconds)
        if atoi(params.get("debug", "")) != 0:
            return error(400, "seconds and debug params are incompatible")
        return DeltaJob(name, sec)
    if name == "heap" and atoi(params.get("gc", "")) > 0:
        gc.collect()
    debug = atoi(params.get("debug", ""))
    # Go passes any non-zero debug on; a negative one gets text too (except from
    # goroutine, whose proto body under a text/plain header we do not copy).
    level = 0 if debug == 0 else 2 if debug >= 2 else 1
    buf = io.BytesIO()
    try:
        with _quietly(name):
            p.write_to(buf, level)
    except Exception:
        log.exception("pyproperf.http: writing profile %s failed", _loggable(name))
        return error(500, "failed to write profile")
    if level:
        return Response(200, [NOSNIFF, ("Content-Type", PLAIN)], buf.getvalue())
    return _octet(name, buf.getvalue())


def _collect(name: str) -> tuple[bytes, int]:
    """Go's collectProfile: the proto, then the time it was taken."""
    p = _registry.lookup(name)
    if p is None:
        raise LookupError("profile vanished")
    buf = io.BytesIO()
    with _quietly(name):
        p.write_to(buf, 0)
    return buf.getvalue(), time.time_ns()


def _quietly(name: str) -> contextlib.AbstractContextManager[None]:
    """Render ``name`` without warnings: the response explains, the host's stderr stays clean."""
    if name in ("heap", "allocs"):
        from pyproperf import _heap

        return _heap.serving()
    return contextlib.nullcontext()


class DeltaJob:
    """``NAME?seconds=N``: snapshot now and after N seconds; answer the second minus the first."""

    def __init__(self, name: str, seconds: int) -> None:
        self.name = name
        self.seconds = seconds
        self._first: tuple[bytes, int] | None = None

    def start(self) -> Response | None:
        try:
            self._first = _collect(self.name)
        except Exception:
            log.exception("pyproperf.http: collecting profile %s failed", _loggable(self.name))
            return error(500, "failed to collect profile")
        return None

    def finish(self) -> Response:
        first, self._first = self._first, None
        if first is None:
            return error(500, "failed to collect profile")
        try:
            second = _collect(self.name)
        except Exception:
            log.exception("pyproperf.http: collecting profile %s failed", _loggable(self.name))
            return error(500, "failed to collect profile")
        try:
            body = _builder.merge_profiles(
                [first[0], second[0]],
                scales=[-1, 1],
                time_nanos=second[1],
                duration_nanos=second[1] - first[1],
            )
        except Exception:
            log.exception("pyproperf.http: delta of profile %s failed", _loggable(self.name))
            return error(500, "failed to compute delta")
        return _octet(f"{self.name}-delta", body)

    def cancel(self) -> None:
        self._first = None
