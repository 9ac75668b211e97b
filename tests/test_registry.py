"""The profiles registry and custom profiles: Go's Lookup/NewProfile/Profiles and Profile."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pyproperf
from pyproperf import _registry
from tests.pprof_tool import check_valid, load, pprof, stacks, traces

BUILTINS = ["allocs", "block", "goroutine", "heap", "mutex", "threadcreate"]
SAMPLE_TYPES = {
    "heap": [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ],
    "block": [("contentions", "count"), ("delay", "nanoseconds")],
    "goroutine": [("goroutine", "count")],
    "threadcreate": [("threadcreate", "count")],
}
SAMPLE_TYPES["allocs"] = SAMPLE_TYPES["heap"]
SAMPLE_TYPES["mutex"] = SAMPLE_TYPES["block"]

_names = itertools.count()


def fresh(prefix: str = "test") -> pyproperf.Profile:
    """A new custom profile with a name no other test uses."""
    return pyproperf.new_profile(f"pyproperf.tests/{prefix}.{next(_names)}")


def sample_types(data: bytes) -> list[tuple[str, str]]:
    p = load(data)
    st = p.string_table
    return [(st[t.type], st[t.unit]) for t in p.sample_type]


# -- lookup / new_profile / profiles -------------------------------------------------------


def test_builtins_exist() -> None:
    for name in BUILTINS:
        p = pyproperf.lookup(name)
        assert isinstance(p, pyproperf.Profile)
        assert p.name() == name
        assert p is pyproperf.lookup(name)
    assert pyproperf.lookup("no-such-profile") is None
    assert pyproperf.lookup("") is None
    with pytest.raises(TypeError):
        pyproperf.lookup(3)  # type: ignore[arg-type]


def test_new_profile_errors_use_gos_wording() -> None:
    with pytest.raises(ValueError, match=r"^pprof: NewProfile with empty name$"):
        pyproperf.new_profile("")
    for name in BUILTINS:
        with pytest.raises(ValueError, match=rf"^pprof: NewProfile name already in use: {name}$"):
            pyproperf.new_profile(name)
    p = fresh()
    with pytest.raises(ValueError, match="already in use: " + p.name()):
        pyproperf.new_profile(p.name())
    with pytest.raises(TypeError):
        pyproperf.new_profile(None)  # type: ignore[arg-type]


def test_profile_is_not_constructed_directly() -> None:
    with pytest.raises(TypeError, match="new_profile"):
        pyproperf.Profile("x")


def test_profiles_sorted_by_name() -> None:
    a = pyproperf.new_profile(f"zz.tests/{next(_names)}")
    b = pyproperf.new_profile(f"a.tests/{next(_names)}")
    names = [p.name() for p in pyproperf.profiles()]
    assert names == sorted(names)
    assert set(BUILTINS) <= set(names)
    assert a.name() in names and b.name() in names
    assert pyproperf.lookup(a.name()) is a
    assert repr(a) == f"<pyproperf.Profile {a.name()!r}>"


def test_new_profile_races_have_one_winner() -> None:
    name = f"race.tests/{next(_names)}"
    results: list[object] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            results.append(pyproperf.new_profile(name))
        except ValueError as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, pyproperf.Profile)]
    assert len(winners) == 1 and pyproperf.lookup(name) is winners[0]


# -- add / remove / count ---------------------------------------------------------------------


def test_add_remove_count() -> None:
    p = fresh()
    assert p.count() == 0
    obj = object()
    p.add(obj)
    p.add("key")
    p.add(1)
    assert p.count() == 3
    with pytest.raises(ValueError, match=r"^pprof: Profile.Add of duplicate value$"):
        p.add("key")
    with pytest.raises(ValueError, match="duplicate"):
        p.add(1.0)  # equal to 1, as dict keys are
    p.remove("key")
    p.remove("key")  # absent: nothing happens
    p.remove("never added")
    assert p.count() == 2
    p.add("key")  # can be added again once removed
    assert p.count() == 3


def test_unhashable_values_raise_type_error() -> None:
    p = fresh()
    with pytest.raises(TypeError, match="hashable"):
        p.add([1, 2])
    with pytest.raises(TypeError, match="hashable"):
        p.remove({})
    assert p.count() == 0


def test_builtin_add_raises_and_remove_is_a_no_op() -> None:
    for name in BUILTINS:
        p = pyproperf.lookup(name)
        assert p is not None
        with pytest.raises(ValueError, match=rf"^pprof: Add called on built-in Profile {name}$"):
            p.add(object())
        p.remove(object())  # Go: silently nothing


def test_skip_argument() -> None:
    p = fresh()
    with pytest.raises(ValueError):
        p.add("a", -1)
    with pytest.raises(TypeError):
        p.add("a", 1.5)  # type: ignore[arg-type]
    assert p.count() == 0


def test_add_is_thread_safe() -> None:
    p = fresh()
    n_threads, per = 8, 500

    def work(i: int) -> None:
        for j in range(per):
            p.add((i, j), 1)
        for j in range(0, per, 2):
            p.remove((i, j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.count() == n_threads * per // 2
    data = p.render(0)
    assert sum(v[0] for _, v, _ in stacks(load(data))) == n_threads * per // 2


# -- stacks and skip, from several call depths ------------------------------------------------


def adder(p: pyproperf.Profile, value: object, skip: int) -> None:
    p.add(value, skip)


def middle(p: pyproperf.Profile, value: object, skip: int) -> None:
    adder(p, value, skip)


def outer(p: pyproperf.Profile, value: object, skip: int) -> None:
    middle(p, value, skip)


MOD = __name__  # module name as the resolver prints it


def stack_of(p: pyproperf.Profile, value_count: int = 1) -> list[list[str]]:
    prof = load(p.render(0))
    check_valid(prof)
    out = []
    for names, values, labels in stacks(prof):
        assert labels == {}
        out.extend([names] * values[0])
    assert len(out) == value_count
    return out


def test_skip_means_what_it_means_in_go() -> None:
    """Go: skip=0 starts at Add itself, 1 at Add's caller, 2 at the caller's caller.

    (Verified with Go 1.27.3: ``runtime.Callers(skip+1, …)`` inside ``Add``.)
    """
    for skip, leaf in [
        (0, ["pyproperf._registry.Profile.add", f"{MOD}.adder"]),
        (1, [f"{MOD}.adder", f"{MOD}.middle"]),
        (2, [f"{MOD}.middle", f"{MOD}.outer"]),
        (3, [f"{MOD}.outer", f"{MOD}.test_skip_means_what_it_means_in_go"]),
    ]:
        p = fresh("skip")
        outer(p, "v", skip)
        (stack,) = stack_of(p)
        assert stack[: len(leaf)] == leaf, (skip, stack)
        assert f"{MOD}.test_skip_means_what_it_means_in_go" in stack


def test_skip_from_different_depths_gives_different_stacks() -> None:
    p = fresh("depths")
    adder(p, 1, 1)
    middle(p, 2, 1)
    outer(p, 3, 1)
    outer(p, 4, 2)
    here = f"{MOD}.test_skip_from_different_depths_gives_different_stacks"
    got = sorted(s[: s.index(here) + 1] for s in stack_of(p, 4))
    assert got == sorted(
        [
            [f"{MOD}.adder", here],
            [f"{MOD}.adder", f"{MOD}.middle", here],
            [f"{MOD}.adder", f"{MOD}.middle", f"{MOD}.outer", here],
            [f"{MOD}.middle", f"{MOD}.outer", here],
        ]
    )


def test_skip_past_the_root_records_lost_profile_event() -> None:
    p = fresh("lost")
    adder(p, "v", 10_000)
    (stack,) = stack_of(p)
    assert stack == ["pyproperf._registry.lost_profile_event"]
    text = p.render(1).decode()
    assert "pyproperf._registry.lost_profile_event+0x0" in text


def recurse(p: pyproperf.Profile, n: int) -> None:
    if n == 0:
        p.add("deep", 1)
    else:
        recurse(p, n - 1)


def test_stacks_keep_32_frames_and_mark_truncation() -> None:
    p = fresh("deep")
    recurse(p, 100)
    (stack,) = stack_of(p)
    assert len(stack) == _registry.CUSTOM_STACK_DEPTH + 1
    assert stack[:32] == [f"{MOD}.recurse"] * 32
    assert stack[32] == "(truncated stack)"


# -- write_to -------------------------------------------------------------------------------------


def test_write_to_debug_0_is_read_by_pprof(tmp_path: Path) -> None:
    p = fresh("proto")
    for i in range(3):
        adder(p, i, 1)
    middle(p, "m", 1)
    buf = io.BytesIO()
    p.write_to(buf, 0)
    data = buf.getvalue()
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
    prof = load(data)
    check_valid(prof)
    st = prof.string_table
    assert sample_types(data) == [(p.name(), "count")]
    assert (st[prof.period_type.type], st[prof.period_type.unit], prof.period) == (
        p.name(),
        "count",
        1,
    )
    assert [s.value[0] for s in prof.sample] == [3, 1]  # count descending
    path = tmp_path / "custom.pb.gz"
    path.write_bytes(data)
    rows = traces(path)
    values: list[tuple[str, tuple[str, ...]]] = sorted(
        (str(r["value"]), tuple(r["stack"])[:2])  # type: ignore[arg-type]
        for r in rows
    )
    assert values == [
        ("1", (f"{MOD}.adder", f"{MOD}.middle")),
        ("3", (f"{MOD}.adder", f"{MOD}.test_write_to_debug_0_is_read_by_pprof")),
    ]
    assert "Type: " + p.name() in pprof("-top", path)


def test_write_to_debug_1_layout_line_by_line() -> None:
    p = fresh("text")
    for i in range(2):
        adder(p, i, 1)
    middle(p, "m", 1)
    text = p.render(1).decode()
    lines = text.split("\n")
    assert lines[0] == f"{p.name()} profile: total 3"
    assert lines[1].startswith("2 @ 0x")
    # Every address on the "@" line is one past the PC on the matching "#" line.
    at = [int(a, 16) for a in lines[1].split()[2:]]
    block = lines[2 : 2 + len(at)]
    for addr, frame_line in zip(at, block, strict=True):
        cells = frame_line.split("\t")
        assert cells[0] == "#" and int(cells[1], 16) == addr - 1
    first = [c for c in block[0].split("\t") if c]
    assert first[2].startswith(f"{MOD}.adder+0x")
    assert first[3].endswith(f"{Path(__file__).name}:{adder.__code__.co_firstlineno + 1}")
    assert lines[2 + len(at)] == ""
    assert lines[3 + len(at)].startswith("1 @ 0x")
    assert text.endswith("\n\n")
    # Exactly what the shared layout code gives (checked against Go in test_text.py).
    assert "# labels" not in text
    assert p.render(2) == p.render(1)  # only goroutine has a debug=2 form
    assert p.render(5) == p.render(1)
    assert p.render(-1)[:2] == b"\x1f\x8b"  # Go: any debug <= 0 is the proto


def test_empty_custom_profile() -> None:
    p = fresh("empty")
    assert p.render(1) == f"{p.name()} profile: total 0\n".encode()
    assert sample_types(p.render(0)) == [(p.name(), "count")]


def test_write_to_bad_writers_raise_and_write_nothing(tmp_path: Path) -> None:
    p = fresh("writers")
    p.add("x")
    closed = io.BytesIO()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        p.write_to(closed)
    with pytest.raises(TypeError, match="binary"):
        p.write_to(io.StringIO())
    ro = tmp_path / "ro.bin"
    ro.write_bytes(b"keep")
    with open(ro, "rb") as f, pytest.raises(ValueError, match="not open for writing"):
        p.write_to(f)
    assert ro.read_bytes() == b"keep"
    with pytest.raises(TypeError):
        p.write_to(object())
    with pytest.raises(TypeError, match="debug"):
        p.write_to(io.BytesIO(), "1")  # type: ignore[arg-type]


def test_write_to_failing_writer_raises() -> None:
    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            if len(b):  # type: ignore[arg-type]
                raise OSError(28, "No space left on device")
            return 0

    p = fresh("full")
    p.add("x")
    with pytest.raises(OSError, match="No space"):
        p.write_to(Full())


def test_write_to_path_is_atomic(tmp_path: Path) -> None:
    p = fresh("path")
    p.add("x")
    target = tmp_path / "out.txt"
    p.write_to(target, 1)
    assert target.read_bytes() == p.render(1)
    p.write_to(str(target), 0)
    assert target.read_bytes()[:2] == b"\x1f\x8b"
    assert os.listdir(tmp_path) == ["out.txt"]


# -- built-in profiles ----------------------------------------------------------------------


# The heap source warns when tracemalloc is off; these tests are about the plumbing.
quiet_heap = pytest.mark.filterwarnings("ignore:pyproperf.*tracemalloc:RuntimeWarning")


@quiet_heap
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_debug_0_has_gos_sample_types(name: str, tmp_path: Path) -> None:
    p = pyproperf.lookup(name)
    assert p is not None
    assert isinstance(p.count(), int) and p.count() >= 0
    data = p.render(0)
    check_valid(load(data))
    assert sample_types(data) == SAMPLE_TYPES[name]
    path = tmp_path / f"{name}.pb.gz"
    path.write_bytes(data)
    pprof("-top", path)
    text = p.render(1)
    assert text and not text.startswith(b"\x1f\x8b")


def test_builtin_with_nothing_recorded_is_an_empty_valid_profile(tmp_path: Path) -> None:
    """In a fresh process, every built-in but goroutine (the main thread is one) is empty."""
    names = [name for name in BUILTINS if name != "goroutine"]
    code = (
        "import sys, warnings, pyproperf\n"
        "warnings.simplefilter('ignore')\n"
        f"for name in {names!r}:\n"
        "    p = pyproperf.lookup(name)\n"
        "    assert p.count() == 0, name\n"
        "    open(sys.argv[1] + '/' + name + '.pb.gz', 'wb').write(p.render(0))\n"
        "    open(sys.argv[1] + '/' + name + '.txt', 'wb').write(p.render(1))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    for name in names:
        path = tmp_path / f"{name}.pb.gz"
        data = path.read_bytes()
        prof = load(data)
        check_valid(prof)
        assert not prof.sample
        assert sample_types(data) == SAMPLE_TYPES[name]
        st = prof.string_table
        assert st[prof.default_sample_type] == ("alloc_space" if name == "allocs" else "")
        pprof("-top", path)
        first = (tmp_path / f"{name}.txt").read_text().splitlines()[0]
        expected = {
            "heap": "heap profile: 0: 0 [0: 1] @ heap/2",
            "allocs": "heap profile: 0: 0 [0: 1] @ heap/2",
            "block": "--- contention:",
            "mutex": "--- mutex:",
            "threadcreate": "threadcreate profile: total 0",
        }[name]
        assert first == expected


@quiet_heap
def test_write_heap_profile_is_heap_debug_0() -> None:
    buf = io.BytesIO()
    pyproperf.write_heap_profile(buf)
    assert sample_types(buf.getvalue()) == SAMPLE_TYPES["heap"]
    closed = io.BytesIO()
    closed.close()
    with pytest.raises(ValueError):
        pyproperf.write_heap_profile(closed)
