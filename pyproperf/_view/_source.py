"""Source lines of the sampled functions, read at generation time where the files exist.

The report shows a function's lines with the values per line, so that it
can be read on another machine.  Only source files are read (by their
extension: a profile names files, and a report made from a profile that
came from elsewhere must not pick up ``/etc/shadow``), each at most
``MAX_FILE`` bytes, and only a window of each sampled function: from its
start line (or a little before its first sampled line) to a little after
its last sampled line, at most ``MAX_LINES`` lines; at most ``MAX_TOTAL``
bytes of lines in all.  Functions beyond the budget have no lines in the report;
the page says so.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from pyproperf._view._model import Model

__all__ = ["MAX_TOTAL", "SOURCE_SUFFIXES", "collect"]

SOURCE_SUFFIXES = (
    ".py", ".pyw", ".pyx", ".pxd", ".pxi", ".go", ".s", ".c", ".h", ".cc", ".cpp", ".cxx",
    ".hpp", ".hh", ".rs", ".java", ".kt", ".scala", ".js", ".mjs", ".ts", ".rb", ".php",
    ".cs", ".swift", ".m", ".mm", ".zig",
)
MAX_FILE = 4 << 20  # bytes of one source file
MAX_LINES = 200  # lines of one function
MAX_TOTAL = 1 << 20  # bytes of lines in one report
CONTEXT = 2  # lines after the last sampled line (and before the first, without a start line)
MAX_LINE_CHARS = 500  # longer lines are shortened


def collect(model: Model, *, max_total: int = MAX_TOTAL) -> dict[int, list[Any]]:
    """Function id -> [first line number, [line texts]] for the functions with readable files."""
    sampled: dict[int, set[int]] = {}
    frames = model.frames
    seen_frames = set(model.node_frames)
    for fr in seen_frames:
        fid, line = frames[2 * fr], frames[2 * fr + 1]
        if line > 0:
            sampled.setdefault(fid, set()).add(line)
    by_file: dict[str, list[int]] = {}
    for fid in sampled:
        filename = model.strings[model.funcs[3 * fid + 1]]
        if filename.endswith(SOURCE_SUFFIXES) and os.path.isabs(filename):
            by_file.setdefault(filename, []).append(fid)
    out: dict[int, list[Any]] = {}
    budget = max_total
    # Files of the functions with the most sampled lines first: the busiest code.
    for filename in sorted(by_file, key=lambda f: -sum(len(sampled[i]) for i in by_file[f])):
        text = _read_lines(filename)
        if text is None:
            continue
        for fid in by_file[filename]:
            lines = sampled[fid]
            start = model.funcs[3 * fid + 2]
            first = min(lines)
            # from the def line when known, else a little before the first sampled line
            first = start if 0 < start <= first else max(1, first - CONTEXT)
            last = min(len(text), max(lines) + CONTEXT, first + MAX_LINES - 1)
            if first > last:
                continue
            window = [t[:MAX_LINE_CHARS] for t in text[first - 1 : last]]
            size = sum(len(t) + 4 for t in window)
            if size > budget:
                continue
            budget -= size
            out[fid] = [first, window]
    return out


def _read_lines(filename: str) -> list[str] | None:
    """The file's lines (decoded leniently), or None if it is not a readable regular file."""
    try:  # non-blocking: a FIFO named in the profile must not hang the report
        fd = os.open(filename, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
                return None
            data = f.read(MAX_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE or b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace").splitlines()
