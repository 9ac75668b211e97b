"""heap and allocs profiles: ground truth read back by ``go tool pprof``, names, API, text."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import io
import os
import re
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyproperf
from pyproperf import _heap, _heap_names
from pyproperf._stacks import Resolver
from tests.pprof_tool import check_valid, load, pprof, raw, stacks, tags, top_by_name

HERE = __name__  # the module name pyproperf gives functions of this file

# -- workloads: each allocation site is its own function ------------------------------------


def retain_bytes(n: int, size: int) -> list[bytes]:
    out = []
    for _ in range(n):
        out.append(bytes(size))
    return out


def retain_strings(n: int, size: int) -> list[str]:
    out = []
    for i in range(n):
        out.append("s" * size + str(i))
    return out


def make_garbage(n: int) -> int:
    total = 0
    for i in range(n):
        total += len(bytes(1000 + i % 7))
    return total


def churn(seconds: float) -> int:
    """Allocate and free 4 MiB buffers again and again: nothing is left at the end."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        buf = bytearray(4 << 20)
        for i in range(0, len(buf), 64):  # keep each buffer alive for a while
            buf[i] = 1
        n += 1
        del buf
    return n


class _Holder:
    def retain(self) -> list[bytes]:
        return [bytes(30_000) for _ in range(10)]


def outer() -> list[bytes]:
    def inner() -> list[bytes]:
        keep = []
        for _ in range(10):
            keep.append(bytes(40_000))
        return keep

    return inner()


def truth(objs: list[Any]) -> int:
    """Bytes held: the list and its items, as sys.getsizeof counts them."""
    return sys.getsizeof(objs) + sum(sys.getsizeof(o) for o in objs)


@pytest.fixture
def session() -> Iterator[None]:
    """Heap profiling on for the test, off after it."""
    pyproperf.start_heap_profile(16)
    try:
        yield
    finally:
        pyproperf.stop_heap_profile()


def write(tmp_path: Path, name: str = "heap", debug: int = 0) -> Path:
    path = tmp_path / f"{name}.{'txt' if debug else 'pb.gz'}"
    buf = io.BytesIO()
    prof = pyproperf.lookup(name)
    assert prof is not None
    prof.write_to(buf, debug)
    path.write_bytes(buf.getvalue())
    return path


def _retry(check: Callable[[float], None], seconds: float) -> None:
    """Go's habit for timing-dependent checks: retry once with the duration doubled."""
    try:
        check(seconds)
    except AssertionError:
        check(seconds * 2)


# -- ground truth ------------------------------------------------------------------------------


def test_inuse_space_per_site_matches_ground_truth(tmp_path: Path, session: None) -> None:
    a = retain_bytes(200, 10_000)
    b = retain_strings(300, 5_000)
    make_garbage(20_000)
    path = write(tmp_path)
    rows = top_by_name(path, "-sample_index=inuse_space")
    for fn, objs in ((retain_bytes, a), (retain_strings, b)):
        row = rows[f"{HERE}.{fn.__name__}"]
        assert row.flat == pytest.approx(truth(objs), rel=0.03), fn.__name__
    garbage = rows.get(f"{HERE}.make_garbage")
    assert garbage is None or garbage.flat < 2_000
    objects = top_by_name(path, "-sample_index=inuse_objects")
    assert objects[f"{HERE}.retain_bytes"].flat == pytest.approx(201, abs=2)  # 200 bytes + list
    check_valid(load(path))
    del a, b


