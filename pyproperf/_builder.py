"""Turn plain records into a gzipped profile.proto.

The builder knows the schema and nothing about where stacks come from:
sources hand it ``Frame`` tuples (already resolved to names, files and
lines), value lists and labels.  It interns strings, functions and
locations, assigns ids from 1 as pprof requires, and writes the result
gzipped with Go's header bytes.  It is the only module that imports the
generated protobuf code.  It imports it at once, not on first use: a
first import while the interpreter exits (a profile answered or written
at exit) makes Python lose an unhandled Ctrl-C's exit by SIGINT
(``tests/test_http.py::test_ctrl_c_answers_profile_in_flight``).
"""

from __future__ import annotations

import functools
import gzip
import io
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from google.protobuf.message import DecodeError

from pyproperf import _read
from pyproperf._pb import profile_pb2 as pb

__all__ = [
    "Frame",
    "ProfileBuilder",
    "address_of",
    "decode",
    "decode_uncompressed",
    "frame_offset",
    "gzip_bytes",
    "merge_profiles",
]


class Frame(NamedTuple):
    """One resolved stack frame.

    function: qualified name (``module.Class.method``); filename: the code's
    file; start_line: first line of the function; line: the line executing;
    column: 1-based column, 0 when unknown.
    """

    function: str
    filename: str
    start_line: int
    line: int
    column: int = 0


# (key, value) string labels and (key, value, unit) numeric labels.
StrLabels = Iterable[tuple[str, str]]
NumLabels = Iterable[tuple[str, int, str]]


# Synthetic addresses.  Python frames have no program counter, but readers
# key locations by address (Grafana Alloy's delta computation, pprof's
# -addresses), and Go's text formats print PCs.  A function's entry is a
# 31-bit hash of (file, first line, name) shifted left by 20 bits; a frame's
# PC adds (line - first line) << 8 | column.  Equal frames get equal
# addresses in every process; different ones almost surely differ.
_ENTRY_BIT = 0x80000000
_ENTRY_SHIFT = 20
# The pseudo mapping covers every synthetic address.
_MAPPING_LIMIT = 1 << 52


@functools.lru_cache(maxsize=8192)
def _entry(function: str, filename: str, start_line: int) -> int:
    seed = f"{filename}\0{start_line}\0{function}".encode("utf-8", "surrogatepass")
    return (_ENTRY_BIT | (zlib.crc32(seed) & 0x7FFFFFFF)) << _ENTRY_SHIFT


def frame_offset(frame: Frame) -> int:
    """A frame's synthetic offset from its function's entry: lines and column."""
    lines = min(max(frame.line - frame.start_line, 0), 0xFFF)
    return lines << 8 | min(max(frame.column, 0), 0xFF)


def address_of(frame: Frame) -> int:
    """The synthetic PC of ``frame``: its function's entry plus its offset."""
    return _entry(frame.function, frame.filename, frame.start_line) + frame_offset(frame)


