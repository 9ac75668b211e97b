"""``python -m pyproperf run``: run a program as ``python script.py`` would, profiled.

The program gets what ``python script.py`` / ``python -m module`` give it:
``sys.argv`` (``argv[0]`` the script as typed, or the module's file), a
fresh ``__main__`` module that stays in ``sys.modules`` after it ends,
``sys.path[0]`` the script's directory (or the working directory for
``-m``), and its exit status: ``SystemExit`` as Python handles it, an
uncaught exception printed through ``sys.excepthook`` with status 1, and
Ctrl-C (``KeyboardInterrupt``) ending the process by SIGINT, as Python 3.8+
does.  As at interpreter exit (through the same ``threading._shutdown``),
threading's exit hooks run and non-daemon threads are waited for before
the profile is closed; Ctrl-C during that wait is reported and ignored.

The CPU profile is collected as a ``cpu_profile`` section's is, not in
``start_cpu_profile``'s slot, so the program itself (and
``/debug/pprof/profile`` under ``--http``) can still call
``start_cpu_profile``.  Launcher frames never enter a profile
(``_stacks.set_launcher_files``), and the summaries printed at the end
come from what was encoded, without reading the files back.  Files are
written whole (``_io.write_file``), also when the program raises or is
interrupted.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import io
import os
import runpy
import shlex
import signal
import sys
import threading
import time
import traceback
import tracemalloc
import types
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, cast

from pyproperf import _heap, _io, _own, _stacks
from pyproperf._sampler import Built, Collector, engine

__all__ = ["Options", "UsageError", "check_output_path", "run"]


class UsageError(Exception):
    """A bad option found only when acting on it (``--http`` address in use, …)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"argument {option}: {problem}")


@dataclass(frozen=True)
class Options:
    """What ``run`` was asked for."""

    output: str
    hz: int = 100
    clock: str = "cpu"
    heap: str | None = None
    http: str | None = None
    subprocesses: bool = False  # follow child processes and merge (``_subprocesses``)
    html: bool = False  # also write the HTML report next to the profile (``_view``)


def check_output_path(path: str) -> str:
    """Why ``path`` cannot receive a profile ("" if it can), checked before the program runs."""
    try:
        _io.check_path(path, repr(path))
    except OSError as exc:
        if exc.strerror is None:
            return str(exc)
        where = exc.filename if exc.filename not in (None, path) else None
        return f"{exc.strerror}: {where}" if where else exc.strerror
    except (ValueError, TypeError) as exc:
        return str(exc)
    return ""


