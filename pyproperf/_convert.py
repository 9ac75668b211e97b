"""``python -m pyproperf convert``: a pprof file as folded stacks or speedscope JSON.

* ``collapsed``: Brendan Gregg's folded stacks, what ``flamegraph.pl``,
  inferno and speedscope read: one line per distinct stack,
  ``root;caller;leaf VALUE``, sorted.  All threads are merged, as in
  ``go tool pprof``'s flame graph; ``tagroot`` keys (``thread``) put the
  sample's label values as root frames, as pprof's ``-tagroot`` does.
* ``speedscope``: speedscope's own JSON file format
  (https://www.speedscope.app/file-format-schema.json): one "sampled"
  profile per value of the ``thread`` label (the ``thread`` labels
  pyproperf writes), a shared frames table (function name, file and first
  line), and the unit of the sample type.

Frames are what ``go tool pprof -top`` shows: the same names (pprof's clean
up, inlined frames as frames of their own), ``drop_frames`` pruned, so that
a reader's totals per function equal pprof's flat and cum.  Only samples
with a positive value are written: both formats hold weights, not signed
differences (Go's diff profiles have negative values).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pyproperf import _top

__all__ = ["FORMATS", "collapsed", "convert", "speedscope"]

FORMATS = ("collapsed", "speedscope")
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
THREAD_LABEL = "thread"

# A frame as written: (shown name, file, first line of the function).
Frame = tuple[str, str, int]

# speedscope's units, by pprof unit (lower case); anything else is "none".
_SPEEDSCOPE_UNITS = {
    "nanoseconds": "nanoseconds", "nanosecond": "nanoseconds", "ns": "nanoseconds",
    "microseconds": "microseconds", "microsecond": "microseconds", "us": "microseconds",
    "milliseconds": "milliseconds", "millisecond": "milliseconds", "ms": "milliseconds",
    "seconds": "seconds", "second": "seconds", "s": "seconds",
    "bytes": "bytes", "byte": "bytes", "b": "bytes",
}


def _stacks(
    profile: Any, index: int, keep: Callable[[Any], bool] | None
) -> Iterator[tuple[Any, list[Frame], int]]:
    """Each kept sample with a positive value: (sample, frames root first, value)."""
    st = profile.string_table
    names = {f.id: _top.shown_name(st[f.name], st[f.system_name]) for f in profile.function}
    location_lines = {loc.id: [ln.function_id for ln in loc.line] for loc in profile.location}
    marks = _top._prune(profile, names, location_lines)
    node_keys = _top._location_nodes(profile, names, location_lines)
    functions = {f.id: f for f in profile.function}
    # location id -> its frames, outermost (caller) first
    frames: dict[int, list[Frame]] = {}
    for lid, keys in node_keys.items():
        fids = location_lines[lid]
        out: list[Frame] = []
        for i, key in enumerate(keys):
            f = functions.get(fids[i]) if i < len(fids) else None
            name = _top.printable_name(key)
            out.append((name, st[f.filename], f.start_line) if f is not None else (name, "", 0))
        frames[lid] = out[::-1]
    for s in profile.sample:
        w = s.value[index]
        if (keep is not None and not keep(s)) or w <= 0:
            continue
        locations = tuple(s.location_id)
        if marks:
            locations = _top._pruned_stack(locations, marks)
        stack = [fr for lid in reversed(locations) for fr in frames[lid]]
        if stack:
            yield s, stack, w


def _label_values(profile: Any, sample: Any, key: str) -> list[str]:
    st = profile.string_table
    return [st[lab.str] for lab in sample.label if st[lab.key] == key and lab.str]


def _folded_name(name: str) -> str:
    """A frame name that cannot break a folded line: no ';' (the separator) or line breaks."""
    return name.replace(";", ":").replace("\r", " ").replace("\n", " ")


def collapsed(
    profile: Any,
    *,
    sample_index: str = "",
    keep: Callable[[Any], bool] | None = None,
    tagroot: Sequence[str] = (),
) -> str:
    """The folded stacks of ``profile``, one ``root;...;leaf VALUE`` line per distinct stack."""
    index = _top.select_sample_index(profile, sample_index)
    folded: dict[str, int] = {}
    for s, stack, w in _stacks(profile, index, keep):
        roots = []
        for key in tagroot:
            values = _label_values(profile, s, key)
            roots.append(",".join(values) if values else f"(no {key})")
        line = ";".join(_folded_name(n) for n in [*roots, *(fr[0] for fr in stack)])
        folded[line] = folded.get(line, 0) + w
    return "".join(f"{line} {folded[line]}\n" for line in sorted(folded))


def speedscope(
    profile: Any,
    *,
    sample_index: str = "",
    keep: Callable[[Any], bool] | None = None,
    name: str = "",
    exporter: str = "pyproperf",
) -> str:
    """speedscope's JSON: one sampled profile per ``thread`` label value, largest first."""
    st = profile.string_table
    index = _top.select_sample_index(profile, sample_index)
    sample_type = profile.sample_type[index]
    unit = _SPEEDSCOPE_UNITS.get(st[sample_type.unit].lower(), "none")
    frame_index: dict[Frame, int] = {}
    # thread -> stack (frame indexes, root first) -> weight
    threads: dict[str, dict[tuple[int, ...], int]] = {}
    for s, stack, w in _stacks(profile, index, keep):
        values = _label_values(profile, s, THREAD_LABEL)
        thread = ",".join(values) if values else f"(no {THREAD_LABEL} label)"
        key = tuple(frame_index.setdefault(fr, len(frame_index)) for fr in stack)
        stacks = threads.setdefault(thread, {})
        stacks[key] = stacks.get(key, 0) + w
    profiles = []
    for thread, stacks in sorted(threads.items(), key=lambda t: (-sum(t[1].values()), t[0])):
        total = sum(stacks.values())
        profiles.append({
            "type": "sampled",
            "name": thread,
            "unit": unit,
            "startValue": 0,
            "endValue": total,
            "samples": [list(k) for k in stacks],
            "weights": list(stacks.values()),
        })
    frames = []
    for fname, file, line in frame_index:
        frame: dict[str, Any] = {"name": fname}
        if file:
            frame["file"] = file
        if line:
            frame["line"] = line
        frames.append(frame)
    doc = {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": name or st[sample_type.type],
        "activeProfileIndex": 0,
        "exporter": exporter,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n"


def convert(
    profile: Any,
    fmt: str,
    *,
    sample_index: str = "",
    keep: Callable[[Any], bool] | None = None,
    tagroot: Sequence[str] = (),
    source: str = "",
    exporter: str = "pyproperf",
) -> str:
    """``profile`` in format ``fmt`` (one of FORMATS); ``source`` names it in speedscope."""
    if fmt == "collapsed":
        return collapsed(profile, sample_index=sample_index, keep=keep, tagroot=tagroot)
    if fmt == "speedscope":
        if tagroot:
            raise ValueError("--tagroot is for the collapsed format; speedscope splits by thread")
        index = _top.select_sample_index(profile, sample_index)
        type_name = profile.string_table[profile.sample_type[index].type]
        title = f"{os.path.basename(source)} ({type_name})" if source else ""
        return speedscope(
            profile, sample_index=sample_index, keep=keep, name=title, exporter=exporter
        )
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