def gzip_bytes(data: bytes) -> bytes:
    """Gzip ``data`` at level 1 with Go's exact 10-byte header (mtime 0, no name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


class ProfileBuilder:
    """Accumulates samples and encodes one ``perftools.profiles.Profile``.

    ``sample_types`` are (type, unit) pairs, count-like columns first.
    Samples are kept in the order they are added (sources sort first where
    Go sorts).  Adding two samples with the same stack and labels keeps two
    samples; pprof adds them up when it reads the file.
    """

    def __init__(
        self,
        sample_types: Sequence[tuple[str, str]],
        *,
        period_type: tuple[str, str] | None = None,
        period: int = 0,
        default_sample_type: str = "",
        time_nanos: int | None = None,
        duration_nanos: int = 0,
        comments: Sequence[str] = (),
    ) -> None:
        self._profile = pb.Profile()
        self._strings: dict[str, int] = {"": 0}
        self._functions: dict[tuple[str, str, int], int] = {}
        self._locations: dict[Frame, int] = {}
        self._nvalues = len(sample_types)
        p = self._profile
        for typ, unit in sample_types:
            p.sample_type.add(type=self.string(typ), unit=self.string(unit))
        if period_type is not None:
            p.period_type.type = self.string(period_type[0])
            p.period_type.unit = self.string(period_type[1])
        p.period = period
        if default_sample_type:
            p.default_sample_type = self.string(default_sample_type)
        p.time_nanos = time.time_ns() if time_nanos is None else time_nanos
        p.duration_nanos = duration_nanos
        for text in comments:
            p.comment.append(self.string(text))
        # One pseudo mapping: every location is already symbolized, so pprof
        # neither symbolizes nor warns about a missing binary.
        p.mapping.add(
            id=1,
            memory_limit=_MAPPING_LIMIT,
            has_functions=True,
            has_filenames=True,
            has_line_numbers=True,
        )

    def string(self, s: str) -> int:
        """Return the string-table index of ``s``, adding it on first use."""
        index = self._strings.get(s)
        if index is None:
            index = self._strings[s] = len(self._strings)
        return index

    def _function_id(self, name: str, filename: str, start_line: int) -> int:
        key = (name, filename, start_line)
        fid = self._functions.get(key)
        if fid is None:
            fid = self._functions[key] = len(self._functions) + 1
            s = self.string(name)
            self._profile.function.add(
                id=fid,
                name=s,
                system_name=s,
                filename=self.string(filename),
                start_line=start_line,
            )
        return fid

    def location_id(self, frame: Frame) -> int:
        """Return the location id of ``frame``, adding it (and its function) on first use."""
        lid = self._locations.get(frame)
        if lid is None:
            fid = self._function_id(frame.function, frame.filename, frame.start_line)
            lid = self._locations[frame] = len(self._locations) + 1
            loc = self._profile.location.add(id=lid, mapping_id=1, address=address_of(frame))
            loc.line.add(function_id=fid, line=frame.line, column=frame.column)
        return lid

    def add(
        self,
        stack: Sequence[Frame],
        values: Sequence[int],
        labels: StrLabels = (),
        num_labels: NumLabels = (),
    ) -> None:
        """Add one sample: ``stack`` leaf first, one value per sample type.

        Empty string values and unit-less zero numbers are dropped, as pprof
        would drop them on reading.
        """
        self.add_ids([self.location_id(f) for f in stack], values, labels, num_labels)

    def add_ids(
        self,
        location_ids: Sequence[int],
        values: Sequence[int],
        labels: StrLabels = (),
        num_labels: NumLabels = (),
    ) -> None:
        """``add`` with a stack given as ids from ``location_id`` (for callers that cache them)."""
        if len(values) != self._nvalues:
            raise ValueError(f"sample has {len(values)} values for {self._nvalues} sample types")
        sample = self._profile.sample.add(location_id=location_ids, value=values)
        for key, value in labels:
            if value:
                sample.label.add(key=self.string(key), str=self.string(value))
        for key, num, unit in num_labels:
            if num or unit:
                sample.label.add(
                    key=self.string(key), num=num, num_unit=self.string(unit) if unit else 0
                )

    def to_bytes(self) -> bytes:
        """Return the serialized (uncompressed) Profile message."""
        p = self._profile
        del p.string_table[:]
        p.string_table.extend(self._strings)
        data: bytes = p.SerializeToString()
        return data

    def to_gzip(self) -> bytes:
        """Return the gzipped profile, as written to files and HTTP responses."""
        return gzip_bytes(self.to_bytes())


# Merged profiles' contents keyed by content: a function (name, system name,
# file, start line); a location (mapping id, address, is_folded, lines as
# (function or None, line, column)); a label (key, str, num, unit); a sample
# (locations, sorted labels).
_FunctionKey = tuple[str, str, str, int]
_LocationKey = tuple[int, int, bool, tuple[tuple[_FunctionKey | None, int, int], ...]]
_Label = tuple[str, str, int, str]
_SampleKey = tuple[tuple[_LocationKey, ...], tuple[_Label, ...]]


class _MergedSample(NamedTuple):
    """A merged sample's summed values, and its labels in the order first seen."""

    values: list[int]
    labels: list[_Label]


