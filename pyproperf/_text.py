"""Go's text layouts: ``%q`` quoting, text/tabwriter, frame lines, count profiles.

Everything a ``debug=1`` or ``debug=2`` profile prints goes through here, so
the heap, contention, goroutine and custom profiles share one idea of what
an address, a frame line and a padded column look like.

Synthetic addresses.  Python frames have no program counter, so each frame
gets a made-up one that is stable across writes and processes:

* a function's *entry* is ``(0x80000000 | crc32(filename NUL start_line NUL
  function) & 0x7fffffff) << 20`` (13 hex digits, low 20 bits zero);
* a frame's *offset* from that entry is ``min(line - start_line, 0xfff) << 8
  | min(column, 0xff)`` — the line within the function and the 1-based
  column, so ``+0x705`` reads "7 lines into the function, column 5";
* the frame's PC is ``entry + offset`` (``address_of``); stack lists and
  ``N @ 0x…`` lines print the *return address* ``PC + 1`` as Go does, and the
  ``#`` frame lines print the PC, so both always agree.

Equal ``Frame`` tuples get equal addresses; different ones almost surely
differ (a clash only makes two lines show the same number).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyproperf._builder import Frame, ProfileBuilder, address_of, frame_offset

__all__ = [
    "CountGroup",
    "LabelPairs",
    "address_of",
    "at_line",
    "count_groups",
    "count_profile_proto",
    "count_profile_text",
    "format_frame",
    "format_frames",
    "go_quote",
    "labels_text",
    "render_count_profile",
    "return_address",
    "runtime_quote",
    "tabwrite",
    "traceback_created_by",
    "traceback_frames",
    "traceback_header",
    "traceback_labels",
]

# Label pairs as (key, value), sorted by key (a LabelSet iterates like this).
LabelPairs = Iterable[tuple[str, str]]

# -- quoting -----------------------------------------------------------------

_PLAIN = re.compile(r"[ !#-\[\]-~]*\Z")  # printable ASCII except " and \
_GO_ESCAPES = {7: r"\a", 8: r"\b", 12: r"\f", 10: r"\n", 13: r"\r", 9: r"\t", 11: r"\v"}


def _raw_bytes(ch: str) -> bytes:
    """The bytes Go would see for a lone surrogate (surrogateescape'd or not)."""
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:
        return bytes([o - 0xDC00])
    return ch.encode("utf-8", "surrogatepass")


def go_quote(s: str) -> str:
    """Quote ``s`` exactly as Go's ``%q`` / ``strconv.Quote`` does.

    ``\\"`` and ``\\\\``; ``\\a \\b \\f \\n \\r \\t \\v``; other ASCII controls
    and DEL as ``\\xNN``; printable non-ASCII literally; other runes as
    ``\\uNNNN`` / ``\\UNNNNNNNN``.  Lone surrogates (undecodable bytes kept by
    ``surrogateescape``) print as the ``\\xNN`` bytes Go would have seen.
    Printability is Python's ``str.isprintable`` (Go's ``strconv.IsPrint`` has
    the same definition; the Unicode versions may differ slightly).
    """
    if _PLAIN.match(s):
        return f'"{s}"'
    out = ['"']
    append = out.append
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            append("\\" + ch)
        elif o < 0x80:
            if 0x20 <= o < 0x7F:
                append(ch)
            else:
                append(_GO_ESCAPES.get(o) or f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            append("".join(f"\\x{b:02x}" for b in _raw_bytes(ch)))
        elif ch.isprintable():
            append(ch)
        elif o < 0x10000:
            append(f"\\u{o:04x}")
        else:
            append(f"\\U{o:08x}")
    append('"')
    return "".join(out)


_BARE = re.compile(r"[A-Za-z0-9./_]*\Z")


def runtime_quote(s: str) -> str:
    """Quote like Go's runtime traceback (``printquoted``), only when needed.

    Strings of only ``[A-Za-z0-9./_]`` stay bare; others are double-quoted
    with ``\\n \\r \\t \\\\ \\"`` escaped, printable ASCII literal, other ASCII
    as ``\\xNN`` and everything from U+007F as ``\\uNNNN`` / ``\\UNNNNNNNN``.
    """
    if _BARE.match(s):
        return s
    out = ['"']
    append = out.append
    for ch in s:
        o = ord(ch)
        if ch == "\n":
            append(r"\n")
        elif ch == "\r":
            append(r"\r")
        elif ch == "\t":
            append(r"\t")
        elif ch in '"\\':
            append("\\" + ch)
        elif 0x20 <= o <= 0x7E:
            append(ch)
        elif o < 0x7F:
            append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            append("".join(f"\\x{b:02x}" for b in _raw_bytes(ch)))
        elif o < 0x10000:
            append(f"\\u{o:04x}")
        else:
            append(f"\\U{o:08x}")
    append('"')
    return "".join(out)


def labels_text(labels: LabelPairs) -> str:
    """Go's ``labelMap.String``: ``{"k":"v", "k2":"v2"}``, sorted as quoted text."""
    return "{" + ", ".join(sorted(f"{go_quote(k)}:{go_quote(v)}" for k, v in labels)) + "}"


# -- text/tabwriter ------------------------------------------------------------

_MINWIDTH = 1
_TABWIDTH = 8
_PADDING = 1
_CELL_SEP = re.compile("[\t\v]")


def _format_segment(text: str, out: list[str], spaces_right: bool) -> None:
    """text/tabwriter's ``format`` over one flushed segment (no ``\\f`` inside).

    ``spaces_right``: cells padded with spaces on the left (``padchar``
    ``' '``, ``AlignRight``), else with tabs on the right (``'\\t'``, no flags).
    """
    lines = [_CELL_SEP.split(line) for line in text.split("\n")]
    if lines[-1][-1] == "":
        # Flush terminates the unfinished last cell only if it has text.
        lines[-1].pop()
    nlines = len(lines)
    widths: list[int] = []
    append = out.append

    def write_lines(line0: int, line1: int) -> None:
        ncols = len(widths)
        for i in range(line0, line1):
            cells = lines[i]
            for j, cell in enumerate(cells):
                if j >= ncols:
                    append(cell)
                elif spaces_right:
                    append(" " * (widths[j] - len(cell)) + cell)
                else:
                    cellw = -(-widths[j] // _TABWIDTH) * _TABWIDTH
                    append(cell + "\t" * -(-(cellw - len(cell)) // _TABWIDTH))
            if i + 1 != nlines:
                append("\n")

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = _MINWIDTH
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + _PADDING)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
            this += 1  # the line that ended the block has no cell here
        write_lines(line0, line1)

    fmt(0, nlines)


def tabwrite(text: str | Iterable[str], *, spaces_right: bool = False) -> str:
    """Pad ``text`` as Go's ``tabwriter.NewWriter(w, 1, 8, 1, '\\t', 0)`` would.

    ``text`` is the whole stream, or an iterable of lines (without newlines;
    each gets one).  Cells end at a tab (or ``\\v``); the text after a line's
    last tab is not aligned.  Over each run of consecutive lines having a
    cell in a column, the column is as wide as its longest cell plus one,
    rounded up to a multiple of 8, and cells are padded with tabs to it.  A
    ``\\f`` ends a line and restarts the alignment, as a flush does in Go
    (it prints as ``\\n``).  Widths count code points.  Not emulated: the
    0xFF escape byte, which Python text cannot contain as such.

    ``spaces_right``: as ``tabwriter.NewWriter(w, 0, 0, 1, ' ', AlignRight)``
    instead (pprof's ``-tags`` table): columns exactly as wide as their
    longest cell plus one, cells right-aligned with spaces.
    """
    if not isinstance(text, str):
        text = "".join(line + "\n" for line in text)
    out: list[str] = []
    *flushed, rest = text.split("\f")
    for segment in flushed:
        _format_segment(segment + "\n", out, spaces_right)
    _format_segment(rest, out, spaces_right)
    return "".join(out)


# -- synthetic addresses and frame lines -----------------------------------------

def return_address(frame: Frame) -> int:
    """``address_of(frame) + 1``: what Go's stack lists (``N @ 0x…``) print."""
    return address_of(frame) + 1


def at_line(stack: Sequence[Frame]) -> str:
    """``@ 0x… 0x…``: the return addresses of ``stack``, leaf first (just ``@`` if empty)."""
    return "@" + "".join(f" {return_address(f):#x}" for f in stack)


def format_frame(frame: Frame) -> str:
    """One ``#\\tPC\\tFUNC+0xOFF\\tFILE:LINE`` line (``#\\tPC`` for a nameless function)."""
    pc = address_of(frame)
    if not frame.function:
        return f"#\t{pc:#x}"
    return f"#\t{pc:#x}\t{frame.function}+{frame_offset(frame):#x}\t{frame.filename}:{frame.line}"


def format_frames(stack: Sequence[Frame]) -> list[str]:
    """Go's ``printStackRecord`` lines for ``stack`` (leaf first), without the blank line.

    Pass the result through ``tabwrite`` with the rest of the output.
    """
    return [format_frame(f) for f in stack]


# -- count profiles (goroutine, threadcreate, custom) ------------------------------


@dataclass(frozen=True, slots=True)
class CountGroup:
    """Records with one key: count, stack (leaf first), labels (None: no label set)."""

    count: int
    stack: tuple[Frame, ...]
    labels: tuple[tuple[str, str], ...] | None
    key: str  # Go's key text: "@ 0x… 0x…" [+ "\n# labels: {…}"]


def count_groups(
    records: Iterable[tuple[Sequence[Frame], LabelPairs | None, int]],
) -> list[CountGroup]:
    """Group (stack, labels, count) records by Go's key text and sort them Go's way.

    ``labels`` None means "no label set" (no ``# labels:`` line); an empty
    one prints ``# labels: {}``.  Records whose key text is equal merge (their
    counts add up).  Order: count descending, then key text ascending.
    """
    counts: dict[str, int] = {}
    first: dict[str, tuple[tuple[Frame, ...], tuple[tuple[str, str], ...] | None]] = {}
    for stack, labels, n in records:
        pairs = None if labels is None else tuple(labels)
        key = at_line(stack)
        if pairs is not None:
            key += "\n# labels: " + labels_text(pairs)
        if key in counts:
            counts[key] += n
        else:
            counts[key] = n
            first[key] = (tuple(stack), pairs)
    groups = [CountGroup(n, *first[key], key) for key, n in counts.items()]
    groups.sort(key=lambda g: (-g.count, g.key))
    return groups


def count_profile_text(name: str, groups: Sequence[CountGroup], total: int | None = None) -> str:
    """Go's debug=1 count-profile text (``printCountProfile``), tab-padded.

    ``total`` defaults to the sum of the group counts.
    """
    if total is None:
        total = sum(g.count for g in groups)
    lines = [f"{name} profile: total {total}"]
    for g in groups:
        lines.append(f"{g.count} {g.key}")
        lines.extend(format_frames(g.stack))
        lines.append("")
    return tabwrite(lines)


def count_profile_proto(name: str, groups: Sequence[CountGroup]) -> bytes:
    """The gzipped proto of a count profile: ``NAME/count`` samples, labels as key/str."""
    b = ProfileBuilder([(name, "count")], period_type=(name, "count"), period=1)
    for g in groups:
        b.add(g.stack, [g.count], labels=g.labels or ())
    return b.to_gzip()


def render_count_profile(
    name: str,
    records: Iterable[tuple[Sequence[Frame], LabelPairs | None, int]],
    debug: int,
    total: int | None = None,
) -> bytes:
    """A whole count profile: gzipped proto for ``debug <= 0``, else UTF-8 text.

    Go treats every ``debug`` that is not > 0 (negative included) as proto.
    """
    groups = count_groups(records)
    if debug > 0:
        return count_profile_text(name, groups, total).encode("utf-8", "surrogateescape")
    return count_profile_proto(name, groups)


# -- goroutine debug=2 (Go's traceback dump) ------------------------------------------


def traceback_labels(labels: LabelPairs | None) -> str:
    """`` {k: v, k2: "v 2"}`` as Go 1.27's traceback prints a label set; "" if empty."""
    pairs = list(labels or ())
    if not pairs:
        return ""
    return " {" + ", ".join(f"{runtime_quote(k)}: {runtime_quote(v)}" for k, v in pairs) + "}"


def traceback_header(goid: int, state: str, labels: LabelPairs | None = None) -> str:
    """``goroutine ID [STATE] {labels}:`` (``state`` may carry ``, N minutes`` etc.)."""
    return f"goroutine {goid} [{state}]{traceback_labels(labels)}:"


def _traceback_offset(frame: Frame) -> str:
    # Go prints the return address's offset (one more than the debug=1 one).
    return f" +{frame_offset(frame) + 1:#x}"


def traceback_frames(stack: Sequence[Frame]) -> list[str]:
    """``FUNC(...)`` / ``\\tFILE:LINE +0xOFF`` line pairs, leaf first.

    Python has no raw argument words to print, so every frame shows
    ``(...)`` as Go does for inlined calls.
    """
    out: list[str] = []
    for f in stack:
        out.append(f"{f.function or '?'}(...)")
        out.append(f"\t{f.filename}:{f.line}{_traceback_offset(f)}")
    return out


def traceback_created_by(frame: Frame, parent: int | None) -> list[str]:
    """``created by FUNC in goroutine N`` and its ``\\tFILE:LINE +0xOFF`` line."""
    head = f"created by {frame.function or '?'}"
    if parent:
        head += f" in goroutine {parent}"
    return [head, f"\t{frame.filename}:{frame.line}{_traceback_offset(frame)}"]
