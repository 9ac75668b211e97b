"""``pytest --pprof FILE`` / ``--pprof-dir DIR``: CPU profiles of a test session, by test.

``_pytest_options`` (the entry-point module: the options only) calls
``activate`` when one of the options is given; nothing here runs otherwise.

What a test is: its whole ``pytest_runtest_protocol`` (setup, call and
teardown, and the reporting hooks between them), as pytest runs it.
Every sample taken while it runs carries the label ``test=<node id>``,
and so do threads, tasks and executor jobs the test starts (label
inheritance), also after the test ended.  Collection and the session's
own start and end carry no ``test`` label.

The label is a region (``_labels._region``'s one way in) registered on
the frame that runs the hook's implementations: a hook wrapper is a
generator, suspended while the test runs, so its own frame is not on the
test's stack, but its caller is (pluggy's ``_multicall``) until the
wrapper resumes.  At each test's start and end the test thread's CPU so
far is charged (``engine.settle_current_thread``), so the CPU of one test
is not put on the next.

Under pytest-xdist each worker samples its own tests and hands its
profile (bytes, in xdist's ``workeroutput``) to the controller, which
samples nothing and merges them (``_builder.merge_profiles``) into FILE,
every sample of a worker labelled ``worker=<gwN>``.  Per-test files are
written by the workers themselves.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shlex
import sys
from collections.abc import Generator
from types import FrameType
from typing import Any, NamedTuple

import pytest

from pyproperf import _builder, _io
from pyproperf._labels import labels
from pyproperf._labels._region import _enter, _leave
from pyproperf._sampler import MAX_HZ, Collector, engine

__all__ = ["activate", "file_name", "tag_regexp", "totals_by_test"]

_PLUGIN_NAME = "pyproperf-profiler"
_SLOWEST = 5  # tests named in the summary
# xdist's workeroutput keys (the controller reads what the workers wrote).
_OUT_PROFILE = "pyproperf_profile"
_OUT_TESTS = "pyproperf_tests"
_OUT_FILES = "pyproperf_files"
_IN_DIR = "pyproperf_dir"


class _Options(NamedTuple):
    path: str | None  # --pprof, absolute
    shown: str  # --pprof as given, for messages
    directory: str | None  # --pprof-dir, absolute
    hz: int
    clock: str


def activate(config: pytest.Config) -> None:
    """Check the options (a ``pytest.UsageError`` says what is wrong) and register the profiler."""
    options = _options(config)
    config.pluginmanager.register(_Profiler(config, options), _PLUGIN_NAME)


def _options(config: pytest.Config) -> _Options:
    hz = config.getoption("pprof_hz")
    hz = 100 if hz is None else hz
    if not 1 <= hz <= MAX_HZ:
        raise pytest.UsageError(f"--pprof-hz must be between 1 and {MAX_HZ}, not {hz}")
    clock = config.getoption("pprof_clock") or "cpu"
    given = config.getoption("pprof")
    worker = getattr(config, "workerinput", None)
    path = None
    if given is not None and worker is None:  # a worker writes no file: its controller does
        try:
            path = _io.check_path(given, "--pprof")
        except (OSError, ValueError, TypeError) as exc:
            raise pytest.UsageError(_one_line(exc)) from None
    elif given is not None:
        path = given
    directory = config.getoption("pprof_dir")
    if worker is not None and directory is not None:
        directory = worker.get(_IN_DIR, directory)  # absolute, from the controller
    elif directory is not None:
        directory = _make_directory(directory)
    return _Options(path, given or "", directory, hz, clock)


def _make_directory(given: str) -> str:
    path = os.path.abspath(given)
    try:
        os.makedirs(path, exist_ok=True)
        _io.check_path(os.path.join(path, "probe.pb.gz"), "--pprof-dir")
    except FileExistsError:
        raise pytest.UsageError(f"--pprof-dir: {given} exists and is not a directory") from None
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--pprof-dir: {_one_line(exc)}") from None
    return path


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def file_name(nodeid: str) -> str:
    """The ``--pprof-dir`` file of a test: its node id made safe, and a hash of it.

    Only ``[A-Za-z0-9._-]`` are kept (runs of anything else become ``_``),
    cut to 120 characters; the hash keeps apart ids that differ only in
    what was replaced or cut.  The same test gets the same name every run.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_.")[:120] or "test"
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}-{digest}.pb.gz"