def merge_profiles(
    sources: Sequence[bytes],
    scales: Sequence[int] | None = None,
    *,
    time_nanos: int | None = None,
    duration_nanos: int | None = None,
    labels: Sequence[Sequence[tuple[str, str | int]]] | None = None,
    max_size: int | None = None,
) -> bytes:
    """Merge encoded profiles (gzipped or raw) as google/pprof's ``profile.Merge``; gzip it.

    Each source's values are first multiplied by its scale (net/http/pprof's
    delta profiles merge the first snapshot scaled by -1).  Functions match
    by (name, system name, file, start line), locations by (mapping,
    address, is_folded, lines), samples by (locations, labels); matching
    samples add up and all-zero samples are dropped.  Headers as Go's
    combineHeaders: equal period and sample types (else ValueError
    ``incompatible ...``), largest period, earliest non-zero time, summed
    durations, de-duplicated comments, first non-empty default sample type;
    ``time_nanos`` / ``duration_nanos`` override the last two.
    ``labels``: per source, labels put on each of its samples (a str value
    a string label, an int a numeric one; replacing labels of the same
    key), as ``run --subprocesses`` tags every sample with its process.
    Sources are read as ``decode`` reads them (``max_size`` bounds the
    work for files from elsewhere); a bad one raises its ValueError.
    (Used by pyproperf.http, ``run --subprocesses`` and ``merge``; lives
    here because only this module imports protobuf.)
    """
    if not sources:
        raise ValueError("no profiles to merge")
    factors = list(scales) if scales is not None else [1] * len(sources)
    if len(factors) != len(sources):
        raise ValueError("one scale per profile")
    extra = [list(x) for x in labels] if labels is not None else [[] for _ in sources]
    if len(extra) != len(sources):
        raise ValueError("one label list per profile")
    profs = [decode(d, max_size) for d in sources]
    types = _compatible_types(profs)
    out = _Merged()
    out.combine_headers(profs, types)
    if time_nanos is not None:
        out.profile.time_nanos = time_nanos
    if duration_nanos is not None:
        out.profile.duration_nanos = duration_nanos
    # Pass 1: key everything by content; pass 2 writes only what kept samples use.
    samples: dict[_SampleKey, _MergedSample] = {}
    for p, factor, tags in zip(profs, factors, extra, strict=True):
        locations = _location_keys(p, out.add_mappings(p))
        _add_samples(p, factor, locations, samples, len(types), tags)
    out.write_samples(samples)
    return out.to_gzip()


def _value_type(p: pb.Profile, v: pb.ValueType) -> tuple[str, str]:
    return p.string_table[v.type], p.string_table[v.unit]


def _compatible_types(profs: Sequence[pb.Profile]) -> list[tuple[str, str]]:
    """The sample types of ``profs``, which must all have the same ones and the same
    period type; else ValueError ``incompatible ...``."""
    first = profs[0]
    types = [_value_type(first, t) for t in first.sample_type]
    for p in profs[1:]:
        if _value_type(p, p.period_type) != _value_type(first, first.period_type):
            raise ValueError("incompatible period types")
        if [_value_type(p, t) for t in p.sample_type] != types:
            raise ValueError("incompatible sample types")
    return types


def _location_keys(
    p: pb.Profile, mapped: dict[int, tuple[int, int]]
) -> dict[int, _LocationKey]:
    """Each location id of ``p`` -> its content key, in the merged profile's mappings.

    ``mapped``: source mapping id -> (merged mapping id, address shift).
    """
    st = p.string_table
    funcs = {f.id: (st[f.name], st[f.system_name], st[f.filename], f.start_line)
             for f in p.function}
    locs: dict[int, _LocationKey] = {}
    for loc in p.location:
        mid, shift = mapped.get(loc.mapping_id, (0, 0))
        lines = tuple((funcs.get(ln.function_id), ln.line, ln.column) for ln in loc.line)
        locs[loc.id] = (mid, loc.address + shift, loc.is_folded, lines)
    return locs


def _add_samples(
    p: pb.Profile,
    factor: int,
    locations: dict[int, _LocationKey],
    samples: dict[_SampleKey, _MergedSample],
    nvalues: int,
    tags: Sequence[tuple[str, str | int]] = (),
) -> None:
    """Add ``p``'s samples that have a non-zero value, scaled by ``factor``, to ``samples``,
    each with the labels ``tags`` (in place of its own labels of those keys)."""
    st = p.string_table
    keys = {k for k, _ in tags}
    added: list[_Label] = [
        (k, "", v, "") if isinstance(v, int) else (k, v, 0, "") for k, v in tags
    ]
    for smp in p.sample:
        if not any(smp.value):
            continue
        labels = [(st[lb.key], st[lb.str], lb.num, st[lb.num_unit]) for lb in smp.label]
        if added:
            labels = [lb for lb in labels if lb[0] not in keys] + added
        skey = (tuple(locations[i] for i in smp.location_id), tuple(sorted(labels)))
        merged = samples.get(skey)
        if merged is None:
            merged = samples[skey] = _MergedSample([0] * nvalues, labels)
        values = merged.values
        for i, v in enumerate(smp.value):
            values[i] += v * factor


