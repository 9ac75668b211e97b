"""The profile.proto encoder: pprof's invariants, Go's header bytes, real pprof reads it."""

from __future__ import annotations

import gzip
import sys
import types
from pathlib import Path

from pyproperf._builder import Frame, ProfileBuilder
from pyproperf._stacks import Resolver, stack_key
from tests.pprof_tool import check_valid, load, pprof, raw, tags, top_by_name, traces

A = Frame("app.handlers.handle", "/srv/app/handlers.py", 10, 14, 5)
B = Frame("app.main.<module>", "/srv/app/main.py", 1, 30)
C = Frame("app.db.query.<locals>.<lambda>", "/srv/app/db.py", 40, 41, 9)


def build() -> ProfileBuilder:
    b = ProfileBuilder(
        [("samples", "count"), ("cpu", "nanoseconds")],
        period_type=("cpu", "nanoseconds"),
        period=10_000_000,
        time_nanos=1_700_000_000_000_000_000,
        duration_nanos=2_000_000_000,
        comments=["made by a test"],
    )
    b.add([A, B], [3, 30_000_000], [("endpoint", "/users"), ("empty", "")])
    b.add([C, A, B], [1, 10_000_000], [("endpoint", "/orders")], [("bytes", 512, "bytes")])
    return b


def test_interning_ids_and_string_table() -> None:
    p = load(build().to_gzip())
    check_valid(p)
    st = list(p.string_table)
    assert st[0] == "" and len(st) == len(set(st))
    assert [loc.id for loc in p.location] == [1, 2, 3]  # A and B shared by both samples
    assert [f.id for f in p.function] == [1, 2, 3]
    assert all(loc.mapping_id == 1 for loc in p.location)
    (m,) = p.mapping
    assert m.id == 1 and m.has_functions and m.has_filenames and m.has_line_numbers
    assert all(st[f.name] == st[f.system_name] for f in p.function)
    assert [list(s.location_id) for s in p.sample] == [[1, 2], [3, 1, 2]]
    # The empty-string label is dropped, as pprof would drop it.
    assert [st[lab.key] for lab in p.sample[0].label] == ["endpoint"]
    assert p.location[0].line[0].column == 5


def test_go_gzip_header() -> None:
    data = build().to_gzip()
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
    assert gzip.decompress(data) == build().to_bytes()


def test_real_pprof_reads_everything(tmp_path: Path) -> None:
    path = tmp_path / "p.pb.gz"
    path.write_bytes(build().to_gzip())
    rows = top_by_name(path)
    assert rows["app.handlers.handle"].flat == 0.03 and rows["app.handlers.handle"].cum == 0.04
    assert rows["app.db.query.<locals>.<lambda>"].flat == 0.01
    assert rows["app.main.<module>"].cum == 0.04
    text = raw(path)
    assert "app.handlers.handle /srv/app/handlers.py:14:5 s=10" in text
    assert "made by a test" in text
    t = traces(path)
    assert t[0]["stack"] == ["app.handlers.handle", "app.main.<module>"]
    assert t[0]["labels"] == {"endpoint": "/users"}
    assert "/orders" in tags(path)
    assert "bytes" in tags(path)
    assert "Main binary filename not available" not in pprof("-top", path, check=False)


def test_empty_profile_is_valid(tmp_path: Path) -> None:
    b = ProfileBuilder([("goroutine", "count")], period_type=("goroutine", "count"), period=1)
    path = tmp_path / "empty.pb.gz"
    path.write_bytes(b.to_gzip())
    check_valid(load(path))
    assert "Type: goroutine" in pprof("-top", path)


def test_value_count_is_checked() -> None:
    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")])
    try:
        b.add([A], [1])
    except ValueError as exc:
        assert "1 values for 2 sample types" in str(exc)
    else:
        raise AssertionError("a sample with a missing value was accepted")


def test_resolver_names_like_pprof_wants(tmp_path: Path) -> None:
    mod = types.ModuleType("pkg_for_test.mod")
    src = tmp_path / "mod.py"
    src.write_text(
        "import sys\n"
        "class K:\n"
        "    def meth(self):\n"
        "        return (lambda: sys._getframe())()\n"
        "def top(cb):\n"
        "    return cb(sys._getframe())\n"
    )
    mod.__file__ = str(src)
    exec(compile(src.read_text(), str(src), "exec"), mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        r = Resolver()
        inner = r.stack(stack_key(mod.K().meth()))
        assert inner[0].function == "pkg_for_test.mod.K.meth.<locals>.<lambda>"
        assert inner[0].filename == str(src) and inner[0].line == 4 and inner[0].start_line == 4
        assert inner[1].function == "pkg_for_test.mod.K.meth"
        top = r.stack(mod.top(stack_key))[0]
        assert (top.function, top.start_line, top.line) == ("pkg_for_test.mod.top", 5, 6)
        if sys.version_info >= (3, 11):
            assert top.column == 12
    finally:
        del sys.modules[mod.__name__]


def test_generated_module_is_current() -> None:
    from tests.tools import regen_pb

    assert regen_pb.MODULE.read_text() == regen_pb.render(), (
        "pyproperf/_pb/profile_pb2.py is stale: run python -m tests.tools.regen_pb"
    )


def test_locations_have_distinct_stable_addresses() -> None:
    """Readers that key locations by address (Alloy's deltas, -addresses) tell them apart."""
    p = load(build().to_gzip())
    addresses = [loc.address for loc in p.location]
    assert all(addresses) and len(set(addresses)) == len(addresses)
    assert all(a < p.mapping[0].memory_limit for a in addresses)
    assert addresses == [loc.address for loc in load(build().to_gzip()).location]


def test_qualname_scan_survives_hostile_globals() -> None:
    """Module globals whose attribute access raises (werkzeug's LocalProxy) are skipped."""
    from pyproperf import _stacks

    class Hostile:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError("working outside of application context")

    mod = types.ModuleType("hostile_globals_for_test")
    mod.proxy = Hostile()  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    try:
        names = _stacks._collect_qualnames()
        assert names[test_qualname_scan_survives_hostile_globals.__code__].endswith(
            "test_qualname_scan_survives_hostile_globals"
        )
    finally:
        del sys.modules[mod.__name__]


def test_main_module_named_after_file_is_gone(tmp_path: Path) -> None:
    """At exit Python deletes __main__.__file__; the script's functions keep their name."""
    import subprocess

    script = tmp_path / "prog.py"
    script.write_text(
        "import atexit, sys\n"
        "from pyproperf._stacks import Resolver\n"
        "def hold():\n"
        "    pass\n"
        "def report():\n"
        "    print(Resolver().function(hold.__code__)[0])\n"
        "atexit.register(report)\n"
        "del sys.modules['__main__'].__file__\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "__main__.hold"
