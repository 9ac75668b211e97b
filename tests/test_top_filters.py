"""``top``'s filters, ``--tags`` and ``--traces`` against the real ``go tool pprof``.

Every report is compared with Go's on the same file and the same filter:
a real CPU profile of two threads under ``pyproperf.labeled`` regions, a
hand-built profile with string, multi-valued and numeric labels (units
given and guessed), the Go-style profile of test_top (inlined frames,
``drop_frames``, a binary mapping), and random profiles with random labels
and random filters.  Percentages stay relative to the whole profile, as
Go's do; stderr notes (a range read as such, a filter that matched nothing)
are Go's too.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from pyproperf import _filter, _reports, _top
from pyproperf._builder import ProfileBuilder, gzip_bytes
from tests.pprof_tool import pprof, pprof_binary
from tests.test_top import (
    CPU_TYPES,
    HASH,
    MAIN,
    PARSE,
    READ,
    SORT,
    cli,
    frame,
    go_style_profile,
    random_profile,
    write,
)

REPORTS = ("top", "tags", "traces")
FILTER_OPTIONS = ("focus", "ignore", "tagfocus", "tagignore")


def ours(path: Path, report: str, filters: _filter.Filters, index: str = "") -> str:
    profile = _top.load(str(path))
    keep = _filter.SampleFilter(profile, filters).keeps if filters != _filter.Filters() else None
    if report == "tags":
        return _reports.render_tags(profile, sample_index=index, keep=keep)
    if report == "traces":
        return _reports.render_traces(profile, sample_index=index, keep=keep)
    return _top.render(profile, sample_index=index, keep=keep, active_filters=filters.active())


def go_args(report: str, filters: _filter.Filters, index: str = "") -> list[str]:
    args = [f"-{report}"]
    args += [f"-{k}={v}" for k, v in zip(FILTER_OPTIONS, filters, strict=True) if v]
    return args + ([f"-sample_index={index}"] if index else [])


def assert_same(path: Path, report: str, filters: _filter.Filters, index: str = "") -> str:
    text = ours(path, report, filters, index)
    go = pprof(*go_args(report, filters, index), path)
    if text != go and report == "top":
        # pprof orders rows whose sort keys tie at random.
        assert sorted(text.splitlines()) == sorted(go.splitlines()), f"ours:\n{text}\ngo:\n{go}"
    else:
        assert text == go, f"{report} {filters}\nours:\n{text}\ngo:\n{go}"
    return text


# --- a real profile: two threads, labelled regions -------------------------------------

LABELED_PROGRAM = """
import sys, threading, pyproperf

def work(n):
    return sum(i * i for i in range(n))

def spin(n):
    return work(n)

with pyproperf.cpu_profile(sys.argv[1], hz=250):
    with pyproperf.labeled("endpoint", "/users"):
        worker = threading.Thread(target=spin, args=(1_200_000,), name="worker-1")
        worker.start()                       # inherits endpoint=/users
        work(700_000)
    with pyproperf.labeled(pyproperf.labels("endpoint", "/items", "tenant", "acme")):
        work(700_000)
    worker.join()
"""


@pytest.fixture(scope="module")
def labeled_cpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("labeled")
    path, program = directory / "cpu.pb.gz", directory / "labeled.py"
    program.write_text(LABELED_PROGRAM)
    subprocess.run([sys.executable, str(program), str(path)], check=True, timeout=120)
    # Positive control: the labels and both threads are there, seen by Go.
    tags = pprof("-tags", path)
    for value in ("MainThread", "worker-1", "/users", "/items", "acme"):
        assert f": {value}\n" in tags, tags
    return path


LABELED_FILTERS = [
    _filter.Filters(tagfocus="thread=MainThread"),
    _filter.Filters(tagfocus="thread=worker"),
    _filter.Filters(tagfocus="thread=^Main,^worker-1$"),  # several regexps: ORed
    _filter.Filters(tagignore="endpoint=/users"),
    _filter.Filters(tagfocus="endpoint=/items", tagignore="tenant=nobody"),
    _filter.Filters(tagfocus="acme"),  # no key: matches "key:value"
    _filter.Filters(tagfocus="thread:Main,endpoint:/items"),  # no key: every regexp must match
    _filter.Filters(focus="spin"),
    _filter.Filters(ignore="spin"),
    _filter.Filters(focus=r"work\b", ignore="threading"),
    _filter.Filters(focus="[[:upper:]]ainThread|genexpr"),  # Go's POSIX classes
    _filter.Filters(focus=r"labeled\.py$"),  # file names match too
    _filter.Filters(tagfocus="thread=nobody"),  # matches nothing
]


@pytest.mark.parametrize("report", REPORTS)
def test_labeled_cpu_profile_matches_go(labeled_cpu: Path, report: str) -> None:
    assert_same(labeled_cpu, report, _filter.Filters())
    for filters in LABELED_FILTERS:
        assert_same(labeled_cpu, report, filters)


def test_thread_focus_splits_the_profile(labeled_cpu: Path) -> None:
    """The two threads' flat totals add up to the whole: each sample is in exactly one."""
    profile = _top.load(str(labeled_cpu))
    index = _top.select_sample_index(profile, "")
    total = sum(s.value[index] for s in profile.sample)
    parts = []
    for thread in ("MainThread", "worker-1"):
        keep = _filter.SampleFilter(profile, _filter.Filters(tagfocus=f"thread=^{thread}$"))
        kept = [s for s in profile.sample if keep.keeps(s)]
        assert kept, thread
        parts.append(sum(s.value[index] for s in kept))
    assert sum(parts) == total > 0
    worker = _filter.filter_samples(profile, _filter.Filters(tagfocus="thread=worker-1"))
    st = profile.string_table
    names = {f.id: st[f.name] for f in profile.function}
    locs = {loc.id: names[loc.line[0].function_id] for loc in profile.location}
    assert all("__main__.spin" in [locs[i] for i in s.location_id] for s in worker)


