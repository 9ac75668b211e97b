"""``convert``: folded stacks and speedscope JSON, read back by speedscope's own importer.

The reader is speedscope's npm package (``tests/.node``, installed by
``.ci/run``), run by node through ``tests/js/read_speedscope.mjs``: it
detects the format as the app does and builds its profiles; we compare its
per-frame self and total weights with ``go tool pprof -top`` (flat and cum,
exact values, no node dropped) on the same file, per thread with
``-tagfocus thread=^NAME$``.  A missing node or speedscope fails the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyproperf import _convert, _filter, _top
from pyproperf._builder import ProfileBuilder
from tests.pprof_tool import pprof
from tests.test_top import CPU_TYPES, HEAP_TYPES, MAIN, PARSE, READ, SORT, cli, frame, write
from tests.test_top_filters import LABELED_PROGRAM, labeled_cpu  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
SPEEDSCOPE = Path(
    os.environ.get("PYPROPERF_SPEEDSCOPE_DIR")
    or ROOT / "tests/.node/node_modules/speedscope/dist/release"
)
READER = ROOT / "tests/js/read_speedscope.mjs"
UNIT_OPTION = {"nanoseconds": "-unit=ns", "bytes": "-unit=b", "count": "-unit=count"}


def speedscope_read(path: Path) -> dict[str, Any]:
    """What speedscope imports from ``path``: its profiles, with frames and weights."""
    assert SPEEDSCOPE.is_dir(), (
        f"speedscope's npm package is missing ({SPEEDSCOPE}): run "
        "`npm install --prefix tests/.node speedscope@1.25.0` (bash .ci/run does)"
    )
    out = subprocess.run(
        ["node", str(READER), str(SPEEDSCOPE), str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def go_flat_cum(path: Path, *options: str, unit: str = "nanoseconds") -> dict[str, tuple[int, int]]:
    """Flat and cum per function, exact, from ``go tool pprof -top`` with no node dropped.

    Rows of one name (nameless functions of one binary) add up, as the
    reader's frames of one name do; inline marks are not part of the name.
    """
    text = pprof("-top", "-nodefraction=0", UNIT_OPTION[unit], *options, path)
    rows: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(-?\d+)(?:ns|B)?\s+\S+%\s+\S+%\s+(-?\d+)(?:ns|B)?\s+\S+%\s+(.*)$", line)
        if m:
            name = re.sub(r" \((partial-)?inline\)$", "", m.group(3))
            flat, cum = rows.get(name, (0, 0))
            rows[name] = (flat + int(m.group(1)), cum + int(m.group(2)))
    return rows


def reader_flat_cum(profiles: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """The reader's self and total per frame name, over ``profiles``."""
    out: dict[str, tuple[int, int]] = {}
    for p in profiles:
        for f in p["frames"]:
            flat, cum = out.get(f["name"], (0, 0))
            out[f["name"]] = (flat + round(f["self"]), cum + round(f["total"]))
    return {name: v for name, v in out.items() if v != (0, 0)}


