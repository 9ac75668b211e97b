"""Profiles written to the program's own writers get ``bytes``, as Go's ``Write`` gets ``[]byte``.

A duck-typed writer may test ``isinstance(data, bytes)`` or call
``data.decode()``; a ``memoryview`` breaks it.  Every public API that
writes to a file object the program hands over is run here with a writer
that refuses anything but ``bytes``: one that takes all it is given (and
returns None, as many hand-written writers do) and one that takes at most
1000 bytes per call, as a raw file may, so the rest of a profile after a
short write is checked too.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterator

import pytest

import pyproperf
from tests import cpu_workloads as wl
from tests.pprof_tool import check_valid, load, stacks

BUILTINS = ["allocs", "block", "goroutine", "heap", "mutex", "threadcreate"]
_names = itertools.count()
# How Go's debug=1 (and goroutine's debug=2) text begins.
TEXT_STARTS = {
    ("allocs", 1): "heap profile: ",
    ("heap", 1): "heap profile: ",
    ("block", 1): "--- contention:\n",
    ("mutex", 1): "--- mutex:\n",
    ("goroutine", 1): "goroutine profile: total ",
    ("goroutine", 2): "goroutine ",
    ("threadcreate", 1): "threadcreate profile: total ",
    ("custom", 1): "pyproperf.tests/writers.",
}


class StrictWriter:
    """A writer that takes ``bytes`` and nothing else (a ``bytes`` subclass neither)."""

    def __init__(self, take: int | None) -> None:
        self.take = take  # most bytes taken per call; None: all, and write returns None
        self.types: list[type] = []
        self.data = bytearray()

    def write(self, data: object) -> int | None:
        self.types.append(type(data))
        if type(data) is not bytes:
            raise TypeError(f"this writer takes bytes, not {type(data).__name__}")
        if self.take is None:
            self.data += data
            return None
        n = min(len(data), self.take)
        self.data += data[:n]
        return n

    def taken(self) -> bytes:
        """What the writer got since the last call, having checked every call got bytes."""
        assert self.types, "nothing was written"
        assert all(t is bytes for t in self.types), self.types
        out = bytes(self.data)
        self.types.clear()
        self.data.clear()
        return out


@pytest.fixture(params=[None, 1000], ids=["takes-all", "short-writes"])
def writer(request: pytest.FixtureRequest) -> Iterator[StrictWriter]:
    yield StrictWriter(request.param)


def assert_profile(data: bytes, leaf: str | None = None) -> None:
    """``data`` is one whole gzipped profile.proto (with a sample at ``leaf``, if given)."""
    assert data[:2] == b"\x1f\x8b"
    p = load(gzip.decompress(data))
    check_valid(p)
    if leaf is not None:
        assert any(names[0] == leaf for names, _, _ in stacks(p)), stacks(p)


def test_start_cpu_profile(writer: StrictWriter) -> None:
    pyproperf.start_cpu_profile(writer)
    try:
        wl.spin(0.1)
    finally:
        pyproperf.stop_cpu_profile()
    assert_profile(writer.taken(), f"{wl.MODULE}.spin")


def test_cpu_profile_block(writer: StrictWriter) -> None:
    with pyproperf.cpu_profile(writer):  # type: ignore[arg-type]
        wl.spin(0.1)
    assert_profile(writer.taken(), f"{wl.MODULE}.spin")


def test_cpu_profile_decorator_flush_and_close(writer: StrictWriter) -> None:
    @pyproperf.cpu_profile(writer)  # type: ignore[arg-type]
    def work() -> None:
        wl.spin(0.1)

    section = work.cpu_profile  # type: ignore[attr-defined]
    try:
        writer.taken()  # the check_writer probe, b""
        work()
        pyproperf.flush()
        assert_profile(writer.taken(), f"{wl.MODULE}.spin")
        section.write()
        assert_profile(writer.taken(), f"{wl.MODULE}.spin")
    finally:
        section.close()
    assert_profile(writer.taken(), f"{wl.MODULE}.spin")


def test_heap_profile_block(writer: StrictWriter) -> None:
    with pyproperf.heap_profile(writer):
        keep = [bytearray(1000) for _ in range(1000)]
    assert_profile(writer.taken())
    del keep


def test_write_heap_profile(writer: StrictWriter) -> None:
    pyproperf.start_heap_profile()
    try:
        keep = [bytearray(1000) for _ in range(1000)]
        pyproperf.write_heap_profile(writer)
    finally:
        pyproperf.stop_heap_profile()
    assert_profile(writer.taken())
    del keep


@pytest.mark.filterwarnings("ignore:pyproperf. the .* profile is empty:RuntimeWarning")
@pytest.mark.parametrize("debug", [0, 1, 2])
@pytest.mark.parametrize("name", [*BUILTINS, "custom"])
def test_write_to(writer: StrictWriter, name: str, debug: int) -> None:
    if name == "custom":
        p = pyproperf.new_profile(f"pyproperf.tests/writers.{next(_names)}")
        p.add("x")
    else:
        found = pyproperf.lookup(name)
        assert found is not None
        p = found
    p.write_to(writer, debug)
    data = writer.taken()
    if debug == 0:
        assert_profile(data)
        return
    text_debug = min(debug, 2 if name == "goroutine" else 1)
    assert data.decode().startswith(TEXT_STARTS[name, text_debug])
    if name == "custom":
        assert data == p.render(debug)  # all of it, also after short writes


def test_refusing_writer_is_a_real_check() -> None:
    """The writer used here does refuse a memoryview (so the tests above can fail)."""
    w = StrictWriter(None)
    with pytest.raises(TypeError, match="memoryview"):
        w.write(memoryview(b"x"))
    with pytest.raises(AssertionError):
        w.taken()