def _missing_target(target: str, module: bool) -> int:
    """0 if ``target`` can be run; else Python's message for it, and Python's exit status."""
    if module:
        try:
            found = importlib.util.find_spec(target.partition(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            print(f"{sys.executable}: No module named {target}", file=sys.stderr)
            return 1
    elif not os.path.exists(target):
        print(
            f"pyproperf run: can't open file {os.path.abspath(target)!r}: "
            "[Errno 2] No such file or directory",
            file=sys.stderr,
        )
        return 2
    return 0


def run(options: Options, target: str, args: Sequence[str], *, module: bool) -> int:
    """Run ``target`` (a script path, or a module name if ``module``) profiled; its exit status.

    Raises the program's ``SystemExit`` and ``KeyboardInterrupt`` again
    after the profile is written, so Python ends the process as it would
    have without us.
    """
    missing = _missing_target(target, module) or _check_family(options) or _install_dump()
    if missing:
        return missing
    if options.heap is not None:
        import greenlet  # noqa: F401 -- now, so its import is not in the heap profile
    heap = _start_heap() if options.heap is not None else None
    try:
        server = _start_http(options.http) if options.http is not None else None
    except BaseException:
        if heap is not None:
            heap()
        raise
    # Absolute now: the program may chdir.
    cpu_path = os.path.abspath(options.output)
    heap_path = os.path.abspath(options.heap) if options.heap is not None else ""
    pid = os.getpid()
    launcher = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    viewer = _viewer_command(launcher)
    # Every profile of this process (the files, --http's endpoints) starts
    # its stacks at the program, without runpy's and our frames.
    _stacks.set_launcher_files(
        f for f in ("<frozen runpy>", getattr(runpy, "__file__", None), launcher) if f
    )
    _prepare_sys(target, args, module)
    family = _start_family(options, cpu_path, heap_path)
    # What ``with cpu_profile(...)`` does, keeping the totals for the summary.
    collector = Collector(options.hz, options.clock)
    engine.add(collector)
    ours = set(threading.enumerate())
    started = time.monotonic()

    # Under tracemalloc, the program runs on a stack of its own (``_execute``).
    own_stack = heap is not None or tracemalloc.is_tracing()
    failure, child = _execute(target, module, ours, pid, own_stack=own_stack)
    if child:  # a forked child that fell through: the parent writes
        return _outcome(failure, print_traceback=True)

    # Write everything, with Ctrl-C held back until the files are whole.
    held = _HoldInterrupts()
    with held:
        elapsed = time.monotonic() - started
        # The heap first: it stops tracemalloc, so the rest is not traced.
        heap_written = heap() if heap is not None else None
        engine.remove(collector)
        cpu = collector.build_counted()
        if server is not None:
            server.stop()
        cpu, heap_written, summary = _merge_family(
            family, target, cpu, heap_written, _cpu_summary(cpu, collector.clock, elapsed)
        )
        ok = _deliver(cpu_path, options.output, cpu.data, summary)
        if options.html and ok:
            ok = _deliver_html(cpu_path, options.output)
        if heap is not None and ok:
            _say(
                f"note: {options.output} includes tracemalloc's cost: --heap traces every "
                "allocation, which makes allocating code look slower than it is; profile "
                "CPU without --heap for true proportions"
            )
        if heap_written is not None:
            shown, summary = options.heap or "", _heap_summary(heap_written, family)
            ok = _deliver(heap_path, shown, heap_written.data, summary) and ok
    if held.interrupted and failure is None:
        failure = KeyboardInterrupt()
    if ok:
        quoted = shlex.quote(options.output)
        _say(f"view it with: {viewer} top {quoted}  (or: go tool pprof -http=: {quoted})")
    status = _outcome(failure, print_traceback=False)
    return status if ok or status else 1


# --- the program --------------------------------------------------------------


def _prepare_sys(target: str, args: Sequence[str], module: bool) -> None:
    """``sys.argv`` and ``sys.path[0]`` as ``python script.py`` / ``python -m`` set them."""
    sys.argv[:] = [target, *args]  # -m: runpy puts the module's file in argv[0]
    if getattr(sys.flags, "safe_path", False):  # python -P: no program directory on the path
        return
    if module:
        path0 = os.getcwd()
    elif os.path.isdir(target) or zipfile.is_zipfile(target):
        path0 = os.path.abspath(target)
    else:
        path0 = os.path.dirname(os.path.realpath(target))
    previous = sys.path[0] if sys.path else None
    if sys.path:
        sys.path[0] = path0
    else:
        sys.path.append(path0)
    # Running from a source checkout: keep pyproperf importable for its lazy imports.
    source_root = os.path.realpath(os.path.dirname(_stacks.PACKAGE_DIR.rstrip(os.sep)))
    if previous and os.path.realpath(previous) == source_root and previous not in sys.path:
        sys.path.append(previous)


def _new_main(**attrs: Any) -> types.ModuleType:
    """A fresh ``__main__`` module, installed in ``sys.modules`` for good (as Python's own)."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, **attrs)
    sys.modules["__main__"] = main
    return main


@_own.calls_user_code
def _execute(
    target: str, module: bool, ours: set[threading.Thread], pid: int, *, own_stack: bool
) -> tuple[BaseException | None, bool]:
    """Run the program as ``python`` would, then what interpreter exit does first.

    Returns the program's outcome (its exception, None if it ended normally)
    and whether this is a forked child that fell off the end of the program.

    ``own_stack``: in a greenlet of its own, whose stack holds the program's
    frames only.  tracemalloc works out the line of every frame on the
    stack for every allocation, at a cost that grows with how far into its
    code each frame is; the launcher's frames under the program (runpy's
    and ours) made ``run --heap`` 4.9 times as slow as ``python -X
    tracemalloc=16`` on an allocation-heavy script.  In a greenlet they are
    not on the program's stack at all.  The wait for threads at the end
    runs in the same greenlet, where the program (and gevent's monkey
    patching, if any) ran: gevent's ``threading._shutdown`` waits forever
    in any other.
    """
    if not own_stack:
        return _program_session(target, module, ours, pid)
    import greenlet

    runner = greenlet.greenlet(_program_session)
    outcome = runner.switch(target, module, ours, pid)
    if not runner.dead:  # the program switched to its greenlet's parent: ours
        return RuntimeError("the program switched to the greenlet running it (run --heap)"), False
    return cast(tuple[BaseException | None, bool], outcome)


@_own.calls_user_code
def _program_session(
    target: str, module: bool, ours: set[threading.Thread], pid: int
) -> tuple[BaseException | None, bool]:
    """The program, its uncaught exception printed, its threads waited for."""
    failure: BaseException | None = None
    try:
        call, args = _program(target, module)
        call(*args)
    except BaseException as exc:  # the program's outcome, whatever it is
        failure = exc
    if os.getpid() != pid:
        return failure, True
    if failure is not None and not isinstance(failure, SystemExit):
        _print_exception(failure)
    _wait_for_program_threads(ours)
    return failure, False


def _program(target: str, module: bool) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """What runs the program, and its arguments; a script is read and compiled here."""
    run_module_as_main: Callable[..., Any] = getattr(runpy, "_run_module_as_main")  # noqa: B009
    if module:
        # What `python -m` itself calls: runs the module in the __main__ namespace.
        _new_main()
        return run_module_as_main, (target, True)
    if os.path.isdir(target) or zipfile.is_zipfile(target):
        _new_main()
        return run_module_as_main, ("__main__", False)  # `python DIR` / `python app.zip`
    path = os.path.abspath(target)
    with io.open_code(path) as f:
        source = f.read()
    main = _new_main(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __spec__=None,
        __package__=None,
    )
    return exec, (compile(source, path, "exec", dont_inherit=True), main.__dict__)


def _is_runner_frame(frame: FrameType) -> bool:
    """A frame of the launcher: runpy, pyproperf, the ``pyproperf`` console script."""
    return _stacks.is_launcher_file(frame.f_code.co_filename)


def _print_exception(exc: BaseException) -> None:
    """Print an uncaught exception through ``sys.excepthook``, without our own frames."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and _is_runner_frame(tb.tb_frame):
        tb = tb.tb_next
    exc.__traceback__ = tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except Exception:  # a broken hook: Python falls back to its own printer
        sys.__excepthook__(type(exc), exc, tb)


def _outcome(failure: BaseException | None, *, print_traceback: bool) -> int:
    """The exit status, or the program's SystemExit / KeyboardInterrupt raised again."""
    if failure is None:
        return 0
    if isinstance(failure, SystemExit):
        raise failure
    if print_traceback:
        _print_exception(failure)
    if isinstance(failure, KeyboardInterrupt):
        # Already printed: let Python end the process by SIGINT (status 130 in a
        # shell) after running atexit handlers, without printing it again.
        _silence_once(failure)
        raise failure
    return 1


def _silence_once(exc: BaseException) -> None:
    previous = sys.excepthook

    def hook(t: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if value is not exc:
            previous(t, value, tb)

    sys.excepthook = hook
    exc.__traceback__ = None


def _wait_for_program_threads(ours: set[threading.Thread]) -> None:
    """Do what interpreter exit does first: threading's exit hooks, then join threads.

    ``threading._shutdown`` is the function Python itself calls at exit (it
    also runs ``concurrent.futures``' exit hooks, so pools finish inside the
    profile).  Ctrl-C while it waits is reported and ignored, as Python
    does: the exit status stays the program's, the threads still running
    are abandoned, and Python does not wait for them a second time.
    """
    shutdown = getattr(threading, "_shutdown", None)
    try:
        if callable(shutdown):
            shutdown()
            return
        while True:  # no _shutdown (another implementation): join as it would
            pending = [
                t for t in threading.enumerate()
                if t not in ours and not t.daemon and t.is_alive()
                and t is not threading.current_thread()
            ]
            if not pending:
                return
            for t in pending:
                t.join()
    except KeyboardInterrupt as exc:
        _report_ignored(exc)


def _report_ignored(exc: BaseException) -> None:
    """Print an exception Python ignores at thread shutdown, the way Python prints it."""
    try:
        if sys.version_info < (3, 13):
            print(f"Exception ignored in: {threading!r}", file=sys.stderr)
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb  # from threading on
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except (OSError, ValueError):  # stderr closed
        pass


class _HoldInterrupts:
    """Defer SIGINT while the profiles are written (main thread only)."""

    def __init__(self) -> None:
        self.interrupted = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> _HoldInterrupts:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._note)
                self._installed = True
            except (ValueError, OSError):
                pass
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            # None: a handler set from C, which Python cannot reinstall; keep Python's default.
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


# --- heap, http and subprocesses (optional) -------------------------------------


def _install_dump() -> int:
    """``PYPROPERF_DUMP_SIGNAL``: install ``dump_on_signal``; 2 (said in one line) if it is bad."""
    from pyproperf import _dump

    problem = _dump.install_from_environment()
    if problem:
        print(f"pyproperf run: {problem}", file=sys.stderr)
        return 2
    return 0


def _check_family(options: Options) -> int:
    """``--subprocesses``: 2 (said in one line) if the per-process files cannot be made."""
    if not options.subprocesses:
        return 0
    from pyproperf import _subprocesses

    for path in filter(None, (options.output, options.heap)):
        each = _subprocesses.per_process_path(os.path.abspath(path), os.getpid())
        special = (os.path.exists(path) and not os.path.isfile(path)) or \
            os.path.abspath(path).startswith(("/dev/", "/proc/"))  # /dev/stdout: a file, maybe
        problem = "not a regular file (each process's file goes next to it)" if special \
            else check_output_path(each)
        if problem:
            print(f"pyproperf run: argument --subprocesses: {path}: {problem}", file=sys.stderr)
            return 2
    return 0


def _start_family(options: Options, cpu_path: str, heap_path: str) -> Any:
    """``--subprocesses``: set the session up for the children (None without it)."""
    if not options.subprocesses:
        return None
    from pyproperf import _subprocesses

    return _subprocesses.Parent(
        cpu_path, heap_path or None, options.hz, options.clock, options.http
    )


def _merge_family(
    family: Any, target: str, cpu: Built, heap: _heap.Written | None, summary: str
) -> tuple[Built, _heap.Written | None, str]:
    """``--subprocesses``: this process's profiles merged with its children's, and a summary
    (all as they are without it)."""
    if family is None:
        return cpu, heap, summary
    name = os.path.basename(target) or target
    done = family.finish(name, cpu.data, heap.data if heap is not None else None)
    if done.lost:
        _say(done.lost)
    n = done.processes
    summary = f"{n} process{'' if n == 1 else 'es'} merged, labelled pid and process"
    merged_heap = heap._replace(data=done.heap) if heap is not None and done.heap else heap
    return cpu._replace(data=done.cpu), merged_heap, summary



def _start_heap() -> Callable[[], _heap.Written]:
    """Start tracing allocations; the returned function writes, stops, and returns the profile.

    The profile is ``allocs`` (the heap data with ``alloc_space`` as the
    default type), as ``go test -memprofile`` writes: at exit, what was
    allocated says more than what is still live (``--sample-index
    inuse_space`` shows that).
    """
    _heap.start_heap_profile()

    def finish() -> _heap.Written:
        return _heap.render_and_stop()

    return finish


def _start_http(address: str) -> Any:
    import pyproperf.http

    try:
        server = pyproperf.http.serve(address)
    except (ValueError, OSError) as exc:
        raise UsageError("--http", str(exc)) from None
    _say(f"serving {server.url}")
    return server


# --- output -------------------------------------------------------------------


def _say(text: str) -> None:
    try:
        print(f"pyproperf: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the program closed stderr
        pass


def _deliver(path: str, shown: str, data: bytes, summary: str) -> bool:
    """Write ``data`` to ``path`` whole and say so (naming it ``shown``); False on failure."""
    try:
        _io.write_file(path, data)
    except OSError as exc:
        _say(f"could not write {shown}: {exc}")
        return False
    _say(f"wrote {shown} ({summary})")
    return True


def _deliver_html(profile_path: str, shown: str) -> bool:
    """``--html``: the report of the profile just written, next to it; False on failure."""
    from pyproperf import _view

    path = _view.html_path_for(profile_path)
    shown_html = _view.html_path_for(shown)
    try:
        size = _view.write_report(profile_path, path)
    except (OSError, ValueError) as exc:
        _say(f"could not write {shown_html}: {exc}")
        return False
    _say(f"wrote {shown_html} ({_view.size_text(size)}; open it in a web browser)")
    return True


def _cpu_summary(cpu: Built, clock: str, elapsed: float) -> str:
    seconds = cpu.duration_ns / 1e9 if cpu.duration_ns else elapsed
    text = f"{seconds:.2f} s, {cpu.samples} sample{'' if cpu.samples == 1 else 's'}"
    return f"{text}, {cpu.nanos / 1e9:.2f} s {clock}"


def _heap_summary(heap: _heap.Written, family: Any = None) -> str:
    if family is not None:
        return "merged likewise"
    from pyproperf._top import scaled_label

    return f"{heap.stacks} stacks, {scaled_label(heap.inuse_bytes, 'bytes')} in use"


def _viewer_command(launcher: str) -> str:
    """The shell command that runs ``pyproperf`` as now, in any shell (no venv activated).

    The ``pyproperf`` console script by its absolute path if it is what
    runs; else this interpreter with ``-m pyproperf``.
    """
    name = os.path.basename(launcher)
    if name == "pyproperf" and not launcher.startswith(_stacks.PACKAGE_DIR):
        return shlex.quote(launcher)
    return f"{shlex.quote(sys.executable or 'python')} -m pyproperf"