def convert(path: Path, fmt: str, tmp_path: Path, *args: str) -> Path:
    out = tmp_path / f"{path.name}.{fmt}.{'json' if fmt == 'speedscope' else 'txt'}"
    done = cli("convert", str(path), "--format", fmt, "-o", str(out), *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    return out


# --- a real profile: two threads --------------------------------------------------------


def test_speedscope_has_one_profile_per_thread(labeled_cpu: Path, tmp_path: Path) -> None:  # noqa: F811
    out = convert(labeled_cpu, "speedscope", tmp_path)
    doc = json.loads(out.read_text())
    assert doc["$schema"] == _convert.SPEEDSCOPE_SCHEMA
    read = speedscope_read(out)
    assert read["name"] == "cpu.pb.gz (cpu)"
    by_thread = {p["name"]: p for p in read["profiles"]}
    assert sorted(by_thread) == ["MainThread", "worker-1"]
    for thread, p in by_thread.items():
        assert p["unit"] == "nanoseconds"
        go = go_flat_cum(labeled_cpu, f"-tagfocus=thread=^{thread}$")
        assert reader_flat_cum([p]) == go, thread
        assert p["total"] == sum(flat for flat, _cum in go.values()) > 0
    assert "__main__.spin" in reader_flat_cum([by_thread["worker-1"]])
    assert "__main__.spin" not in reader_flat_cum([by_thread["MainThread"]])
    # All threads together: pprof's whole profile.
    assert reader_flat_cum(read["profiles"]) == go_flat_cum(labeled_cpu)
    frames = {f["name"]: f for p in read["profiles"] for f in p["frames"]}
    assert frames["__main__.work"]["file"].endswith("labeled.py")
    assert frames["__main__.work"]["line"] == 4  # the def line


def test_collapsed_read_by_speedscope(labeled_cpu: Path, tmp_path: Path) -> None:  # noqa: F811
    out = convert(labeled_cpu, "collapsed", tmp_path)
    lines = out.read_text().splitlines()
    assert lines == sorted(lines) and len(lines) == len(set(lines))
    assert all(re.fullmatch(r"[^ ].* \d+", line) for line in lines), lines
    read = speedscope_read(out)
    assert len(read["profiles"]) == 1
    assert reader_flat_cum(read["profiles"]) == go_flat_cum(labeled_cpu)
    # Our own reading of the folded lines agrees too (the leaf is the last frame).
    flat: dict[str, int] = {}
    for line in lines:
        stack, value = line.rsplit(" ", 1)
        leaf = stack.split(";")[-1]
        flat[leaf] = flat.get(leaf, 0) + int(value)
    assert flat == {k: v[0] for k, v in go_flat_cum(labeled_cpu).items() if v[0]}


def test_collapsed_tagroot_puts_threads_at_the_root(
    labeled_cpu: Path, tmp_path: Path  # noqa: F811
) -> None:
    out = convert(labeled_cpu, "collapsed", tmp_path, "--tagroot", "thread")
    roots = {line.split(";", 1)[0] for line in out.read_text().splitlines()}
    assert roots == {"MainThread", "worker-1"}
    read = reader_flat_cum(speedscope_read(out)["profiles"])
    for thread in ("MainThread", "worker-1"):
        go = go_flat_cum(labeled_cpu, f"-tagfocus=thread=^{thread}$")
        assert read[thread] == (0, sum(flat for flat, _cum in go.values()))


def test_filters_apply_to_convert(labeled_cpu: Path, tmp_path: Path) -> None:  # noqa: F811
    out = convert(labeled_cpu, "speedscope", tmp_path, "--tagfocus", "endpoint=/items")
    read = speedscope_read(out)
    assert [p["name"] for p in read["profiles"]] == ["MainThread"]
    assert reader_flat_cum(read["profiles"]) == go_flat_cum(
        labeled_cpu, "-tagfocus=endpoint=/items"
    )


# --- hand-built profiles: heap units, inlined frames, odd names ----------------------------


def heap_profile(tmp_path: Path) -> Path:
    b = ProfileBuilder(HEAP_TYPES, period_type=("space", "bytes"), period=524288)
    b.add([PARSE, MAIN], [10, 40960, 2, 8192], labels=[("thread", "MainThread")])
    b.add([SORT, MAIN], [3, 3 << 20, 1, 1 << 20], labels=[("thread", "worker;1")])
    b.add([READ, SORT, MAIN], [70, 35840, 0, 0], labels=[("thread", "worker;1")])
    b.add([frame("odd;name"), MAIN], [1, 100, 1, 100])  # no thread label
    b.add([frame("neg.diff"), MAIN], [1, -50, 1, -50])  # negative: not written
    return write(tmp_path, "heap.pb.gz", b.to_gzip())


@pytest.mark.parametrize("index", ["alloc_space", "inuse_space"])
def test_heap_speedscope_in_bytes(tmp_path: Path, index: str) -> None:
    path = heap_profile(tmp_path)
    out = convert(path, "speedscope", tmp_path, "--sample-index", index)
    read = speedscope_read(out)
    names = [p["name"] for p in read["profiles"]]
    assert sorted(names) == sorted(["MainThread", "worker;1", "(no thread label)"]), names
    assert {p["unit"] for p in read["profiles"]} == {"bytes"}
    # pprof counts the negative sample; speedscope holds weights only.
    go = go_flat_cum(path, f"-sample_index={index}", "-ignore=neg.diff", unit="bytes")
    assert reader_flat_cum(read["profiles"]) == go
    worker = next(p for p in read["profiles"] if p["name"] == "worker;1")
    assert reader_flat_cum([worker]) == go_flat_cum(
        path, f"-sample_index={index}", "-tagfocus=thread=worker;1", unit="bytes"
    )


def test_collapsed_names_cannot_break_lines(tmp_path: Path) -> None:
    path = heap_profile(tmp_path)
    out = convert(path, "collapsed", tmp_path, "--sample-index", "alloc_objects")
    text = out.read_text()
    assert "app.main;odd:name 1\n" in text  # ';' in a name would split the frame
    assert "neg.diff" in text  # positive in alloc_objects
    read = reader_flat_cum(speedscope_read(out)["profiles"])
    go = go_flat_cum(path, "-sample_index=alloc_objects", unit="count")
    assert read == {k.replace(";", ":"): v for k, v in go.items()}
    out = convert(path, "collapsed", tmp_path, "--sample-index", "alloc_space")
    assert "neg.diff" not in out.read_text()


def test_inlined_frames_and_drop_frames(tmp_path: Path) -> None:
    from tests.test_top import go_style_profile

    path = go_style_profile(tmp_path)
    for fmt in _convert.FORMATS:
        out = convert(path, fmt, tmp_path)
        read = speedscope_read(out)
        assert reader_flat_cum(read["profiles"]) == go_flat_cum(path), fmt
        assert "runtime.mcall" not in out.read_text()


def test_library_functions_match_the_command(labeled_cpu: Path, tmp_path: Path) -> None:  # noqa: F811
    profile = _top.load(str(labeled_cpu))
    keep = _filter.SampleFilter(profile, _filter.Filters(tagfocus="thread=worker")).keeps
    text = _convert.collapsed(profile, keep=keep)
    assert text == convert(
        labeled_cpu, "collapsed", tmp_path, "--tagfocus", "thread=worker"
    ).read_text()
    assert text and all("threading.Thread" in line for line in text.splitlines())


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    good = heap_profile(tmp_path)
    bad = write(tmp_path, "bad.pb.gz", b"not a profile")
    out = cli("convert", str(bad), "--format", "collapsed")
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith(f"pyproperf convert: {bad}: ")
    out = cli("convert", str(good), "--format", "svg")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = cli("convert", str(good), "--format", "speedscope", "--sample-index", "nope")
    assert out.returncode == 2 and "must be one of" in out.stderr
    out = cli("convert", str(good), "--format", "speedscope", "--tagroot", "thread")
    assert out.returncode == 2 and "--tagroot is for the collapsed format" in out.stderr
    target = tmp_path / "out.json"
    target.write_text("old")
    out = cli("convert", str(bad), "--format", "speedscope", "-o", str(target))
    assert out.returncode == 2 and target.read_text() == "old"  # nothing half-written
    out = cli("convert", str(good), "--format", "speedscope", "-o", str(tmp_path / "no/such/x"))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    # Positive control: the good file converts to stdout.
    out = cli("convert", str(good), "--format", "collapsed")
    assert out.returncode == 0 and "app.main;app.parse" in out.stdout


def test_empty_profile_converts_to_empty_outputs(tmp_path: Path) -> None:
    b = ProfileBuilder(CPU_TYPES, period_type=("cpu", "nanoseconds"), period=10_000_000)
    path = write(tmp_path, "empty.pb.gz", b.to_gzip())
    assert convert(path, "collapsed", tmp_path).read_text() == ""  # speedscope reads no ""
    out = convert(path, "speedscope", tmp_path)
    doc = json.loads(out.read_text())
    assert doc["profiles"] == [] and doc["shared"]["frames"] == []
    assert speedscope_read(out) == {"name": "empty.pb.gz (cpu)", "profiles": []}
