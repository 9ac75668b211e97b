"""``python -m pyproperf top`` against the real ``go tool pprof -top``.

Every report is compared line for line with Go's on the same file: hand
built profiles (CPU, heap-like with four sample types, inline frames,
nameless functions, drop_frames) and a few hundred random ones.  Bad files
must give one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pyproperf import _top
from pyproperf._builder import Frame, ProfileBuilder, gzip_bytes
from pyproperf._pb import profile_pb2 as pb
from tests.pprof_tool import pprof, pprof_binary

CPU_TYPES = [("samples", "count"), ("cpu", "nanoseconds")]
HEAP_TYPES = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
]


def frame(name: str, line: int = 1) -> Frame:
    return Frame(name, f"/src/{name.partition('.')[0]}.py", 1, line)


MAIN, PARSE, HASH, SORT, READ = (
    frame("app.main"), frame("app.parse", 20), frame("app.hash", 30), frame("lib.sort", 40),
    frame("io.read", 50),
)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproperf", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def assert_same_as_go(path: Path, *, nodecount: int = 0, cum: bool = False, index: str = "") -> str:
    """Our report equals ``go tool pprof -top`` (rows with equal sort keys may be swapped)."""
    args = []
    if nodecount:
        args.append(f"-nodecount={nodecount}")
    if cum:
        args.append("-cum")
    if index:
        args.append(f"-sample_index={index}")
    go = pprof("-top", *args, path)
    ours = _top.render(_top.load(str(path)), nodecount=nodecount, cum=cum, sample_index=index)
    if ours != go:
        # pprof orders rows whose sort keys tie (equal values, equal names) at random.
        assert sorted(ours.splitlines()) == sorted(go.splitlines()), f"ours:\n{ours}\ngo:\n{go}"
    return ours


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- hand-built profiles ---------------------------------------------------------


def cpu_profile(tmp_path: Path) -> Path:
    b = ProfileBuilder(
        CPU_TYPES, period_type=("cpu", "nanoseconds"), period=10_000_000,
        duration_nanos=3_000_000_000, comments=["made by a test", "# hidden comment"],
    )
    ms = 1_000_000
    b.add([PARSE, MAIN], [120, 1200 * ms], labels=[("thread", "MainThread")])
    b.add([HASH, PARSE, MAIN], [61, 610 * ms])
    b.add([SORT, MAIN], [19, 190 * ms])
    b.add([READ, SORT, MAIN], [2, 20 * ms])
    b.add([MAIN], [1, 10 * ms])
    b.add([frame("tiny.leaf"), MAIN], [1, 3 * ms])  # below pprof's 0.5 % cut
    return write(tmp_path, "cpu.pb.gz", b.to_gzip())


def test_cpu_profile_matches_go(tmp_path: Path) -> None:
    path = cpu_profile(tmp_path)
    text = assert_same_as_go(path)
    lines = text.splitlines()
    assert "made by a test" in lines and "# hidden comment" not in lines
    assert "Type: cpu" in lines
    assert lines[-6].split() == ["flat", "flat%", "sum%", "cum", "cum%"]
    assert "Dropped 1 node (cum <= 0.01s)" in lines  # tiny.leaf: 3ms < 0.5 % of 2.03s
    assert lines[-5].split() == ["1.20s", "59.03%", "59.03%", "1.81s", "89.03%", "app.parse"]
    assert "Duration: 3s, Total samples = 2.03s (67.77%)" in lines


@pytest.mark.parametrize("cum", [False, True])
@pytest.mark.parametrize("nodecount", [0, 1, 3])
@pytest.mark.parametrize("index", ["", "samples", "0", "1"])
def test_cpu_options_match_go(tmp_path: Path, cum: bool, nodecount: int, index: str) -> None:
    assert_same_as_go(cpu_profile(tmp_path), nodecount=nodecount, cum=cum, index=index)


def test_cum_orders_by_cumulative_value(tmp_path: Path) -> None:
    text = assert_same_as_go(cpu_profile(tmp_path), cum=True)
    names = [line.split()[-1] for line in text.splitlines()[-5:]]
    assert names == ["app.main", "app.parse", "app.hash", "lib.sort", "io.read"]


def heap_profile(tmp_path: Path, default: str = "") -> Path:
    b = ProfileBuilder(
        HEAP_TYPES, period_type=("space", "bytes"), period=524288, default_sample_type=default
    )
    b.add([PARSE, MAIN], [10, 10 * 4096, 2, 2 * 4096], num_labels=[("bytes", 4096, "")])
    b.add([HASH, MAIN], [5000, 5000 * 64, 4000, 4000 * 64], num_labels=[("bytes", 64, "")])
    b.add([SORT, MAIN], [3, 3 * 3 << 20, 1, 3 << 20], num_labels=[("bytes", 3 << 20, "")])
    b.add([READ, MAIN], [70, 70 * 512, 0, 0], num_labels=[("bytes", 512, "")])
    return write(tmp_path, f"heap{default}.pb.gz", b.to_gzip())


@pytest.mark.parametrize(
    "index", ["", "alloc_objects", "alloc_space", "inuse_objects", "inuse_space", "2"]
)
def test_heap_sample_index_matches_go(tmp_path: Path, index: str) -> None:
    text = assert_same_as_go(heap_profile(tmp_path), index=index)
    expected = {"": "inuse_space", "2": "inuse_objects"}.get(index, index)
    assert f"Type: {expected}" in text.splitlines()


def test_default_sample_type_is_honoured(tmp_path: Path) -> None:
    text = assert_same_as_go(heap_profile(tmp_path, default="alloc_space"))
    assert "Type: alloc_space" in text.splitlines()
    assert "9603.50kB total" in text  # bytes scaled as pprof does (unit of the smallest row)


def test_bad_sample_index_is_pprof_error(tmp_path: Path) -> None:
    path = heap_profile(tmp_path)
    out = cli("top", str(path), "--sample-index", "nope")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"pyproperf top: {path}: sample_index \"nope\" must be one of: "
        "[alloc_objects alloc_space inuse_objects inuse_space]"
    ]
    go = pprof("-top", "-sample_index=nope", path, check=False)
    assert 'sample_index "nope" must be one of: [alloc_objects alloc_space' in go
    out = cli("top", str(path), "--sample-index", "4")
    assert out.returncode == 2 and "outside the range [0..3]" in out.stderr


def go_style_profile(tmp_path: Path) -> Path:
    """What a Go program's profile looks like: a binary mapping, inlined frames, odd names."""
    p = pb.Profile()
    st = [""]

    def s(text: str) -> int:
        if text not in st:
            st.append(text)
        return st.index(text)

    p.sample_type.add(type=s("samples"), unit=s("count"))
    p.sample_type.add(type=s("cpu"), unit=s("nanoseconds"))
    p.period_type.type, p.period_type.unit, p.period = s("cpu"), s("nanoseconds"), 10_000_000
    p.mapping.add(id=1, filename=s("/usr/local/bin/server"), build_id=s("abc123"),
                  has_functions=True, has_filenames=True, has_line_numbers=True)
    p.mapping.add(id=2, filename=s("/lib/x86_64-linux-gnu/libc.so.6"))
    names = ["main.main", "main.handle", "strings.Index", "sync.(*Mutex).Lock",
             "std::vector<int>::push_back(int)", "<module>", "", "runtime.mcall"]
    for i, name in enumerate(names, 1):
        p.function.add(
            id=i, name=s(name), system_name=s(name), filename=s("/src/x.go"), start_line=i
        )
    # location 2 holds strings.Index inlined into main.handle
    for lid, fids, mid in [(1, [1], 1), (2, [3, 2], 1), (3, [4], 1), (4, [5], 1), (5, [6], 1),
                           (6, [7], 1), (7, [], 2), (8, [8], 1), (9, [2], 1)]:
        loc = p.location.add(id=lid, mapping_id=mid, address=0x1000 + lid)
        for fid in fids:
            loc.line.add(function_id=fid, line=10 + fid)
    for ids, n in [([2, 1], 50), ([3, 9, 1], 30), ([4, 1], 20), ([5, 1], 7), ([6, 1], 6),
                   ([7, 1], 5), ([8, 3, 2, 1], 4), ([9, 1], 3)]:
        p.sample.add(location_id=ids, value=[n, n * 10_000_000])
    p.drop_frames = s("runtime\\.mcall")
    p.time_nanos = 1_700_000_000_123_456_789
    p.duration_nanos = 2_000_000_000
    p.string_table.extend(st)
    return write(tmp_path, "go.pb", p.SerializeToString())  # not gzipped: also accepted


