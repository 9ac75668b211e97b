"""Reading profile files that may be hostile: bounded reads, bounded gunzip, the wire walk.

``python -m pyproperf top`` opens files from anywhere, and a profile.proto
file is small on disk for what it can cost to read: 1 MB of gzip holds 1 GB
of zeros, and 200 KB holds 100 million empty messages, each ~50 bytes in
protobuf's parser and more once Python looks at it.  So the work has a
budget, set by one number, ``max_size`` (``--max-size``, default
:data:`DEFAULT_MAX_SIZE`), and known before the work starts:

* at most ``max_size`` bytes after decompression.  The file is read in
  chunks and inflated at most :data:`CHUNK` bytes at a time, so no more than
  ``max_size + 1`` bytes ever exist, whatever the file (``/dev/zero``, a
  FIFO, a gzip bomb) holds; the compressed read stops a little above
  ``max_size`` too (:func:`compressed_limit`), so an endless stream of empty
  gzip blocks stops as well.
* at most one field per :data:`BYTES_PER_FIELD` bytes of ``max_size``, and one
  number in a packed list per :data:`BYTES_PER_NUMBER` (never fewer than
  :data:`MIN_LIMITS`).  Fields are those the wire walk visits: the
  profile's own (each sample, location, function, string …) and those
  inside samples and locations (labels, lines, ids); numbers are location
  ids, values and comments in packed lists.  The walk counts them before
  protobuf parses anything and stops at the first one over.  Real profiles
  use 5 to 16 bytes per field (Go's CPU and heap profiles 5 to 8,
  pyproperf's 7 to 16) and 2.5 to 13 per number, so the densest meet a
  count limit at a third to two thirds of the size limit (20 to 40 MiB at
  the default); 2-byte empty messages and 1-byte numbers, how a small file
  becomes gigabytes, meet them at an eighth and a quarter of it.
* the walk stops at the first field that cannot be a profile's (field
  number 0 or above 2**29-1, wire type 3, 4, 6 or 7, a varint of more than
  10 bytes, a length past the end, a known field in the wrong wire type),
  and the first :data:`SNIFF_SIZE` bytes are walked as soon as they exist,
  so zeros or text fail at once, not after the whole file is inflated.

Errors are ``ValueError`` with one line worded like ``go tool pprof``'s.
This module knows the wire format only; ``_builder`` parses the message.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

__all__ = [
    "BYTES_PER_FIELD",
    "BYTES_PER_NUMBER",
    "DEFAULT_MAX_SIZE",
    "MIN_LIMITS",
    "SNIFF_SIZE",
    "Limits",
    "check_wire",
    "compressed_limit",
    "format_size",
    "gunzip",
    "limits_for",
    "parse_size",
    "pieces",
    "read_profile",
    "too_large",
    "unrecognized",
]

# 64 MiB: `top` holds a profile as Python objects at ~30 times its
# decompressed size and reads ~1 MB a second (a 5.4 MB profile of 100,000
# 20-frame stacks: 5.7 s, 174 MB), so a real 64 MiB profile already needs
# ~2 GB and a minute; Go's and pyproperf's profiles are rarely over a few MB.
# Larger ones can be read with --max-size (a real 256 MiB one needs ~8 GB).
DEFAULT_MAX_SIZE = 64 << 20
BYTES_PER_FIELD = 16  # 4 Mi fields at the default size
BYTES_PER_NUMBER = 4  # 16 Mi numbers in packed lists at the default size
SNIFF_SIZE = 64 << 10  # decompressed bytes checked as soon as they exist
CHUNK = 1 << 20  # bytes read from the file at a time

GZIP_MAGIC = b"\x1f\x8b"
_MAX_FIELD_NUMBER = (1 << 29) - 1

# Wire types each known field may come in (pprof rejects a known field sent
# with another wire type, where Python's protobuf would skip it silently).
# Repeated numbers come packed (2) or one by one (0).
_PROFILE_WIRES: dict[int, tuple[int, ...]] = {
    **dict.fromkeys((1, 2, 3, 4, 5, 6, 11), (2,)),
    **dict.fromkeys((7, 8, 9, 10, 12, 14, 15), (0,)),
    13: (0, 2),  # comment: repeated int64
}
_SAMPLE_WIRES: dict[int, tuple[int, ...]] = {1: (0, 2), 2: (0, 2), 3: (2,)}
_LOCATION_WIRES: dict[int, tuple[int, ...]] = {1: (0,), 2: (0,), 3: (0,), 4: (2,), 5: (0,)}
_ANY_WIRE = (0, 1, 2, 5)  # unknown fields: any valid wire type (3 and 4, groups, are not)
_TIME_NANOS = 9


def unrecognized(why: str) -> ValueError:
    """pprof's wording for a file that is not a profile.proto."""
    return ValueError(f"parsing profile: unrecognized profile format ({why})")


