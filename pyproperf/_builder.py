"""Turn plain records into a gzipped profile.proto.

The builder knows the schema and nothing about where stacks come from:
sources hand it ``Frame`` tuples (already resolved to names, files and
lines), value lists and labels.  It interns strings, functions and
locations, assigns ids from 1 as pprof requires, and writes the result
gzipped with Go's header bytes.  It is the only module that imports the
generated protobuf code.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pyproperf._pb import profile_pb2 as pb

__all__ = ["Frame", "ProfileBuilder", "gzip_bytes"]


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
        p.mapping.add(id=1, has_functions=True, has_filenames=True, has_line_numbers=True)

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
            loc = self._profile.location.add(id=lid, mapping_id=1)
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
        if len(values) != self._nvalues:
            raise ValueError(f"sample has {len(values)} values for {self._nvalues} sample types")
        sample = self._profile.sample.add(
            location_id=[self.location_id(f) for f in stack], value=values
        )
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
        return p.SerializeToString()

    def to_gzip(self) -> bytes:
        """Return the gzipped profile, as written to files and HTTP responses."""
        return gzip_bytes(self.to_bytes())