@pytest.mark.parametrize("cum", [False, True])
def test_go_style_profile_matches_go(tmp_path: Path, cum: bool) -> None:
    text = assert_same_as_go(go_style_profile(tmp_path), cum=cum)
    lines = text.splitlines()
    assert lines[:2] == ["File: server", "Build ID: abc123"]
    assert any(line.endswith("  strings.Index (inline)") for line in lines)
    assert any(line.endswith("  main.handle") for line in lines)
    assert any(line.endswith("  std::vector::push_back") for line in lines)  # pprof's clean-up
    assert any(line.endswith("  [libc.so.6]") for line in lines)  # a location without lines
    assert not any("runtime.mcall" in line for line in lines)  # drop_frames


# --- random profiles ---------------------------------------------------------------

UNITS = ["nanoseconds", "count", "bytes", "microseconds", "seconds", "requests", "", "kilobytes"]
NAMES = ["main.main", "app.parse", "<module>", "mod.<module>", "std::map<K,V>::find",
         "foo(int)", "sync.(*Mutex).Lock", "pkg.(*T[...]).M", "", "a.b.<locals>.<lambda>"]


def random_profile(rng: random.Random) -> pb.Profile:
    st = [""]

    def s(text: str) -> int:
        if text not in st:
            st.append(text)
        return st.index(text)

    p = pb.Profile()
    ntypes = rng.randint(1, 4)
    for i in range(ntypes):
        p.sample_type.add(type=s(f"t{i}"), unit=s(rng.choice(UNITS)))
    if rng.random() < 0.3:
        p.default_sample_type = s(f"t{rng.randint(0, ntypes)}")
    nmaps = rng.randint(0, 2)
    for i in range(nmaps):
        p.mapping.add(id=i + 1, filename=s(rng.choice(["", "/usr/bin/prog", "/lib/x.so"])),
                      has_functions=rng.random() < 0.8)
    nfuncs = rng.randint(1, 12)
    for i in range(nfuncs):
        name = rng.choice(NAMES) if rng.random() < 0.5 else f"f{rng.randint(0, 6)}"
        system = name if rng.random() < 0.7 else rng.choice(NAMES)
        p.function.add(id=i + 1, name=s(name), system_name=s(system), start_line=rng.randint(0, 3))
    nlocs = rng.randint(1, 20)
    for i in range(nlocs):
        loc = p.location.add(id=i + 1, mapping_id=rng.randint(0, nmaps + 1))
        for _ in range(rng.choice([0, 1, 1, 1, 1, 2, 3])):
            loc.line.add(function_id=rng.randint(1, nfuncs), line=rng.randint(1, 50))
    for _ in range(rng.randint(0, 60)):
        sample = p.sample.add(location_id=[rng.randint(1, nlocs) for _ in range(rng.randint(0, 8))])
        for _ in range(ntypes):
            r = rng.random()
            big = rng.choice([rng.randint(1, 100), rng.randint(1, 10**10), rng.randint(1, 10**13)])
            sample.value.append(0 if r < 0.1 else -rng.randint(1, 10**6) if r < 0.15 else big)
    if rng.random() < 0.2:
        p.drop_frames = s(rng.choice(["f1", "f2|f3", "app\\..*", "f[0-3]"]))
        if rng.random() < 0.5:
            p.keep_frames = s("f2")
    if rng.random() < 0.5:
        p.time_nanos = rng.randint(1, 2 * 10**18)
    if rng.random() < 0.5:
        p.duration_nanos = rng.randint(1, 10**11)
    p.string_table.extend(st)
    return p


