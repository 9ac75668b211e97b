"""``pytest --pprof``: real pytest (``pytester``) runs tests; ``go tool pprof`` reads the result.

Each inner test burns a known amount of CPU and records what it measured
itself (``time.thread_time()`` around the work); the profile's per-test
totals (``go tool pprof -tags``) and the summary's ranking are held
against that.  Runs happen in-process (``runpytest``) where they can, so
``conftest``'s checks also see that the plugin leaves no timer, thread or
label behind; runs that must start a fresh interpreter (what a plain
``pytest`` imports, xdist workers) go through ``runpytest_subprocess``.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from pyproperf._pytest_plugin import file_name, tag_regexp
from tests.pprof_tool import check_valid, load, pprof, tag_seconds, tags, top_by_name

pytest_plugins = ["pytester"]

# The inner tests: each records (node id, CPU seconds it measured) in truth.jsonl.
WORK = '''
import json
import threading
import time

import pyproperf


def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def burn(request, seconds):
    t0 = time.thread_time()
    spin(seconds)
    record(request.node.nodeid, time.thread_time() - t0)


def record(nodeid, used):
    with open("truth.jsonl", "a") as f:
        f.write(json.dumps([nodeid, used]) + "\\n")


def test_heavy(request):
    burn(request, HEAVY)


def test_light(request):
    burn(request, LIGHT)


def in_thread(nodeid):
    t0 = time.thread_time()
    spin(THREAD)
    record(nodeid, time.thread_time() - t0)


def test_thread(request):
    worker = threading.Thread(target=in_thread, args=(request.node.nodeid,), name="burner")
    worker.start()
    worker.join()


def test_labeled(request):
    with pyproperf.labeled("phase", "inner"):
        burn(request, LABELED)
'''

SECONDS = {"HEAVY": 0.45, "LIGHT": 0.1, "THREAD": 0.25, "LABELED": 0.15}


def make_tests(pytester: pytest.Pytester, **seconds: float) -> None:
    values = {**SECONDS, **seconds}
    header = "".join(f"{k} = {v}\n" for k, v in values.items())
    pytester.makepyfile(test_work=header + WORK)


def truth(pytester: pytest.Pytester) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (pytester.path / "truth.jsonl").read_text().splitlines():
        nodeid, used = json.loads(line)
        out[nodeid] = out.get(nodeid, 0.0) + used
    return out


def summary(lines: list[str]) -> tuple[list[str], list[tuple[float, str]]]:
    """The lines of the pyproperf section, and its ranking: [(seconds, node id)]."""
    start = next(i for i, line in enumerate(lines) if re.match(r"-+ pyproperf -+$", line))
    section = lines[start + 1 :]
    ranked = []
    for line in section:
        m = re.match(r"\s+([\d.]+) s  (\S+)$", line)
        if m:
            ranked.append((float(m.group(1)), m.group(2)))
    return section, ranked


def near(measured: float, expected: float) -> bool:
    """Within sampling error: one period at each end, and 20 %."""
    return abs(measured - expected) <= 0.03 + 0.2 * expected


def test_session_profile_labels_every_sample_of_a_test_with_it(pytester: pytest.Pytester) -> None:
    make_tests(pytester)
    result = pytester.runpytest("-p", "no:randomly", "--pprof", "session.pb.gz")
    result.assert_outcomes(passed=4)
    profile = pytester.path / "session.pb.gz"
    check_valid(load(profile))
    measured = truth(pytester)
    seen = tag_seconds(profile, "test")
    assert set(seen) == set(measured), (seen, measured)
    for nodeid, used in measured.items():
        assert near(seen[nodeid], used), (nodeid, seen[nodeid], used)

    # The summary ranks the tests by the profile's CPU, heaviest first.
    section, ranked = summary(result.outlines)
    assert section[0].startswith("cpu profile of the session: session.pb.gz"), section
    assert [nodeid for _, nodeid in ranked] == sorted(measured, key=lambda n: -measured[n])
    assert ranked[0][1] == "test_work.py::test_heavy"
    for seconds, nodeid in ranked:
        assert abs(seconds - seen[nodeid]) <= 0.011, (seconds, seen[nodeid])

    # One test's samples: its own function, not the others'.
    heavy = top_by_name(profile, "-tagfocus=test=test_heavy$")
    assert heavy["test_work.spin"].flat == pytest.approx(measured["test_work.py::test_heavy"],
                                                         abs=0.03 + 0.2 * SECONDS["HEAVY"])
    assert "test_work.in_thread" not in heavy
    # A thread the test started carries the test's label (inheritance).
    threaded = top_by_name(profile, "-tagfocus=test=test_thread$")
    assert near(threaded["test_work.in_thread"].cum, measured["test_work.py::test_thread"])
    assert "burner" in tag_seconds(profile, "thread", "-tagfocus=test=test_thread$")
    # A labelled region inside a test adds its label to the test's.
    inner = tag_seconds(profile, "test", "-tagfocus=phase=inner")
    assert list(inner) == ["test_work.py::test_labeled"], inner
    assert near(inner["test_work.py::test_labeled"], measured["test_work.py::test_labeled"])


def test_the_summary_says_how_go_tool_pprof_picks_one_test(pytester: pytest.Pytester) -> None:
    """Node ids hold regexp syntax, quotes and commas (pprof splits -tagfocus at commas)."""
    ids = ["a b", "it's", "[x]-1.5", "1,2", "1", "é"]
    pytester.makepyfile(
        test_ids=f"""
        import time, pytest

        @pytest.mark.parametrize("x", {ids!r})
        def test_p(x):
            end = time.thread_time() + (0.25 if x == "1,2" else 0.03)
            while time.thread_time() < end:
                pass
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--pprof", "it's.pb.gz")
    result.assert_outcomes(passed=len(ids))
    profile = pytester.path / "it's.pb.gz"
    nodeids = list(tag_seconds(profile, "test"))  # as pytest made them ("\\xe9" for "é")
    assert len(nodeids) == len(ids) and "test_ids.py::test_p[\\xe9]" in nodeids, nodeids
    for nodeid in nodeids:
        picked = tag_seconds(profile, "test", f"-tagfocus=test={tag_regexp(nodeid)}")
        assert list(picked) == [nodeid], (nodeid, picked)
    # The summary's command, run as a shell would split it, shows the slowest test alone.
    section, ranked = summary(result.outlines)
    assert ranked[0][1] == "test_ids.py::test_p[1,2]"
    command = next(line for line in section if line.startswith("one test: go tool pprof "))
    args = shlex.split(command.removeprefix("one test: go tool pprof "))
    assert args[-2:] == ["-top", "it's.pb.gz"]
    focused = tag_seconds(profile, "test", *args[:-2])
    assert list(focused) == ["test_ids.py::test_p[1,2]"], focused