# --- a hand-built profile: many labels, numeric ones -------------------------------------


def labels_profile(tmp_path: Path) -> Path:
    b = ProfileBuilder(
        CPU_TYPES, period_type=("cpu", "nanoseconds"), period=10_000_000,
        duration_nanos=3_000_000_000,
    )
    ms = 1_000_000
    b.add([PARSE, MAIN], [120, 1200 * ms],
          labels=[("thread", "MainThread"), ("endpoint", "/users"), ("region", "eu"),
                  ("region", "us")],  # two values for one key
          num_labels=[("bytes", 4096, "bytes"), ("request", 3, "")])
    b.add([HASH, PARSE, MAIN], [61, 610 * ms],
          labels=[("thread", "worker-1"), ("endpoint", "/users")],
          num_labels=[("bytes", 64 << 10, ""), ("size", 12, "")])
    b.add([SORT, MAIN], [19, 190 * ms], labels=[("thread", "worker-2"), ("tenant", "acme")],
          num_labels=[("latency", 250, "microseconds")])
    b.add([READ, SORT, MAIN], [2, 20 * ms], labels=[("thread", "worker-2")],
          num_labels=[("bytes", 3 << 20, "bytes")])
    b.add([MAIN], [1, 10 * ms])
    b.add([frame("app.cold"), MAIN], [0, 0], labels=[("thread", "ThreadPoolExecutor-0_0")])
    return write(tmp_path, "labels.pb.gz", b.to_gzip())


HAND_FILTERS = [
    _filter.Filters(tagfocus="region=us"),
    _filter.Filters(tagfocus="region=eu,asia"),
    _filter.Filters(tagfocus="thread=ThreadPoolExecutor-0_0"),  # digits, but not a range
    _filter.Filters(tagfocus="bytes=4kb"),  # numeric: equal, in the label's unit
    _filter.Filters(tagfocus="bytes=4096"),  # no unit: matches nothing, as in Go
    _filter.Filters(tagfocus="bytes=1kb:1mb"),
    _filter.Filters(tagfocus="bytes=:64kb"),
    _filter.Filters(tagignore="bytes=1mb:"),
    _filter.Filters(tagfocus="request=3"),
    _filter.Filters(tagfocus="size=10:20"),
    _filter.Filters(tagfocus="latency=100us:1ms"),
    _filter.Filters(tagfocus="64kb"),  # no key: any numeric label
    _filter.Filters(tagfocus="thread=worker", tagignore="tenant=acme", focus="app"),
    _filter.Filters(focus=r"parse\z"),
    _filter.Filters(ignore="/src/lib"),
]


@pytest.mark.parametrize("report", REPORTS)
@pytest.mark.parametrize("index", ["", "samples"])
def test_labels_and_numeric_ranges_match_go(tmp_path: Path, report: str, index: str) -> None:
    path = labels_profile(tmp_path)
    assert_same(path, report, _filter.Filters(), index)
    for filters in HAND_FILTERS:
        assert_same(path, report, filters, index)


def test_tags_table_content(tmp_path: Path) -> None:
    text = assert_same(labels_profile(tmp_path), "tags", _filter.Filters())
    lines = text.splitlines()
    assert " region: Total 2.40s of 2.03s (118.23%)" in lines  # two values: counted twice
    assert " bytes: Total 1.83s of 2.03s (90.15%)" in lines
    assert "        610ms (30.05%): 64kB" in lines  # unit guessed from the key
    assert "          1.20s (59.11%): 3B" in lines  # "request" is in bytes, as Go guesses
    assert "          190ms ( 9.36%): 250us" in lines
    assert "             0 (    0%): ThreadPoolExecutor-0_0" in lines


def test_go_style_profile_matches_go(tmp_path: Path) -> None:
    """Inlined frames, drop_frames and a binary mapping: focus sees the file and mapping too."""
    path = go_style_profile(tmp_path)
    for report in REPORTS:
        for filters in [_filter.Filters(), _filter.Filters(focus="strings"),
                        _filter.Filters(ignore="libc"), _filter.Filters(focus="x.go"),
                        _filter.Filters(focus="mcall"), _filter.Filters(ignore="handle")]:
            assert_same(path, report, filters)


# --- random profiles, random labels, random filters --------------------------------------