def test_sample_types_period_and_default_types(tmp_path: Path, session: None) -> None:
    keep = retain_bytes(10, 1000)
    for name, default in (("heap", ""), ("allocs", "alloc_space")):
        p = load(write(tmp_path, name))
        st = p.string_table
        assert [(st[t.type], st[t.unit]) for t in p.sample_type] == [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
        assert (st[p.period_type.type], st[p.period_type.unit]) == ("space", "bytes")
        assert p.period == 1
        assert st[p.default_sample_type] == default
        assert p.time_nanos > 0
        for s in p.sample:
            nums = {st[lab.key]: lab.num for lab in s.label if not lab.str}
            assert nums.get("bytes", 0) > 0 or s.value[2] == 0 == s.value[0]
            assert s.value[0] >= s.value[2] and s.value[1] >= s.value[3]  # alloc >= inuse
    text = pprof(
        "-sample_index=inuse_space", "-tagfocus=bytes=900B:1100B", "-top", tmp_path / "heap.pb.gz"
    )
    assert f"{HERE}.retain_bytes" in text
    del keep


def test_function_names_and_first_lines(tmp_path: Path, session: None) -> None:
    keep = [_Holder().retain(), outer(), retain_bytes(10, 20_000)]
    p = load(write(tmp_path))
    names = {name for stack, _, _ in stacks(p) for name in stack}
    expected = {
        f"{HERE}.retain_bytes",
        f"{HERE}.outer.<locals>.inner",
        f"{HERE}.outer",
        f"{HERE}.test_function_names_and_first_lines",
    }
    if sys.version_info >= (3, 12):  # comprehensions are inlined
        expected.add(f"{HERE}._Holder.retain")
    else:
        expected.add(f"{HERE}._Holder.retain.<locals>.<listcomp>")
    assert expected <= names
    st = p.string_table
    first = {st[f.name]: (st[f.filename], f.start_line) for f in p.function}
    assert first[f"{HERE}.retain_bytes"] == (__file__, retain_bytes.__code__.co_firstlineno)
    assert first[f"{HERE}.outer"][1] == outer.__code__.co_firstlineno
    assert not any(n.endswith(".<nosource>") for n in names if n.startswith(HERE))
    del keep


def test_allocs_counts_buffers_freed_during_the_run(tmp_path: Path, session: None) -> None:
    """alloc_space is measured by snapshots: a site churning 4 MiB buffers must show up."""

    def check(seconds: float) -> None:
        churn(seconds)
        allocs = write(tmp_path, "allocs")
        rows = top_by_name(allocs)  # default sample type: alloc_space
        assert f"{HERE}.churn" in rows, "churn() missing from allocs"
        assert rows[f"{HERE}.churn"].flat >= 4 << 20
        heap = top_by_name(write(tmp_path, "heap"), "-sample_index=inuse_space")
        assert f"{HERE}.churn" not in heap or heap[f"{HERE}.churn"].flat < 4096

    _retry(check, 1.5)
    comments = raw(tmp_path / "allocs.pb.gz")
    assert "snapshots since" in comments and "lower bound" in comments


def test_allocs_equals_inuse_without_a_session(tmp_path: Path) -> None:
    tracemalloc.start(4)
    try:
        keep = retain_bytes(50, 10_000)
        p = load(write(tmp_path, "allocs"))
        for s in p.sample:
            assert list(s.value[:2]) == list(s.value[2:])
        assert any("heap profiling was not started" in p.string_table[c] for c in p.comment)
        assert any("at most 4 frames" in p.string_table[c] for c in p.comment)
        del keep
    finally:
        tracemalloc.stop()


# -- tracemalloc state --------------------------------------------------------------------------


def test_tracemalloc_started_and_stopped_by_us() -> None:
    assert not tracemalloc.is_tracing()
    pyproperf.start_heap_profile(7)
    try:
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == 7
        pyproperf.start_heap_profile(3)  # nested: shares the session
        pyproperf.stop_heap_profile()
        assert tracemalloc.is_tracing()
    finally:
        pyproperf.stop_heap_profile()
    assert not tracemalloc.is_tracing()
    pyproperf.stop_heap_profile()  # no session: nothing happens
    assert not tracemalloc.is_tracing()


def test_users_tracemalloc_is_used_and_never_stopped(tmp_path: Path) -> None:
    tracemalloc.start(3)
    try:
        with pyproperf.heap_profile(tmp_path / "h.pb.gz", nframes=20):
            assert tracemalloc.get_traceback_limit() == 3
            keep = retain_bytes(10, 1000)
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == 3
        p = load(tmp_path / "h.pb.gz")
        assert any("at most 3 frames" in p.string_table[c] for c in p.comment)
        del keep
    finally:
        tracemalloc.stop()


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nframes must be between 1 and 65535"):
        pyproperf.start_heap_profile(0)
    with pytest.raises(TypeError, match="nframes must be an int"):
        pyproperf.start_heap_profile("16")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pyproperf.heap_profile(io.StringIO())
    with pytest.raises(FileNotFoundError):
        pyproperf.heap_profile(tmp_path / "missing" / "h.pb.gz")
    with pytest.raises(ValueError, match="not a heap profile name"):
        _heap.render("goroutine", 0)
    assert not tracemalloc.is_tracing()


# -- empty profile --------------------------------------------------------------------------------


def test_not_tracing_writes_an_empty_profile_and_warns(tmp_path: Path) -> None:
    assert not tracemalloc.is_tracing()
    with pytest.warns(RuntimeWarning, match="tracemalloc is not tracing") as record:
        pyproperf.write_heap_profile(tmp_path / "h.pb.gz")
    assert record[0].filename == __file__  # points at the caller, not at pyproperf
    p = load(tmp_path / "h.pb.gz")
    check_valid(p)
    assert not p.sample
    assert len(p.sample_type) == 4
    text = raw(tmp_path / "h.pb.gz")
    assert "tracemalloc is not tracing" in text and "start_heap_profile" in text
    with pytest.warns(RuntimeWarning):
        out = _heap.render("allocs", 1).decode()
    assert out.startswith("heap profile: 0: 0 [0: 1] @ heap/2\n\n# pyproperf heap profile\n")
    assert pyproperf.lookup("heap").count() == 0  # type: ignore[union-attr]


# -- debug=1 text ---------------------------------------------------------------------------------

_RECORD = re.compile(r"(\d+): (\d+) \[(\d+): (\d+)\] @((?: 0x[0-9a-f]+)*)")
_FRAME = re.compile(r"#\t0x[0-9a-f]+\t+\S.*\+0x[0-9a-f]+\t+.*:\d+")


def test_debug1_layout(tmp_path: Path, session: None) -> None:
    keep = retain_bytes(20, 5000)
    text = write(tmp_path, "heap", debug=1).read_text()
    lines = text.split("\n")
    head = re.fullmatch(r"heap profile: (\d+): (\d+) \[(\d+): (\d+)\] @ heap/2", lines[0])
    assert head, lines[0]
    records = []
    i = 1
    while i < len(lines) and (m := _RECORD.fullmatch(lines[i])):
        nframes = len(m.group(5).split())
        i += 1
        if lines[i].startswith("# labels: "):
            i += 1
        columns = set()
        for _ in range(nframes):
            assert _FRAME.fullmatch(lines[i]), lines[i]
            # tabwriter: the file column starts at one tab stop in the whole block
            columns.add(len(lines[i][: lines[i].rindex("\t") + 1].expandtabs(8)))
            i += 1
        assert len(columns) == 1
        assert lines[i] == ""
        i += 1
        records.append(tuple(int(m.group(k)) for k in range(1, 5)))
    assert records and lines[i] == "" and lines[i + 1] == "# pyproperf heap profile"
    inuse_bytes = [r[1] for r in records]
    assert inuse_bytes == sorted(inuse_bytes)  # Go 1.27: ascending in-use bytes
    totals = [sum(r[k] for r in records) for k in range(4)]
    if totals[1] == totals[3]:
        totals[3] += 1
    assert [int(head.group(k)) for k in range(1, 5)] == totals
    trailer = lines[i + 1 :]
    for key in ("# TracebackLimit = 16", "# Snapshots = ", "# Collections = [", "# MaxRSS = "):
        assert any(line.startswith(key) for line in trailer), key
    assert f"{HERE}.retain_bytes+0x" in text
    del keep


# -- API forms ------------------------------------------------------------------------------------


def test_context_manager_writes_at_the_end_even_on_exception(tmp_path: Path) -> None:
    path = tmp_path / "h.pb.gz"
    with pytest.raises(ZeroDivisionError), pyproperf.heap_profile(path):
        keep = retain_bytes(100, 10_000)
        1 / 0  # noqa: B018
    assert not tracemalloc.is_tracing()
    rows = top_by_name(path, "-sample_index=inuse_space")
    assert rows[f"{HERE}.retain_bytes"].flat == pytest.approx(truth(keep), rel=0.03)


def test_decorator_sync_async_and_recursion(tmp_path: Path) -> None:
    path = tmp_path / "h.pb.gz"
    kept: list[object] = []

    @pyproperf.heap_profile(path, nframes=8)
    def work(depth: int) -> None:
        kept.append(retain_bytes(10, 10_000))
        if depth:
            work(depth - 1)

    work(3)
    assert not tracemalloc.is_tracing()
    rows = top_by_name(path, "-sample_index=inuse_space")
    assert rows[f"{HERE}.retain_bytes"].flat >= 4 * 100_000  # all four calls, one write

    writes: list[bytes] = []

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            if len(b):
                writes.append(bytes(b))
            return len(b)

    @pyproperf.heap_profile(Sink())
    async def awork() -> list[bytes]:
        await asyncio.sleep(0)
        return retain_bytes(10, 10_000)

    keep = asyncio.run(awork())
    assert len(writes) == 1 and gzip.decompress(writes[0])
    assert not tracemalloc.is_tracing()
    del keep


def test_registry_counts_and_writes(tmp_path: Path, session: None) -> None:
    keep = retain_bytes(10, 1000)
    heap = pyproperf.lookup("heap")
    allocs = pyproperf.lookup("allocs")
    assert heap is not None and allocs is not None
    n_heap = heap.count()
    n_allocs = allocs.count()
    assert 0 < n_heap <= n_allocs  # same data; a session only adds sites
    pyproperf.write_heap_profile(tmp_path / "w.pb.gz")
    assert f"{HERE}.retain_bytes" in top_by_name(tmp_path / "w.pb.gz", "-sample_index=inuse_space")
    del keep


def test_domains_are_labelled(tmp_path: Path, session: None) -> None:
    testcapi = pytest.importorskip("_testcapi")
    ptr = 0x7F0000001000
    testcapi.tracemalloc_track(389047, ptr, 3 << 20)  # numpy's tracemalloc domain
    try:
        path = write(tmp_path)
    finally:
        testcapi.tracemalloc_untrack(389047, ptr)
    text = tags(path, "-sample_index=inuse_space")
    assert re.search(r"domain: Total 3MB of .*\n\s+3MB \([0-9.]+%\): numpy\n", text), text
    rows = top_by_name(path, "-sample_index=inuse_space", "-tagfocus=domain=numpy")
    assert rows[f"{HERE}.test_domains_are_labelled"].flat == 3 << 20


def test_environment_variable_profiles_the_whole_run(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, pyproperf
        def hold():
            return [bytes(100_000) for _ in range(30)]
        keep = hold()
        print(os.getpid())
        """
    )
    (tmp_path / "prog.py").write_text(script)
    env = dict(
        os.environ,
        PYPROPERF_HEAP=str(tmp_path / "heap.%p.pb.gz"),
        PYPROPERF_HEAP_NFRAMES="5",
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    out = subprocess.run(
        [sys.executable, str(tmp_path / "prog.py")], env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )
    pid = int(out.stdout.strip())
    path = tmp_path / f"heap.{pid}.pb.gz"
    assert path.exists(), out.stderr
    rows = top_by_name(path, "-sample_index=inuse_space")
    # The profile is written at exit, when __main__ no longer has __file__: the
    # module name may then come from the file name ("prog") instead of "__main__".
    held = [r.flat for n, r in rows.items() if re.fullmatch(r"(__main__|prog)\.hold(\..*)?", n)]
    assert held and max(held) >= 30 * 100_000, rows
    assert "at most 5 frames" in raw(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_writes_a_profile(tmp_path: Path, session: None) -> None:
    keep = retain_bytes(10, 10_000)
    path = tmp_path / "child.pb.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded fork" (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            path.write_bytes(_heap.render("heap", 0))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert f"{HERE}.retain_bytes" in top_by_name(path, "-sample_index=inuse_space")
    del keep


# -- (file, line) -> function ---------------------------------------------------------------------

_RESMOD = '''
import functools

TABLE = [bytearray(1000) for _ in range(50)]


class Outer:
    attr = [bytearray(2000) for _ in range(3)]

    class Inner:
        def method(self):
            keep = []
            keep.append(bytearray(3000))
            return keep

    @staticmethod
    def stat():
        return bytearray(5000)


def deco(f):
    @functools.wraps(f)
    def wrapper(*a):
        return f(*a)
    return wrapper


@deco
def decorated():
    return bytearray(7000)


make = lambda: bytearray(9000)  # noqa: E731


def uses_genexpr():
    return list(bytearray(12000) for _ in range(2))
'''


def _resolve_module(tmp_path: Path, name: str) -> Any:
    (tmp_path / f"{name}.py").write_text(_RESMOD)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def _leaf_names(p: Any, module: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for stack, values, _ in stacks(p):
        if stack and stack[0].startswith(module + "."):
            out[stack[0]] = out.get(stack[0], 0) + values[3]
    return out


@pytest.mark.parametrize("how", ["pyc or compile", "compile", "live functions"])
def test_lines_resolve_to_enclosing_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    name = "_heap_resmod_" + how.split(maxsplit=1)[0]
    _heap._index.clear()
    pyproperf.start_heap_profile(8)
    try:
        mod = _resolve_module(tmp_path, name)
        keep = [mod.Outer.Inner().method(), mod.Outer.stat(), mod.decorated(), mod.make(),
                mod.uses_genexpr()]
        if how == "compile":
            monkeypatch.setattr(_heap_names, "_pyc_code", lambda path: None)
        elif how == "live functions":
            monkeypatch.setattr(_heap_names, "_module_code", lambda filename, resolver: None)
        p = load(_heap.render("heap", 0))
    finally:
        pyproperf.stop_heap_profile()
        sys.modules.pop(name, None)
        _heap._index.clear()
    leaves = _leaf_names(p, name)
    comp = "" if sys.version_info >= (3, 12) else ".<listcomp>"
    expected = {
        f"{name}.Outer.Inner.method": 3000,
        f"{name}.Outer.stat": 5000,
        f"{name}.decorated": 7000,
        f"{name}.<lambda>": 9000,
        f"{name}.uses_genexpr.<locals>.<genexpr>": 24000,
    }
    if how == "live functions":
        # Module-level code and class bodies have no live code object.
        assert f"{name}.<nosource>" in leaves
    else:
        expected[f"{name}.<listcomp>" if comp else f"{name}.<module>"] = 50_000
        expected[f"{name}.Outer{comp}"] = 6000
    for fn, at_least in expected.items():
        assert leaves.get(fn, 0) >= at_least, (fn, leaves)
    del keep


ENTRY_MODULE = '''\
import sys

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def main():
    return fib(20)

main()
'''


def test_frame_at_a_function_entry_is_named_for_the_function(tmp_path: Path) -> None:
    """A frame stopped on its ``def`` line (entry) is that function, not the module."""
    path = tmp_path / "entry_mod.py"
    path.write_text(ENTRY_MODULE)
    f = str(path)
    sites = [
        # fib at its entry (line 3), called from fib (line 4), from main, from the module
        (((f, 3), (f, 4), (f, 7), (f, 9)), False),
        # the module itself on line 3, running `def fib` (the root of the traceback)
        (((f, 3),), False),
        # fib's entry, called from main
        (((f, 3), (f, 7), (f, 9)), False),
    ]
    _heap._index.clear()
    try:
        got = _heap_names.resolve_stacks(sites, Resolver())
    finally:
        _heap._index.clear()
    names = [[got.frames[j].function.rpartition(".")[2] for j in stack] for stack in got.stacks]
    assert names == [["fib", "fib", "main", "<module>"], ["<module>"], ["fib", "main", "<module>"]]


SERVED_WHILE_OFF = '''
import io, sys, urllib.request
import pyproperf, pyproperf.http

server = pyproperf.http.serve("127.0.0.1:0")
for path in ("heap?debug=1", "allocs?debug=1", "heap"):
    with urllib.request.urlopen(server.url + path, timeout=60) as r:
        body = r.read()
        print(r.status, body.decode() if "debug" in path else len(body), flush=True)
server.stop()
print("served", flush=True)
sys.stderr.flush()
pyproperf.lookup("heap").write_to(io.BytesIO())  # a direct call still warns
'''


def test_served_heap_while_off_explains_itself_and_keeps_stderr_clean(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVED_WHILE_OFF], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=False, env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert out.returncode == 0, out.stderr
    head, _, _ = out.stdout.partition("served\n")
    assert head.count("200 ") == 3, out.stdout
    assert "tracemalloc is not tracing" in head  # the explanation is in the response
    # Nothing from the server's requests on stderr; the direct call's warning
    # (the positive control) is the only thing there.
    assert out.stderr.count("RuntimeWarning") == 1, out.stderr
    assert out.stderr.lstrip().startswith("<string>:"), out.stderr


def test_user_allocations_under_pyproperf_wrappers_are_kept(tmp_path: Path) -> None:
    """A builtin or exec'd callable run by ``labeled``/``do`` allocates for the user."""
    pyproperf.start_heap_profile()
    try:
        by_builtin = pyproperf.labeled("k", "v")(bytearray)(5_000_000)
        from_exec = eval("lambda ctx: bytearray(3_000_000)")  # its file is "<string>"
        by_exec = pyproperf.do(None, pyproperf.labels("k", "v"), from_exec)
        p = load(_heap.render("heap", 0))
    finally:
        pyproperf.stop_heap_profile()
    inuse = sum(values[3] for _, values, _ in stacks(p))
    assert inuse >= 8_000_000, inuse
    names = {name for stack, _, _ in stacks(p) for name in stack}
    assert not {n for n in names if n.startswith("pyproperf")}, names
    del by_builtin, by_exec