# --- sizes: the --max-size flag ------------------------------------------------

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``64M``, ``2G`` (also ``64MiB``, ``64MB``): bytes, powers of 1024."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid size {text!r}: use bytes, or a number with K, M or G")
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, not {text!r}")
    return size


def format_size(size: int) -> str:
    """``64 MiB``, ``1536 KiB``, ``100 bytes``: exact, in the largest unit that divides."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


class Limits(NamedTuple):
    """What the wire walk lets through: fields visited, and numbers in packed lists."""

    fields: int
    numbers: int


_NO_LIMITS = Limits(sys.maxsize, sys.maxsize)
MIN_LIMITS = Limits(1 << 16, 1 << 18)  # what a 1 MiB cap gives


def limits_for(max_size: int | None) -> Limits:
    """The walk's limits for a decompressed size cap (None: no limits).

    Never below :data:`MIN_LIMITS`: under a small cap the size alone keeps
    the work small, and a small real profile must not fail on its count.
    """
    if max_size is None:
        return _NO_LIMITS
    return Limits(
        max(max_size // BYTES_PER_FIELD, MIN_LIMITS.fields),
        max(max_size // BYTES_PER_NUMBER, MIN_LIMITS.numbers),
    )


def compressed_limit(max_size: int) -> int:
    """How many bytes of a file are read at most: ``max_size`` plus gzip's overhead.

    Deflate stores data it cannot compress with 5 bytes per 64 KiB block, and
    gzip adds a header (with an optional name and comment) per member, so a
    file that inflates to ``max_size`` is never much larger than that.
    """
    return max_size + max_size // 1024 + 4096


def too_large(max_size: int, what: str) -> ValueError:
    """The error for a file over the cap; ``what`` is the step, as pprof names its steps."""
    return ValueError(
        f"{what}: larger than {format_size(max_size)} (the --max-size limit; raise it to read)"
    )


# --- reading ----------------------------------------------------------------------


def read_profile(path: str, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The profile's bytes, gunzipped if the file is gzip: never more than ``max_size``.

    Reads in chunks, so ``/dev/zero``, a FIFO or a growing file stop at the
    limit.  ValueError (one line) for unreadable, too large or broken files.
    """
    try:
        with open(path, "rb") as f:
            chunks = _chunks(f, max_size)
            first = next(chunks, b"")
            if first[:2] == GZIP_MAGIC:
                return gunzip(_prepend(first, chunks), max_size)
            return _raw(first, chunks, max_size)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None


def _chunks(f: BinaryIO, max_size: int) -> Iterator[bytes]:
    """The file in chunks of at most :data:`CHUNK` bytes; ValueError past the compressed limit."""
    left = compressed_limit(max_size)
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        left -= len(chunk)
        if left < 0:
            raise too_large(max_size, "reading profile")
        yield chunk


def pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in :data:`CHUNK`-sized slices, for :func:`gunzip` on bytes in memory."""
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


def _prepend(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    """``first``, then ``rest``: the chunk already read to tell gzip from raw goes back in."""
    yield first
    yield from rest


def _raw(first: bytes, rest: Iterable[bytes], max_size: int) -> bytes:
    """An uncompressed file: its start checked at once, then read up to ``max_size``."""
    if first:
        check_wire(first[:SNIFF_SIZE], prefix=True)
    parts: list[bytes] = []
    size = 0
    for chunk in _prepend(first, rest):
        size += len(chunk)
        if size > max_size:
            raise too_large(max_size, "reading profile")
        parts.append(chunk)
    return b"".join(parts)


def gunzip(chunks: Iterable[bytes], max_size: int | None = None) -> bytes:
    """Inflate gzip data (one or more members, as Go's gzip.Reader) to at most ``max_size``.

    Inflates at most :data:`CHUNK` bytes per step, so the first
    :data:`SNIFF_SIZE` bytes are checked (:func:`check_wire`) before much
    more exists, and the output stops at ``max_size + 1`` bytes.  The
    compressed input is bounded by whoever yields ``chunks``.
    """
    cap = sys.maxsize if max_size is None else max_size
    out: list[bytes] = []
    size, sniffed = 0, False
    d = zlib.decompressobj(wbits=31)
    try:
        for data in chunks:
            while True:
                if d.eof and data:  # the next member
                    if data[:2] != GZIP_MAGIC[: len(data[:2])]:
                        raise ValueError("decompressing profile: gzip: invalid header")
                    d = zlib.decompressobj(wbits=31)
                room = min(CHUNK, cap + 1 - size)
                piece = d.decompress(data, room)
                out.append(piece)
                size += len(piece)
                if not sniffed and (size >= SNIFF_SIZE or size > cap or d.eof):
                    sniffed = True
                    _sniff(out)
                if size > cap:
                    raise too_large(cap, "decompressing profile")
                data = d.unused_data if d.eof else d.unconsumed_tail
                if not data and (d.eof or len(piece) < room):
                    break  # this input is used up (a full output may have more pending)
    except zlib.error as exc:
        raise ValueError(f"decompressing profile: {exc}") from None
    if not d.eof:
        raise ValueError(
            "decompressing profile: Compressed file ended before the end-of-stream marker "
            "was reached"
        )
    return b"".join(out)


def _sniff(out: list[bytes]) -> None:
    """Check the start of what has been inflated so far: a non-profile fails here."""
    head = bytearray()
    for piece in out:
        head += piece
        if len(head) >= SNIFF_SIZE:
            break
    check_wire(bytes(head[:SNIFF_SIZE]), prefix=True)


# --- the wire walk ----------------------------------------------------------------


class _End(Exception):
    """The data ended inside a field (an error, unless only a prefix is checked)."""


def check_wire(data: bytes, limits: Limits | None = None, *, prefix: bool = False) -> None:
    """Check a Profile message's wire format as pprof's decoder would see it; else ValueError.

    Top-level fields, and those of every sample and location, must have a
    valid tag (field number 1 to 2**29-1, wire type 0, 1, 2 or 5), the wire
    type their field is declared with, and fit in the data; ``time_nanos``
    may be set once (twice means two profiles glued together).  The fields
    visited and the numbers in packed lists are counted against ``limits``
    (none if None), and the walk stops at the first one over, so its own
    time is bounded too.  With ``prefix``, ``data`` is the start of a
    profile: running off its end is not an error.
    """
    try:
        _walk_profile(data, _NO_LIMITS if limits is None else limits)
    except _End as end:
        if not prefix:
            raise unrecognized(str(end)) from None


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (at most 10 bytes, as protobuf)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise _End("bad varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise unrecognized("bad varint")


def _tag(
    data: bytes, pos: int, end: int, wires: dict[int, tuple[int, ...]]
) -> tuple[int, int, int]:
    """(field number, wire type, next position) of the tag at ``pos``, checked; else raise.

    The field number must be 1 to 2**29-1 and the wire type one the field
    may have (``wires``; any valid one, 0, 1, 2 or 5, for unknown fields).
    """
    key, pos = _varint(data, pos, end)
    field, wire = key >> 3, key & 7
    if not 0 < field <= _MAX_FIELD_NUMBER:
        raise unrecognized(f"invalid field number {field}")
    if wire not in wires.get(field, _ANY_WIRE):
        if wire not in _ANY_WIRE:
            raise unrecognized(f"unknown wire type {wire}")
        raise unrecognized(f"type mismatch in field {field}")
    return field, wire, pos


def _fast_tags(wires: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    """For each first byte, the field number when it is a whole valid tag by itself, else 0.

    The walks look tags up here and go to :func:`_tag` only for the rest:
    fields above 15, bad tags, and wire types a field may not have.
    """
    fast = [0] * 256
    for key in range(8, 0x80):
        field, wire = key >> 3, key & 7
        if wire in wires.get(field, _ANY_WIRE):
            fast[key] = field
    return tuple(fast)


def _skip_bytes(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Where a length-delimited value at ``pos`` starts (after its length) and ends."""
    n = data[pos] if pos < end else 0x80
    if n < 0x80:
        start = pos + 1
    else:
        n, start = _varint(data, pos, end)
    if start + n > end:
        raise _End("truncated data")
    return start, start + n


def _numbers(data: bytes, start: int, end: int) -> int:
    """How many varints a packed list holds: its bytes below 0x80 (counted in C)."""
    return len(data[start:end].translate(None, _HIGH_BYTES))


def _walk_profile(  # noqa: PLR0912 - a wire-format walker's hot loop, read inline
    data: bytes, limits: Limits
) -> None:
    """Walk the Profile's fields, and those of its samples and locations, counting them.

    The hot loop of ``top`` on hostile files: tags of one byte and values of
    one byte are read inline, the rest by the helpers.
    """
    fast, nested = _FAST_PROFILE, _NESTED
    max_fields = limits.fields
    pos, end, fields, numbers, time_set = 0, len(data), 0, 0, False
    while pos < end:
        fields += 1
        if fields > max_fields:
            raise _too_many(limits.fields, "fields", BYTES_PER_FIELD)
        key = data[pos]
        field = fast[key]
        if field:
            wire, pos = key & 7, pos + 1
        else:
            field, wire, pos = _tag(data, pos, end, _PROFILE_WIRES)
        if wire == 2:
            if pos < end and data[pos] < 0x80:
                start = pos + 1
                pos = start + data[pos]
                if pos > end:
                    raise _End("truncated data")
            else:
                start, pos = _skip_bytes(data, pos, end)
            if field in nested:
                fields, numbers = _walk_nested(
                    data, start, pos, nested[field], fields, numbers, limits
                )
            elif field == _COMMENT:
                numbers += _numbers(data, start, pos)
                if numbers > limits.numbers:
                    raise _too_many(limits.numbers, "numbers in lists", BYTES_PER_NUMBER)
        elif wire == 0:
            start = pos
            pos = pos + 1 if pos < end and data[pos] < 0x80 else _varint(data, pos, end)[1]
            if field == _TIME_NANOS:
                if time_set:
                    raise ValueError("parsing profile: concatenated profiles detected")
                time_set = _varint(data, start, end)[0] != 0
        else:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _End("truncated data")


def _walk_nested(  # noqa: PLR0912 - a wire-format walker's hot loop, read inline
    data: bytes, pos: int, end: int, kind: _Kind, fields: int, numbers: int, limits: Limits
) -> tuple[int, int]:
    """Walk one sample's or location's fields in ``data[pos:end]``: the new counts."""
    wires, fast, packed = kind
    max_fields = limits.fields
    while pos < end:
        fields += 1
        if fields > max_fields:
            raise _too_many(max_fields, "fields", BYTES_PER_FIELD)
        key = data[pos]
        field = fast[key]
        if field:
            wire, pos = key & 7, pos + 1
        else:
            field, wire, pos = _tag(data, pos, end, wires)
        if wire == 2:
            if pos < end and data[pos] < 0x80:
                start = pos + 1
                pos = start + data[pos]
                if pos > end:
                    raise _End("truncated data")
            else:
                start, pos = _skip_bytes(data, pos, end)
            if field in packed:
                numbers += _numbers(data, start, pos)
                if numbers > limits.numbers:
                    raise _too_many(limits.numbers, "numbers in lists", BYTES_PER_NUMBER)
        elif wire == 0:
            pos = pos + 1 if pos < end and data[pos] < 0x80 else _varint(data, pos, end)[1]
        else:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _End("truncated data")
    return fields, numbers


# A nested message kind: its fields' wire types, the fast tag table, and the
# fields whose length-delimited form is a packed list of numbers.
_Kind = tuple[dict[int, tuple[int, ...]], tuple[int, ...], frozenset[int]]
_FAST_PROFILE = _fast_tags(_PROFILE_WIRES)
# Profile fields whose own fields are walked too: sample, location.
_NESTED: dict[int, _Kind] = {
    2: (_SAMPLE_WIRES, _fast_tags(_SAMPLE_WIRES), frozenset({1, 2})),
    4: (_LOCATION_WIRES, _fast_tags(_LOCATION_WIRES), frozenset()),
}
_COMMENT = 13
_HIGH_BYTES = bytes(range(0x80, 0x100))


def _too_many(limit: int, what: str, per: int) -> ValueError:
    """The error for a file over a count limit: which one, and how to raise it."""
    return ValueError(
        f"parsing profile: more than {limit} {what} (one per {per} bytes of --max-size; "
        "raise it to read)"
    )
