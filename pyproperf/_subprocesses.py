"""``run --subprocesses``: profile every Python process of a program, then merge.

How each kind of child is reached:

* ``os.fork`` (multiprocessing's fork context, gunicorn's pre-fork
  workers, the forkserver's children): a fork handler (``_hooks``) starts
  a fresh profile in the child; the parent's samples stay the parent's.
* New interpreters (``subprocess`` running this Python, multiprocessing's
  spawn context, the forkserver process): ``run`` puts ``_boot`` first on
  ``PYTHONPATH`` and describes the session in ``PYPROPERF_SUBPROCESSES``;
  ``_boot/sitecustomize.py`` calls :func:`start_from_environment` before
  the child's program runs.  Another Python (another venv or version)
  ignores it.

Each child writes its own files, ``cpu.pb.gz`` becoming ``cpu.<pid>.pb.gz``
(and the same for ``--heap``), when it exits: at ``atexit``, at
``os._exit`` (forked multiprocessing children end so) or on SIGTERM
where SIGTERM would kill it (``Pool.terminate``).  It notes in a session
directory that it started and, once its files are whole, that it is
done; at the end ``run`` merges the files of every process that is done
(``_merge.merge_processes``: ``pid`` and ``process`` labels on every
sample) and reports in one line the processes that started and never
finished: killed by a signal, or still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from pyproperf import _heap, _hooks, _io, _merge
from pyproperf._sampler import Collector, engine

__all__ = [
    "BOOT_DIR",
    "ENV",
    "Config",
    "Finished",
    "Parent",
    "per_process_path",
    "start_from_environment",
]

ENV = "PYPROPERF_SUBPROCESSES"
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
# How long ``run`` waits at the end for children that are still writing.
GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Config:
    """What every process of the session profiles and where it writes (absolute paths)."""

    session: str  # directory of start and done notes
    output: str
    heap: str | None
    hz: int
    clock: str
    http: str | None  # HOST:0 for children, or None
    python: str  # the interpreter that ran ``run``: other Pythons are not followed
    prefix: str


def per_process_path(path: str, pid: int) -> str:
    """``cpu.pb.gz`` -> ``cpu.<pid>.pb.gz``; ``out`` -> ``out.<pid>`` (same directory)."""
    directory, name = os.path.split(path)
    head, dot, rest = name.partition(".")
    return os.path.join(directory, f"{head}.{pid}{dot}{rest}")


def _process_name() -> str:
    """multiprocessing's name of this process if it has one, else the program's."""
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        with contextlib.suppress(Exception):
            name = str(mp.current_process().name)
            if name != "MainProcess":
                return name
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) if argv0 and argv0 != "-c" else "python"


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"pyproperf: {text}", file=sys.stderr, flush=True)


# --- a child's profile -----------------------------------------------------------------


class _Child:
    """The profile of this process, a child of the session, written once when it exits."""

    def __init__(self, config: Config, *, heap_running: bool) -> None:
        self.config = config
        self.pid = os.getpid()
        self._lock = _hooks.real_thread().allocate_lock()
        self._written = False
        self.collector = Collector(config.hz, config.clock)
        engine.add(self.collector)
        self._heap = config.heap is not None
        if self._heap and not heap_running:
            _heap.start_heap_profile()
        self._server: Any = None
        if config.http is not None:
            self._serve(config.http)
        _note(config.session, self.pid, "start", {"name": _process_name()})

    def _serve(self, address: str) -> None:
        try:
            import pyproperf.http

            self._server = pyproperf.http.serve(address)
        except (ValueError, OSError) as exc:
            _say(f"pid {self.pid}: cannot serve /debug/pprof/ on {address}: {exc}")
            return
        _say(f"pid {self.pid} ({_process_name()}) serving {self._server.url}")

    def write(self) -> None:
        """Stop, write this process's files, note it done; once, in this process only."""
        if os.getpid() != self.pid:
            return
        # SIGTERM now waits for the files (it may come while we write, on this thread).
        with _hooks.exit_work():
            if not self._lock.acquire(True, 30):
                return
            try:
                if self._written:
                    return
                self._written = True
                self._write()
            finally:
                self._lock.release()

    def _write(self) -> None:
        config, files = self.config, {}
        heap_data = _heap.render_and_stop().data if self._heap else None
        engine.remove(self.collector)
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop(1.0)
        try:
            cpu_path = per_process_path(config.output, self.pid)
            _io.write_file(cpu_path, self.collector.build())
            files["cpu"] = cpu_path
            if heap_data is not None and config.heap is not None:
                heap_path = per_process_path(config.heap, self.pid)
                _io.write_file(heap_path, heap_data)
                files["heap"] = heap_path
        except OSError as exc:
            _say(f"pid {self.pid}: could not write its profile: {exc}")
            return
        _note(config.session, self.pid, "done", {"name": _process_name(), **files})


_child: _Child | None = None
_config: Config | None = None  # set in every process of the session


def _start_child(config: Config, *, heap_running: bool) -> None:
    global _child  # noqa: PLW0603 - one profile per process
    try:
        _child = _Child(config, heap_running=heap_running)
    except Exception as exc:  # the child runs unprofiled rather than not at all
        _child = None
        _say(f"pid {os.getpid()}: not profiled: {exc!r}")
        return
    _hooks.at_exit(_write_child)
    _hooks.at_hard_exit(_write_child)
    _hooks.at_sigterm(_write_child)


def _write_child() -> None:
    child = _child
    if child is not None:
        child.write()