KEYS = ["thread", "endpoint", "bytes", "k"]
VALUES = ["MainThread", "worker-1", "/users", "a,b", "x y", "", "Thread-10"]
UNITS = ["", "bytes", "nanoseconds", "count"]
RANDOM_FILTERS = [
    "", "thread=Main", "thread=worker,Main", "thread=.", "endpoint=/u", "k=x", "bytes=1kb:",
    "bytes=:100", "thread:worker", "5", "10:20", "k=^$", "endpoint=users,x y", "1:",
]


def with_random_labels(rng: random.Random, path: Path) -> None:
    p = random_profile(rng)
    st = list(p.string_table)

    def s(text: str) -> int:
        if text not in st:
            st.append(text)
        return st.index(text)

    for sample in p.sample:
        if rng.random() < 0.8:
            sample.label.add(key=s("thread"), str=s(rng.choice(VALUES[:2])))
        for _ in range(rng.choice([0, 1, 2, 3])):
            key = rng.choice(KEYS)
            if rng.random() < 0.6:
                sample.label.add(key=s(key), str=s(rng.choice(VALUES)))
            else:
                sample.label.add(key=s(key), num=rng.choice([0, 5, 12, 100, 2048, 1 << 20]),
                                 num_unit=s(rng.choice(UNITS)))
    del p.string_table[:]
    p.string_table.extend(st)
    path.write_bytes(gzip_bytes(p.SerializeToString()))


@pytest.mark.parametrize("chunk", range(2))
def test_random_profiles_with_filters_match_go(tmp_path: Path, chunk: int) -> None:
    shown = 0  # reports where the filters left something: the comparison is not vacuous
    for seed in range(chunk * 40, chunk * 40 + 40):
        rng = random.Random(seed)
        path = tmp_path / f"{seed}.pb.gz"
        with_random_labels(rng, path)
        filters = _filter.Filters(
            focus=rng.choice(["", "", "", "", "f", "f1", "main|app", "f[0-3]", "prog"]),
            ignore=rng.choice(["", "", "", "", "", "f2", "x.so"]),
            tagfocus=rng.choice(["", "", "", "", *RANDOM_FILTERS]),
            tagignore=rng.choice(["", "", "", "", "", "", *RANDOM_FILTERS[:7]]),
        )
        report = REPORTS[seed % 3]
        go = subprocess.run(
            [*pprof_binary().split(" "), *go_args(report, filters), str(path)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        try:
            text = ours(path, report, filters)
        except ValueError as exc:
            assert go.returncode != 0, (seed, exc, go.stdout)
            continue
        assert go.returncode == 0, (seed, go.stderr)
        if text != go.stdout:
            assert report == "top" and sorted(text.splitlines()) == sorted(
                go.stdout.splitlines()
            ), f"seed {seed} {report} {filters}\nours:\n{text}\ngo:\n{go.stdout}"
        shown += bool(
            text.partition("cum%\n")[2] if report == "top"
            else text.strip() if report == "tags"
            else text.count("-----------+") > 1
        )
    assert shown >= 10, shown


# --- the command ---------------------------------------------------------------------------


def test_cli_output_and_notes_match_go(tmp_path: Path) -> None:
    path = labels_profile(tmp_path)
    cases = [
        (["--tagfocus", "bytes=1kb:"], ["-top", "-tagfocus=bytes=1kb:"]),
        (["--tags", "--tagfocus", "thread=nobody"], ["-tags", "-tagfocus=thread=nobody"]),
        (["--traces", "--focus", "nothing", "--ignore", "nope"],
         ["-traces", "-focus=nothing", "-ignore=nope"]),
        (["--tagignore", "region=us", "-n", "1", "--cum"],
         ["-top", "-tagignore=region=us", "-nodecount=1", "-cum"]),
    ]
    for args, go_options in cases:
        out = cli("top", *args, str(path))
        go = subprocess.run([*pprof_binary().split(" "), *go_options, str(path)],
                            capture_output=True, text=True, timeout=120, check=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout == go.stdout, args
        assert out.stderr == go.stderr, args
        assert out.stdout.strip() or "matched no samples" in out.stderr, args


def test_cli_bad_filters_are_one_line_errors(tmp_path: Path) -> None:
    path = labels_profile(tmp_path)
    out = cli("top", "--focus", "(", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"pyproperf top: {path}: parsing focus regexp: ")
    assert len(out.stderr.splitlines()) == 1
    assert "parsing focus regexp" in pprof("-top", "-focus=(", path, check=False)
    out = cli("top", "--tagfocus", "thread=[", str(path))
    assert out.returncode == 2 and "parsing tagfocus regexp" in out.stderr
    out = cli("top", "--tags", "--traces", str(path))
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    # Positive control: the same file and options without the bad part work.
    assert cli("top", "--focus", "app", str(path)).returncode == 0


def test_active_filters_legend_is_pprofs() -> None:
    assert _filter.Filters().active() == []
    long = "x" * 100
    assert _filter.Filters(focus="a", tagignore=long).active() == [
        "Active filters:", "   focus=a", "   tagignore=" + "x" * 70 + "…",
    ]