class _Merged:
    """The merged profile being written: its message and what is in it, keyed by content."""

    __slots__ = ("_functions", "_locations", "_mappings", "_strings", "profile")

    def __init__(self) -> None:
        self.profile = pb.Profile()
        self._strings: dict[str, int] = {"": 0}
        # (size, file offset, build id or file) -> (id, start)
        self._mappings: dict[tuple[int, int, str], tuple[int, int]] = {}
        self._functions: dict[_FunctionKey, int] = {}
        self._locations: dict[_LocationKey, int] = {}

    def s(self, text: str) -> int:
        """The string-table index of ``text``, added on first use."""
        return self._strings.setdefault(text, len(self._strings))

    def combine_headers(
        self, profs: Sequence[pb.Profile], types: Sequence[tuple[str, str]]
    ) -> None:
        """Go's combineHeaders (the caller has checked the types are compatible)."""
        out, s, first = self.profile, self.s, profs[0]
        for typ, unit in types:
            out.sample_type.add(type=s(typ), unit=s(unit))
        ptype = _value_type(first, first.period_type)
        out.period_type.type, out.period_type.unit = s(ptype[0]), s(ptype[1])
        out.period = max(p.period for p in profs)
        out.time_nanos = min((p.time_nanos for p in profs if p.time_nanos), default=0)
        out.duration_nanos = sum(p.duration_nanos for p in profs)
        seen_comments: set[str] = set()
        for p in profs:
            for c in p.comment:
                if p.string_table[c] not in seen_comments:
                    seen_comments.add(p.string_table[c])
                    out.comment.append(s(p.string_table[c]))
            if not out.default_sample_type and p.default_sample_type:
                out.default_sample_type = s(p.string_table[p.default_sample_type])
        out.drop_frames = s(first.string_table[first.drop_frames])
        out.keep_frames = s(first.string_table[first.keep_frames])

    def add_mappings(self, p: pb.Profile) -> dict[int, tuple[int, int]]:
        """Add ``p``'s new mappings; each of its mapping ids -> (merged id, address shift)."""
        merged, st = self._mappings, p.string_table
        mapped: dict[int, tuple[int, int]] = {}
        for m in p.mapping:
            size = -(-(m.memory_limit - m.memory_start) // 0x1000) * 0x1000
            mkey = (size, m.file_offset, st[m.build_id] or st[m.filename])
            if mkey not in merged:
                new = self.profile.mapping.add()
                new.CopyFrom(m)
                new.id = len(self.profile.mapping)
                new.filename, new.build_id = self.s(st[m.filename]), self.s(st[m.build_id])
                merged[mkey] = (new.id, m.memory_start)
            mid, start = merged[mkey]
            mapped[m.id] = (mid, start - m.memory_start)
        return mapped

    def write_samples(self, samples: dict[_SampleKey, _MergedSample]) -> None:
        """Write the samples whose values are not all zero, and what they use."""
        s = self.s
        for (locations, _), (values, labels) in samples.items():
            if not any(values):
                continue
            ids = [self._location_id(lkey) for lkey in locations]
            new_smp = self.profile.sample.add(location_id=ids, value=values)
            for key, text, num, unit in labels:
                lab = new_smp.label.add(key=s(key))
                if text:
                    lab.str = s(text)
                else:
                    lab.num, lab.num_unit = num, s(unit) if unit else 0

    def _location_id(self, lkey: _LocationKey) -> int:
        lid = self._locations.get(lkey)
        if lid is None:
            mid, address, folded, lines = lkey
            lid = self._locations[lkey] = len(self._locations) + 1
            new_loc = self.profile.location.add(
                id=lid, mapping_id=mid, address=address, is_folded=folded
            )
            for fkey, line, column in lines:
                fid = 0 if fkey is None else self._function_id(fkey)
                new_loc.line.add(function_id=fid, line=line, column=column)
        return lid

    def _function_id(self, fkey: _FunctionKey) -> int:
        fid = self._functions.get(fkey)
        if fid is None:
            fid = self._functions[fkey] = len(self._functions) + 1
            name, system_name, filename, start_line = fkey
            self.profile.function.add(
                id=fid, name=self.s(name), system_name=self.s(system_name),
                filename=self.s(filename), start_line=start_line,
            )
        return fid

    def to_gzip(self) -> bytes:
        """The merged profile, its string table filled in, gzipped."""
        self.profile.string_table.extend(self._strings)
        return gzip_bytes(self.profile.SerializeToString())


# --- Reading (used by ``python -m pyproperf top``) ---------------------------


def decode(data: bytes, max_size: int | None = None) -> pb.Profile:
    """Read a profile file, gzipped or not, as ``go tool pprof`` does; else ValueError.

    Checks what google/pprof's ``profile.Parse`` checks (pprof-reference §2)
    and raises ``ValueError`` with a one-line message worded like pprof's:
    ``decompressing profile: …``, ``parsing profile: …`` or
    ``malformed profile: …``.  Legacy text profiles are not read.
    ``max_size`` bounds the work for files from elsewhere (see ``_read``);
    None, for the profiles this process just wrote, bounds nothing.
    """
    if data[:2] == _read.GZIP_MAGIC:
        data = _read.gunzip(_read.pieces(data), max_size)
    elif max_size is not None and len(data) > max_size:
        raise _read.too_large(max_size, "parsing profile")
    return decode_uncompressed(data, max_size)


def decode_uncompressed(data: bytes, max_size: int | None = None) -> pb.Profile:
    """:func:`decode` for data already gunzipped (by ``_read.read_profile``)."""
    if not data:
        raise ValueError("parsing profile: empty input file")
    _read.check_wire(data, _read.limits_for(max_size))
    try:
        p = pb.Profile.FromString(data)
    except DecodeError:
        raise _read.unrecognized("corrupt protobuf data") from None
    _check_strings(p)
    problem = _check_valid(p)
    if problem:
        raise ValueError(f"malformed profile: {problem}")
    return p


def _check_strings(p: pb.Profile) -> None:
    """Every string index must point into the table, whose entry 0 is ""."""
    st = p.string_table
    if not st or st[0] != "":
        raise _read.unrecognized("string_table[0] must be ''")
    n = len(st)
    if any(not 0 <= i < n for i in _string_indexes(p)):
        raise _read.unrecognized("string index out of range")


def _string_indexes(p: pb.Profile) -> Iterator[int]:
    """Every string index in the profile, one at a time: nothing the size of the profile."""
    yield from (p.drop_frames, p.keep_frames, p.default_sample_type, p.doc_url)
    yield from p.comment
    for vt in p.sample_type:
        yield vt.type
        yield vt.unit
    yield p.period_type.type
    yield p.period_type.unit
    for m in p.mapping:
        yield m.filename
        yield m.build_id
    for f in p.function:
        yield f.name
        yield f.system_name
        yield f.filename
    for s in p.sample:
        for lab in s.label:
            yield lab.key
            yield lab.str
            yield lab.num_unit


def _check_valid(p: pb.Profile) -> str:
    """google/pprof's CheckValid, in its order: the problem, or "" when valid."""
    ntypes = len(p.sample_type)
    if not ntypes and p.sample:
        return "missing sample type information"
    locations = {loc.id for loc in p.location}
    for s in p.sample:
        if len(s.value) != ntypes:
            return f"mismatch: sample has {len(s.value)} values vs. {ntypes} types"
        if any(i not in locations for i in s.location_id):
            return "sample has nil location"
    for what, items in (("mapping", p.mapping), ("function", p.function)):
        ids: set[int] = set()
        for item in items:
            if item.id == 0:
                return f"found {what} with reserved ID=0"
            if item.id in ids:
                return f"multiple {what}s with same id: {item.id}"
            ids.add(item.id)
    functions = {f.id for f in p.function}
    ids = set()
    for loc in p.location:
        if loc.id == 0:
            return "found location with reserved id=0"
        if loc.id in ids:
            return f"multiple locations with same id: {loc.id}"
        ids.add(loc.id)
        if any(line.function_id not in functions for line in loc.line):
            return f"location id: {loc.id} has a line with nil function"
    return ""