def _after_fork_in_child() -> None:
    """A forked process of the session: a profile of its own from now on."""
    global _child  # noqa: PLW0603 - the parent's (or its parent's) profile is not ours
    if _config is None:
        return
    _child = None  # (the sampler's own fork handler, run before this one, reset it)
    _start_child(_config, heap_running=_config.heap is not None)


def _follow_forks(config: Config) -> None:
    global _config  # noqa: PLW0603 - set once per process
    first = _config is None
    _config = config
    if config.http is not None:
        import pyproperf.http  # noqa: F401 -- now: its fork handler must run before ours
    if first:
        _hooks.at_fork_child(_after_fork_in_child)


def start_from_environment() -> None:
    """In a new interpreter (``_boot/sitecustomize``): join the session ``ENV`` describes.

    Does nothing in another Python than the one running ``run``, or
    without the variable; multiprocessing's resource tracker is left
    alone, and the forkserver process only passes profiling on to the
    children it forks.  Never raises: a child runs unprofiled rather than
    not at all.
    """
    raw = os.environ.get(ENV)
    if not raw:
        return
    try:
        config = Config(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        _say(f"ignoring {ENV}: {exc}")
        return
    if sys.prefix != config.prefix or not _same_file(sys.executable, config.python):
        return
    argv = " ".join(getattr(sys, "orig_argv", sys.argv))
    if "multiprocessing.resource_tracker" in argv:
        return
    _follow_forks(config)
    if "multiprocessing.forkserver" in argv:
        return
    _start_child(config, heap_running=False)
    from pyproperf import _dump

    _dump.install_from_environment(report=_say)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --- the notes a session's processes leave -----------------------------------------------


def _note(session: str, pid: int, what: str, content: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        _io.write_file(os.path.join(session, f"{pid}.{what}"), json.dumps(content).encode())


def _read_notes(session: str, what: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(session):
            pid, _, kind = name.partition(".")
            if kind != what or not pid.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError), \
                    open(os.path.join(session, name), "rb") as f:
                out[int(pid)] = json.loads(f.read())
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


# --- the parent: ``run`` itself -------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """What the session left: merged profiles, and a line about what was lost (or "")."""

    cpu: bytes
    heap: bytes | None
    processes: int
    lost: str


class Parent:
    """``run``'s side of the session: sets it up for children, merges at the end."""

    def __init__(self, output: str, heap: str | None, hz: int, clock: str,
                 http: str | None) -> None:
        self.pid = os.getpid()
        session = tempfile.mkdtemp(prefix="pyproperf-session-")
        child_http = None
        if http is not None:
            child_http = http.rpartition(":")[0] + ":0"
        self.config = Config(
            session=session, output=output, heap=heap, hz=hz, clock=clock, http=child_http,
            python=sys.executable, prefix=sys.prefix,
        )
        # New interpreters find the session in their environment.
        os.environ[ENV] = json.dumps(asdict(self.config))
        path = [BOOT_DIR]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        os.environ["PYTHONPATH"] = os.pathsep.join(path)
        _follow_forks(self.config)

    def finish(self, name: str, cpu: bytes, heap: bytes | None) -> Finished:
        """Merge this process's profiles (``cpu``, ``heap``) with its children's.

        Also writes this process's own ``cpu.<pid>.pb.gz``.  Waits up to
        :data:`GRACE_SECONDS` for children that are still running and
        writing; a child file that cannot be read is reported as lost.
        """
        config = self.config
        with contextlib.suppress(OSError):
            _io.write_file(per_process_path(config.output, self.pid), cpu)
            if heap is not None and config.heap is not None:
                _io.write_file(per_process_path(config.heap, self.pid), heap)
        done, missing = self._wait_for_children()
        cpus = [_merge.ProcessProfile(cpu, self.pid, name)]
        heaps = [_merge.ProcessProfile(heap, self.pid, name)] if heap is not None else []
        lost = dict(missing)
        for pid, note in sorted(done.items()):
            try:
                with open(note["cpu"], "rb") as f:
                    cpus.append(_merge.ProcessProfile(f.read(), pid, note.get("name", "")))
                if heap is not None and "heap" in note:
                    with open(note["heap"], "rb") as f:
                        heaps.append(_merge.ProcessProfile(f.read(), pid, note.get("name", "")))
            except (OSError, KeyError):
                lost[pid] = "its file is unreadable"
        merged_heap = _merge.merge_processes(heaps) if heaps else None
        report = _lost_line(lost, len(cpus)) if lost else ""
        shutil.rmtree(config.session, ignore_errors=True)
        return Finished(_merge.merge_processes(cpus), merged_heap, len(cpus), report)

    def _wait_for_children(self) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        """The done notes, and for each child that started and is not done, why."""
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            started = _read_notes(self.config.session, "start")
            done = _read_notes(self.config.session, "done")
            pending = [pid for pid in started if pid not in done and pid != self.pid]
            alive = [pid for pid in pending if _running(pid)]
            if not alive or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # polling notes written by other processes
        missing = {
            pid: "still running" if pid in alive else "ended without writing it"
            for pid in pending
        }
        for pid in missing:
            name = started[pid].get("name")
            if name:
                missing[pid] += f" ({name})"
        done.pop(self.pid, None)
        return done, missing


def _lost_line(lost: dict[int, str], merged: int) -> str:
    """One line: which processes' profiles are missing from the merge, and why."""
    items = "; ".join(f"pid {pid}: {why}" for pid, why in sorted(lost.items()))
    n = len(lost)
    return (
        f"lost the profile of {n} process{'' if n == 1 else 'es'} (a child killed by a "
        f"signal writes none): {items}; merged the other {merged}"
    )