@pytest.mark.parametrize("chunk", range(4))
def test_random_profiles_match_go(tmp_path: Path, chunk: int) -> None:
    for seed in range(chunk * 60, chunk * 60 + 60):
        rng = random.Random(seed)
        path = write(tmp_path, f"{seed}.pb.gz", gzip_bytes(random_profile(rng).SerializeToString()))
        nodecount = rng.choice([0, 0, 1, 3])
        cum = rng.random() < 0.3
        index = rng.choice(["", "0", "t1"]) if rng.random() < 0.5 else ""
        go = subprocess.run(
            [*pprof_binary().split(" "), "-top", *(["-cum"] if cum else []),
             f"-nodecount={nodecount}", *([f"-sample_index={index}"] if index else []), path],
            capture_output=True, text=True, timeout=120, check=False,
        )
        try:
            profile = _top.load(str(path))
            ours = _top.render(profile, nodecount=nodecount, cum=cum, sample_index=index)
        except ValueError as exc:
            assert go.returncode != 0, (seed, exc, go.stdout)
            continue
        assert go.returncode == 0, (seed, go.stderr)
        go_text = go.stdout
        if ours != go_text:
            assert sorted(ours.splitlines()) == sorted(go_text.splitlines()), (
                f"seed {seed}\n{ours}\n{go_text}"
            )


# --- units -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0, "nanoseconds", "0"),
        (10_000_000, "nanoseconds", "10ms"),
        (1_500_000_000, "nanoseconds", "1.50s"),
        (7200 * 10**9, "nanoseconds", "2hrs"),
        (1536, "bytes", "1.50kB"),
        (3 << 20, "bytes", "3MB"),
        (12, "count", "12"),
        (5, "requests", "5"),
        (-2048, "bytes", "-2kB"),
        (250, "microseconds", "250us"),
    ],
)
def test_scaled_label_as_pprof(value: int, unit: str, text: str) -> None:
    assert _top.scaled_label(value, unit) == text


