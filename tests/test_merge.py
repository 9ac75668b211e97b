"""``python -m pyproperf merge`` and ``_merge``: Go's profile.Merge, read back by go tool pprof.

The truth is the inputs themselves, as ``go tool pprof`` reads them: the
merged file must hold each input's functions with the same values, added
up where they meet, and the comments of both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyproperf
from pyproperf import _merge
from tests.pprof_tool import check_valid, load, pprof, tag_seconds, top_by_name


def alpha(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def beta(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def merge(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproperf", "merge", *map(str, args)], cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("merge")
    with pyproperf.cpu_profile(d / "a.pb.gz"):
        alpha(0.2)
    with pyproperf.cpu_profile(d / "b.pb.gz"):
        beta(0.1)
        alpha(0.1)
    return d / "a.pb.gz", d / "b.pb.gz"


def cum(path: Path, name: str) -> float:
    rows = top_by_name(path)
    return rows[name].cum if name in rows else 0.0


def test_merge_adds_up_what_each_input_holds(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    a, b = inputs
    out = merge(a, b, "-o", "m.pb.gz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    m = tmp_path / "m.pb.gz"
    check_valid(load(m))
    name_a, name_b = f"{__name__}.alpha", f"{__name__}.beta"
    assert cum(a, name_a) > 0.1 and cum(b, name_b) > 0.05  # the inputs hold the work
    assert cum(m, name_a) == pytest.approx(cum(a, name_a) + cum(b, name_a), abs=0.0002)
    assert cum(m, name_b) == pytest.approx(cum(b, name_b), abs=0.0002)
    pa, pb, pm = load(a), load(b), load(m)
    assert pm.duration_nanos == pa.duration_nanos + pb.duration_nanos
    assert pm.time_nanos == min(pa.time_nanos, pb.time_nanos)
    comments = [pm.string_table[c] for c in pm.comment]
    assert comments == [pa.string_table[c] for c in pa.comment]  # the same comment, once
    assert "pyproperf cpu profile" in pprof("-raw", m)
    # The same file twice: every value doubles.
    out = merge(a, a, "-o", "aa.pb.gz", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert cum(tmp_path / "aa.pb.gz", name_a) == pytest.approx(2 * cum(a, name_a), abs=0.0002)


def test_mismatched_types_are_one_line_and_exit_2(tmp_path: Path,
                                                 inputs: tuple[Path, Path]) -> None:
    goroutines = tmp_path / "g.pb.gz"
    pyproperf.lookup("goroutine").write_to(str(goroutines))  # type: ignore[union-attr]
    assert "goroutine" in pprof("-raw", goroutines)  # a real profile, of another type
    out = merge(inputs[0], goroutines, "-o", "m.pb.gz", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("pyproperf merge: cannot merge profiles of different types: ")
    assert "samples/count cpu/nanoseconds" in out.stderr and "goroutine/count" in out.stderr
    assert not (tmp_path / "m.pb.gz").exists()


@pytest.mark.parametrize("case", ["missing", "not a profile", "output is a directory"])
def test_bad_files_are_one_line_and_exit_2(tmp_path: Path, inputs: tuple[Path, Path],
                                           case: str) -> None:
    output = "m.pb.gz"
    if case == "missing":
        second, expected = tmp_path / "nope.pb.gz", "nope.pb.gz: No such file or directory"
    elif case == "not a profile":
        second = tmp_path / "junk.pb.gz"
        second.write_bytes(b"\x1f\x8bnot gzip at all")
        expected = "junk.pb.gz: decompressing profile"
    else:
        (tmp_path / "outdir").mkdir()
        second, output, expected = inputs[1], "outdir", "is a directory"
    out = merge(inputs[0], second, "-o", output, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert not (tmp_path / "m.pb.gz").exists()


def test_merge_processes_labels_every_sample(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = inputs
    data = _merge.merge_processes([
        _merge.ProcessProfile(a.read_bytes(), 101, "web"),
        _merge.ProcessProfile(b.read_bytes(), 202, "worker"),
    ])
    m = tmp_path / "m.pb.gz"
    m.write_bytes(data)
    by_pid = tag_seconds(m, "pid")
    total_a = sum(s.value[1] for s in load(a).sample) / 1e9
    total_b = sum(s.value[1] for s in load(b).sample) / 1e9
    assert by_pid == pytest.approx({"101": total_a, "202": total_b}, abs=0.0002)
    assert set(tag_seconds(m, "process")) == {"web", "worker"}
    # -tagfocus splits them: beta ran in 202 only.
    assert cum(m, f"{__name__}.beta") > 0
    focused = pprof("-top", "-tagfocus", "pid=101", m)
    assert f"{__name__}.beta" not in focused and f"{__name__}.alpha" in focused
    with pytest.raises(ValueError, match="no profiles to merge"):
        _merge.merge_processes([])