def test_per_test_files_and_the_wall_clock(pytester: pytest.Pytester) -> None:
    """--pprof-dir alone: one file per test; --pprof-clock wall ranks a sleeping test first."""
    make_tests(pytester, HEAVY=0.2, THREAD=0.05, LABELED=0.05)
    pytester.makepyfile(test_sleep="import time\n\ndef test_sleeps():\n    time.sleep(0.6)\n")
    result = pytester.runpytest(
        "-p", "no:randomly", "--pprof-dir", "per-test", "--pprof-clock", "wall",
        "--pprof-hz", "200",
    )
    result.assert_outcomes(passed=5)
    directory = pytester.path / "per-test"
    nodeids = [*truth(pytester), "test_sleep.py::test_sleeps"]
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted(file_name(n) for n in nodeids)
    for nodeid in nodeids:
        path = directory / file_name(nodeid)
        check_valid(load(path))
        assert "PeriodType: wall nanoseconds\nPeriod: 5000000\n" in pprof("-raw", path)
        assert list(tag_seconds(path, "test")) == [nodeid]  # only its own test
    sleeper = tag_seconds(directory / file_name("test_sleep.py::test_sleeps"), "test")
    assert 0.55 <= sleeper["test_sleep.py::test_sleeps"] <= 0.9
    section, ranked = summary(result.outlines)
    assert not any(line.startswith("cpu profile") for line in section)
    assert section[0] == f"per-test profiles: 5 files in {directory}"
    # By wall time, the test that sleeps is the slowest: by CPU it would be last.
    assert ranked[0][1] == "test_sleep.py::test_sleeps", ranked
    assert "slowest tests by wall" in "\n".join(section)


def test_xdist_workers_profiles_are_merged(pytester: pytest.Pytester) -> None:
    make_tests(pytester)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-n", "2", "--pprof", "merged.pb.gz", "--pprof-dir", "each",
        timeout=120,
    )
    result.assert_outcomes(passed=4)
    profile = pytester.path / "merged.pb.gz"
    check_valid(load(profile))
    measured = truth(pytester)
    seen = tag_seconds(profile, "test")
    assert set(seen) == set(measured)
    for nodeid, used in measured.items():
        assert near(seen[nodeid], used), (nodeid, seen[nodeid], used)
    workers = tag_seconds(profile, "worker")
    assert set(workers) == {"gw0", "gw1"}, workers  # both workers' samples are in
    # Every sample is a worker's, collection too (the controller samples nothing).
    assert re.search(r"^ worker: Total (\S+) of \1 \(  100%\)$", tags(profile), re.M), tags(profile)
    section, ranked = summary(result.outlines)
    assert "2 workers merged" in section[0], section
    assert ranked[0][1] == "test_work.py::test_heavy"
    assert len(list((pytester.path / "each").iterdir())) == 4
    assert "per-test profiles: 4 files in" in "\n".join(section)