def test_unknown_units_are_printed_after_the_value() -> None:
    assert _top.scaled_label(5, "requests", "requests") == "5requests"
    assert _top.scaled_label(5, "count", "count") == "5"


def test_percentage_as_pprof() -> None:
    assert _top.percentage(1, 1) == "  100%"
    assert _top.percentage(1, 3) == "33.33%"
    assert _top.percentage(1, 200) == "  0.5%"
    assert _top.percentage(1, 1_000_000) == "0.0001%"
    assert _top.percentage(1, 10**8) == "1e-06%"
    assert _top.percentage(5, 0) == "    0%"


def test_shown_names_follow_pprof_demangle_heuristics() -> None:
    assert _top.shown_name("<module>", "<module>") == ""
    assert _top.shown_name("app.<module>", "app.<module>") == "app.<module>"
    assert _top.shown_name("f", "<module>") == "f"  # already demangled
    assert _top.shown_name("", "std::f(int)") == "std::f"
    assert _top.shown_name("sync.(*Mutex).Lock", "sync.(*Mutex).Lock") == "sync.(*Mutex).Lock"


# --- the command ------------------------------------------------------------------


def test_cli_prints_the_table(tmp_path: Path) -> None:
    path = cpu_profile(tmp_path)
    out = cli("top", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", path)
    assert out.stderr == ""
    out = cli("top", str(path), "-n", "2", "--cum")
    assert out.returncode == 0
    assert out.stdout == pprof("-top", "-nodecount=2", "-cum", path)
    assert "Showing top 2 nodes out of 5" in out.stdout


def test_empty_profile_is_valid(tmp_path: Path) -> None:
    b = ProfileBuilder(CPU_TYPES, period_type=("cpu", "nanoseconds"), period=10_000_000,
                       duration_nanos=10**9)
    path = write(tmp_path, "empty.pb.gz", b.to_gzip())
    out = cli("top", str(path))
    assert out.returncode == 0
    assert out.stdout == pprof("-top", path)
    assert "Total samples = 0 \n" in out.stdout  # pprof's trailing space


def bad_files(tmp_path: Path) -> dict[str, Path]:
    good = cpu_profile(tmp_path).read_bytes()
    raw = gzip.decompress(good)
    concatenated = gzip_bytes(raw + raw)
    mismatch = pb.Profile.FromString(raw)
    mismatch.sample[0].value.append(1)
    nil_location = pb.Profile.FromString(raw)
    nil_location.sample[0].location_id.append(999)
    bad_index = pb.Profile.FromString(raw)
    bad_index.sample_type[0].unit = 10_000
    no_types = pb.Profile.FromString(raw)
    del no_types.sample_type[:]
    del no_types.sample[:]
    files = {
        "truncated gzip": good[: len(good) // 2],
        "gzip header only": good[:10],
        "truncated proto": raw[: len(raw) - 7],
        "random bytes": random.Random(1).randbytes(4096),
        "empty file": b"",
        "text file": b"this is not a profile\nat all\n",
        "go debug=1 text": b"heap profile: 1: 2 [3: 4] @ heap/1048576\n",
        "concatenated profiles": concatenated,
        "value count mismatch": mismatch.SerializeToString(),
        "unknown location": nil_location.SerializeToString(),
        "string index out of range": bad_index.SerializeToString(),
        "no sample types": no_types.SerializeToString(),
    }
    return {name: write(tmp_path, name.replace(" ", "_"), data) for name, data in files.items()}


def test_bad_files_give_one_line_and_status_2(tmp_path: Path) -> None:
    for name, path in bad_files(tmp_path).items():
        out = cli("top", str(path))
        assert out.returncode == 2, (name, out)
        assert out.stdout == "", name
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pyproperf top: {path}: "), (name, lines)
        assert "Traceback" not in out.stderr
        # Go refuses them too (the debug=1 heap text aside: pprof reads legacy formats).
        if name != "go debug=1 text":
            assert "flat%" not in pprof("-top", path, check=False), name


def test_missing_file_and_directory(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.pb.gz", tmp_path):
        out = cli("top", str(path))
        assert out.returncode == 2
        assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["top"], ["top", "x", "-n", "-1"], ["top", "x", "-n", "many"], ["bogus"], []):
        out = cli(*args)
        assert out.returncode == 2, args
        assert "usage:" in out.stderr


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    path = cpu_profile(tmp_path)
    proc = subprocess.run(
        f"{sys.executable} -m pyproperf top {path} | head -1",
        shell=True, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