def totals_by_test(data: bytes) -> dict[str, int]:
    """Nanoseconds (CPU, or wall) of each ``test`` label value in the encoded profile ``data``."""
    p = _builder.decode(data)
    st = p.string_table
    index = next((i for i, t in enumerate(p.sample_type) if st[t.unit] == "nanoseconds"), None)
    if index is None:
        return {}
    out: dict[str, int] = {}
    for s in p.sample:
        for lab in s.label:
            if st[lab.key] == "test" and lab.str:
                name = st[lab.str]
                out[name] = out.get(name, 0) + s.value[index]
                break
    return out


def tag_regexp(value: str) -> str:
    """An RE2 pattern for ``go tool pprof -tagfocus key=...`` that matches ``value`` only.

    pprof splits the option at commas, so those are written ``\\x2c``.
    """
    return "^" + re.escape(value).replace(",", r"\x2c") + "$"


class _Profiler:
    """The hooks of an active ``--pprof`` / ``--pprof-dir`` run (registered by ``activate``)."""

    def __init__(self, config: pytest.Config, options: _Options) -> None:
        self.config = config
        self.options = options
        self.worker: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.controller = False  # xdist: the workers run the tests
        self.session: Collector | None = None
        self.totals: dict[str, int] = {}  # node id -> nanoseconds (summary)
        self.profile = b""  # the session's, for the summary
        self.samples = 0
        self.seconds = 0.0  # the profile's duration
        self.nanos = 0  # the profile's total cpu or wall
        self.workers: list[tuple[str, bytes]] = []  # controller: (gwN, its profile)
        self.lost: list[str] = []  # controller: workers that sent none
        self.per_test_files = 0
        self.errors: list[str] = []

    # -- the session -----------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.controller = self.config.pluginmanager.has_plugin("dsession")
        if self.controller or self.options.path is None:
            return
        self.session = Collector(self.options.hz, self.options.clock)
        engine.add(self.session)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        collector, self.session = self.session, None
        if collector is not None:
            engine.remove(collector)
            built = collector.build_counted()
            self.profile = built.data
            self.samples, self.nanos = built.samples, built.nanos
            self.seconds = built.duration_ns / 1e9
        if self.worker is not None:
            out: dict[str, Any] = self.config.workeroutput  # type: ignore[attr-defined]
            if self.profile:
                out[_OUT_PROFILE] = self.profile
            out[_OUT_TESTS] = self.totals
            out[_OUT_FILES] = self.per_test_files
            return
        if self.controller and self.workers:
            try:
                self.profile = _builder.merge_profiles(
                    [data for _, data in self.workers],
                    labels=[[("worker", name)] for name, _ in self.workers],
                )
            except ValueError as exc:
                self.errors.append(f"could not merge the workers' profiles: {exc}")
            else:
                self._count(self.profile)
        if self.options.path is not None and self.profile:
            try:
                _io.write_file(self.options.path, self.profile)
            except OSError as exc:
                self.errors.append(f"could not write {self.options.shown}: {_one_line(exc)}")
        if self.profile:
            self.totals = totals_by_test(self.profile)
        if self.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _count(self, data: bytes) -> None:
        p = _builder.decode(data)
        index = next(
            (i for i, t in enumerate(p.sample_type) if p.string_table[t.unit] == "nanoseconds"), 1
        )
        self.samples = sum(s.value[0] for s in p.sample)
        self.nanos = sum(s.value[index] for s in p.sample)
        self.seconds = p.duration_nanos / 1e9

    # -- each test ---------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        frame = _hook_frame(sys._getframe(1))
        ls = labels("test", item.nodeid)
        engine.settle_current_thread()  # what ran before the test is not the test's
        collector = None
        if self.options.directory is not None:
            collector = Collector(self.options.hz, self.options.clock)
            engine.add(collector)
        entry = _enter(ls, frame)
        try:
            return (yield)
        finally:
            try:
                engine.settle_current_thread()  # the test's last CPU is the test's
                if collector is not None:
                    engine.remove(collector)
            finally:
                _leave(entry)
            # Outside the test's label: encoding the file is the profiler's work, not the
            # test's (on 3.10 the first one after imports takes ~0.1 s: _stacks' qualnames).
            if collector is not None:
                self._write_test(item.nodeid, collector.build())

    def _write_test(self, nodeid: str, data: bytes) -> None:
        directory = self.options.directory
        assert directory is not None
        try:
            _io.write_file(os.path.join(directory, file_name(nodeid)), data)
        except OSError as exc:
            self.errors.append(f"could not write the profile of {nodeid}: {_one_line(exc)}")
            return
        self.per_test_files += 1
        if self.options.path is None:  # no session profile to count from
            self.totals[nodeid] = totals_by_test(data).get(nodeid, 0)

    # -- xdist (the controller) -------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.options.directory is not None:
            node.workerinput[_IN_DIR] = self.options.directory

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        out = getattr(node, "workeroutput", None) or {}
        name = str(getattr(getattr(node, "gateway", None), "id", "?"))
        data = out.get(_OUT_PROFILE)
        if isinstance(data, bytes):
            self.workers.append((name, data))
        elif self.options.path is not None:
            self.lost.append(name)
        self.per_test_files += int(out.get(_OUT_FILES, 0))
        tests = out.get(_OUT_TESTS)
        if isinstance(tests, dict) and self.options.path is None:
            self.totals.update(tests)

    # -- the summary -----------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.write_sep("-", "pyproperf")
        for error in self.errors:
            tr.write_line(f"pyproperf: {error}", red=True)
        unit = self.options.clock
        if self.options.path is not None and self.profile and not self.errors:
            n = len(self.workers)
            merged = f", {n} worker{'' if n == 1 else 's'} merged" if self.controller else ""
            tr.write_line(
                f"{unit} profile of the session: {self.options.shown} ({self.seconds:.2f} s, "
                f"{self.samples} samples, {self.nanos / 1e9:.2f} s {unit}{merged})"
            )
        if self.lost:
            tr.write_line(
                f"pyproperf: no profile from worker(s) {', '.join(self.lost)} "
                "(crashed or stopped): their samples are missing", yellow=True,
            )
        if self.options.directory is not None:
            tr.write_line(
                f"per-test profiles: {self.per_test_files} files in {self.options.directory}"
            )
        ranked = sorted(self.totals.items(), key=lambda kv: (-kv[1], kv[0]))[:_SLOWEST]
        if ranked:
            in_tests = sum(self.totals.values()) / 1e9
            tr.write_line(
                f"slowest tests by {unit} ({in_tests:.2f} s {unit} in "
                f"{len(self.totals)} tests):"
            )
            for nodeid, nanos in ranked:
                tr.write_line(f"  {nanos / 1e9:8.2f} s  {nodeid}")
        if self.options.path is not None and self.profile and ranked:
            shown = shlex.quote(self.options.shown)
            focus = shlex.quote(f"-tagfocus=test={tag_regexp(ranked[0][0])}")
            tr.write_line(f"per test: go tool pprof -tags {shown}")
            tr.write_line(f"one test: go tool pprof {focus} -top {shown}")


def _hook_frame(caller: FrameType) -> FrameType:
    """The frame that stays on the stack while the hook's other implementations run.

    A wrapper's caller is pluggy's ``_multicall``, which goes on to call
    them; should a future pluggy drive wrappers from a generator of its own,
    the first plain function frame below it is.
    """
    frame: FrameType | None = caller
    while frame is not None and frame.f_code.co_flags & inspect.CO_GENERATOR:
        frame = frame.f_back
    return frame if frame is not None else caller