def test_a_crashed_workers_profile_is_reported_lost(pytester: pytest.Pytester) -> None:
    """One worker: it runs test_a, dies in test_crash; xdist starts another for test_d."""
    pytester.makepyfile(
        test_crash="""
        import os, time

        def spin(seconds):
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass

        def test_a():
            spin(0.1)

        def test_crash():
            os._exit(1)

        def test_d():
            spin(0.1)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-n", "1", "--pprof", "c.pb.gz", timeout=120
    )
    result.assert_outcomes(passed=2, failed=1)
    section, ranked = summary(result.outlines)
    assert "1 worker merged" in section[0], section
    assert "pyproperf: no profile from worker(s) gw0 (crashed or stopped): their samples are " \
        "missing" in section, section
    # What the lost worker ran is missing; what the new one ran is there.
    assert list(tag_seconds(pytester.path / "c.pb.gz", "test")) == ["test_crash.py::test_d"]
    assert [nodeid for _, nodeid in ranked] == ["test_crash.py::test_d"]


def test_without_the_options_nothing_runs(pytester: pytest.Pytester) -> None:
    """The entry point only adds options: no profiler, timer, handler or thread of ours."""
    pytester.makepyfile(
        test_probe="""
        import json, os, signal, sys

        def test_probe():
            facts = {
                "options": "pyproperf._pytest_options" in sys.modules,
                "plugin": "pyproperf._pytest_plugin" in sys.modules,
                "handler": signal.getsignal(signal.SIGPROF) is not signal.SIG_DFL,
                # setitimer's, or a POSIX timer (the sampler's per-thread CPU timers)
                "timer": signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0)
                or "ID:" in open("/proc/self/timers").read(),
                "threads": len(os.listdir("/proc/self/task")),
            }
            with open("probe.json", "w") as f:
                json.dump(facts, f)
        """
    )
    plain = pytester.runpytest_subprocess("-p", "no:randomly")
    plain.assert_outcomes(passed=1)
    facts = json.loads((pytester.path / "probe.json").read_text())
    assert facts == {"options": True, "plugin": False, "handler": False, "timer": False,
                     "threads": 1}, facts
    assert not re.search(r"-+ pyproperf -+", plain.stdout.str())  # no summary either
    # Positive control: with --pprof the same probe sees the profiler at work.
    profiled = pytester.runpytest_subprocess("-p", "no:randomly", "--pprof", "p.pb.gz")
    profiled.assert_outcomes(passed=1)
    facts = json.loads((pytester.path / "probe.json").read_text())
    assert facts["plugin"] and facts["handler"] and facts["timer"], facts
    assert facts["threads"] > 1, facts  # the sampler's helper thread
    # And -p no:pyproperf turns the plugin off by the entry point's name.
    off = pytester.runpytest_subprocess("-p", "no:pyproperf", "--pprof", "p.pb.gz")
    assert off.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --pprof" in off.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pprof", "p.pb.gz", "--pprof-hz", "0"],
         "ERROR: --pprof-hz must be between 1 and 10000, not 0"),
        (["--pprof-dir", "d", "--pprof-hz", "10001"],
         "ERROR: --pprof-hz must be between 1 and 10000, not 10001"),
        (["--pprof-hz", "50"], "ERROR: --pprof-hz needs --pprof FILE or --pprof-dir DIR"),
        (["--pprof-clock", "wall"], "ERROR: --pprof-clock needs --pprof FILE or --pprof-dir DIR"),
        (["--pprof", "no/such/dir/p.pb.gz"], "ERROR: --pprof: directory does not exist: /"),
        (["--pprof", "."], "ERROR: --pprof is a directory: ."),
        (["--pprof-dir", "a_file"], "ERROR: --pprof-dir: a_file exists and is not a directory"),
        (["--pprof-clock", "cpus", "--pprof", "p.pb.gz"],
         "error: argument --pprof-clock: invalid choice: 'cpus'"),
    ],
)
def test_bad_options_are_one_line_before_any_test_runs(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_one="def test_one():\n    open('ran', 'w').close()\n")
    (pytester.path / "a_file").write_text("")
    result = pytester.runpytest("-p", "no:randomly", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert any(message in line for line in errors), errors
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "ran").exists() and not (pytester.path / "p.pb.gz").exists()
    # Positive control: the same file runs, and is profiled, with good options.
    good = pytester.runpytest("-p", "no:randomly", "--pprof", "p.pb.gz")
    good.assert_outcomes(passed=1)
    assert (pytester.path / "ran").exists() and (pytester.path / "p.pb.gz").exists()


def test_a_profile_that_cannot_be_written_is_reported_not_raised(
    pytester: pytest.Pytester,
) -> None:
    out = pytester.path / "out"
    out.mkdir()
    pytester.makepyfile(
        test_rm=f"""
        import shutil

        def test_removes_the_directory():
            shutil.rmtree({str(out)!r})
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "--pprof", "out/p.pb.gz")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    text = result.stdout.str()
    assert "pyproperf: could not write out/p.pb.gz: No such file or directory" in text
    assert "Traceback" not in text + result.stderr.str()
    assert not out.exists()


def test_file_names_are_safe_distinct_and_stable() -> None:
    a, b = file_name("tests/a.py::test[x/y]"), file_name("tests/a.py::test[x_y]")
    assert a != b
    assert a.startswith("tests_a.py_test_x_y-") and a.endswith(".pb.gz")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", a)
    assert file_name("t.py::test[" + "é" * 500 + "]") == file_name("t.py::test[" + "é" * 500 + "]")
    assert len(file_name("t.py::test[" + "x" * 500 + "]")) <= 120 + 15
    assert file_name("../../etc/passwd")[0] not in "./"

