"""``dump_on_signal``: an on-call dump of a running process, like Go's SIGQUIT but not fatal.

On the signal, the goroutine profile at ``debug=2`` (every thread,
greenlet and task with its stack, as Go's crash dump) goes to stderr or a
file, and optionally a CPU profile of the next N seconds to a file; the
program goes on.

What runs where, so that the dump is safe whatever the program is doing:

* The handler only writes one byte to a pipe (no lock, no allocation to
  speak of) and then calls the handler it replaced, if that was a Python
  function.  It is installed with SA_RESTART semantics
  (``signal.siginterrupt(sig, False)``): no system call of the program
  sees EINTR because of it.
* A thread of ours, started when the handler is installed (and again in
  a forked child), reads the pipe and does the work.  It is a real OS
  thread (``_hooks.real_thread``), as the heap sampler's: under gevent's
  monkey patching a ``threading`` thread is a greenlet, whose blocking
  read of the pipe would stop the whole program.  Its work: the dump,
  and the CPU profile (``_sampler.Collector``, not ``start_cpu_profile``'s
  slot, so the program's own profiles are not disturbed).  Nothing is
  started from inside a signal handler.
* While a CPU profile runs, further signals dump the goroutines but start
  no second CPU profile.

``PYPROPERF_DUMP_SIGNAL`` (and ``PYPROPERF_DUMP_PATH``,
``PYPROPERF_DUMP_CPU_SECONDS``, ``PYPROPERF_DUMP_CPU_PATH``) let
``python -m pyproperf run`` install it without a code change.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pyproperf import _goroutine, _hooks, _io
from pyproperf._sampler import Collector, engine

__all__ = ["ENV_CPU_PATH", "ENV_CPU_SECONDS", "ENV_PATH", "ENV_SIGNAL", "dump_on_signal",
           "install_from_environment"]

ENV_SIGNAL = "PYPROPERF_DUMP_SIGNAL"
ENV_PATH = "PYPROPERF_DUMP_PATH"
ENV_CPU_SECONDS = "PYPROPERF_DUMP_CPU_SECONDS"
ENV_CPU_PATH = "PYPROPERF_DUMP_CPU_PATH"
DEFAULT_CPU_PATH = "cpu-dump.%p.pb.gz"
MAX_CPU_SECONDS = 3600


class _Dumper:
    """One installed signal: its pipe, its thread, what it writes."""

    def __init__(self, sig: int, path: str | None, cpu_seconds: float, cpu_path: str) -> None:
        self.sig = sig
        self.path = path
        self.cpu_seconds = cpu_seconds
        self.cpu_path = cpu_path
        self.previous: Any = None
        self.cpu_running = False
        self._lock = _hooks.real_thread().allocate_lock()
        self._start_thread()

    def _start_thread(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        _hooks.real_thread().start_new_thread(self._serve, (self._read_fd,))

    def after_fork_in_child(self) -> None:
        """The thread is gone and the pipe is shared with the parent: new ones."""
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lock = _hooks.real_thread().allocate_lock()
        self.cpu_running = False
        self._start_thread()

    def close(self) -> None:
        """Let the thread end (it reads EOF); the handler, if still called, does nothing."""
        fd, self._write_fd = self._write_fd, -1  # the handler's writes now fail quietly
        with contextlib.suppress(OSError):
            os.close(fd)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # a full pipe: a dump is pending anyway
            os.write(self._write_fd, b"\0")
        previous = self.previous
        if callable(previous):
            previous(signum, frame)

    def _serve(self, read_fd: int) -> None:
        while True:
            try:
                if not os.read(read_fd, 64):
                    return
            except OSError:  # closed in a forked child's replacement
                return
            try:
                self.dump()
            except Exception as exc:
                _report(f"dump on signal failed: {exc!r}")

    def dump(self) -> None:
        """Write the goroutine dump, and start the CPU profile if asked and none runs."""
        pid = os.getpid()
        # As render("goroutine", 2), without this thread of ours (the one taking it).
        units = [u for u in _goroutine.snapshot() if not u.current]
        text = _goroutine._render_dump(units).encode("utf-8", "surrogateescape")
        if self.path is None:  # a header line sets it apart from the program's own output
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            text = f"pyproperf: goroutine dump of pid {pid} at {stamp}\n".encode() + text
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
                buffer = getattr(sys.stderr, "buffer", None)
                if buffer is not None:
                    _io.write_all(buffer, text)
                    buffer.flush()
                else:
                    sys.stderr.write(text.decode("utf-8", "replace"))
                    sys.stderr.flush()
        else:  # silent, as Go's dump: the caller named the file
            _io.write_file(self.path.replace("%p", str(pid)), text)
        if self.cpu_seconds > 0:
            with self._lock:
                if self.cpu_running:
                    _report("a CPU profile started by an earlier signal is still running")
                    return
                self.cpu_running = True
            _hooks.real_thread().start_new_thread(self._cpu, ())

    def _cpu(self) -> None:
        target = self.cpu_path.replace("%p", str(os.getpid()))
        try:
            collector = Collector(100, "cpu")
            engine.add(collector)
            try:
                pause = _hooks.real_thread().allocate_lock()
                pause.acquire()
                pause.acquire(timeout=self.cpu_seconds)  # the profile's duration
            finally:
                engine.remove(collector)
            _io.write_file(target, collector.build())
        except Exception as exc:
            _report(f"could not write the CPU profile {target}: {exc}")
        finally:
            self.cpu_running = False


_dumpers: dict[int, _Dumper] = {}


def _report(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(text if text.startswith("pyproperf") else f"pyproperf: {text}",
              file=sys.stderr, flush=True)


def _after_fork_in_child() -> None:
    for dumper in _dumpers.values():
        dumper.after_fork_in_child()


_hooks.at_fork_child(_after_fork_in_child)


def dump_on_signal(
    sig: int = signal.SIGUSR2,
    path: str | os.PathLike[str] | None = None,
    *,
    cpu_seconds: float = 0,
    cpu_path: str | os.PathLike[str] | None = None,
) -> Callable[[], None]:
    """On signal ``sig``, dump every goroutine's stack (the goroutine profile at
    ``debug=2``) and go on; return a function that puts the previous handler back.

    ``path``: where the dump goes; None for stderr.  A file is replaced by
    each dump; ``%p`` in it becomes the process id.  ``cpu_seconds`` > 0:
    also profile the CPU for that many seconds after each signal (one at a
    time), into ``cpu_path`` (default ``cpu-dump.%p.pb.gz`` in the
    working directory of the call).  Must be called from the main thread,
    as ``signal.signal``.  A handler the program had is called after ours;
    calling ``dump_on_signal`` again for the same signal replaces the
    settings.
    """
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"sig must be a signal number, not {type(sig).__name__}")
    if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPROF):
        raise ValueError(f"cannot dump on {signal.Signals(sig).name}")
    if isinstance(cpu_seconds, bool) or not isinstance(cpu_seconds, (int, float)):
        raise TypeError(f"cpu_seconds must be a number, not {type(cpu_seconds).__name__}")
    if not 0 <= cpu_seconds <= MAX_CPU_SECONDS:
        raise ValueError(f"cpu_seconds must be between 0 and {MAX_CPU_SECONDS}, not {cpu_seconds}")
    shown = os.fspath(path) if path is not None else None
    if shown is not None:
        _io.check_path(shown.replace("%p", str(os.getpid())), "path")
        shown = os.path.abspath(shown)
    cpu_target = os.path.abspath(os.fspath(cpu_path) if cpu_path is not None
                                 else DEFAULT_CPU_PATH)
    if cpu_seconds:
        _io.check_path(cpu_target.replace("%p", str(os.getpid())), "cpu_path")
    old = _dumpers.pop(sig, None)
    dumper = _Dumper(sig, shown, float(cpu_seconds), cpu_target)
    dumper.previous = old.previous if old is not None else signal.getsignal(sig)
    if old is not None:
        old.close()
    signal.signal(sig, dumper.handler)
    signal.siginterrupt(sig, False)  # SA_RESTART: no EINTR in the program
    _dumpers[sig] = dumper

    def restore() -> None:
        if _dumpers.get(sig) is dumper:
            del _dumpers[sig]
            previous = dumper.previous
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            dumper.close()

    return restore


def _parse_signal(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"no signal named {text!r}") from None


def install_from_environment(report: Callable[[str], None] | None = None) -> str:
    """Install ``dump_on_signal`` as the ``PYPROPERF_DUMP_*`` variables ask.

    Returns "" when done or not asked, else the one-line problem (also
    given to ``report`` if set): the caller decides whether to stop.
    """
    raw = os.environ.get(ENV_SIGNAL, "")
    if not raw:
        return ""
    try:
        sig = _parse_signal(raw)
        seconds_text = os.environ.get(ENV_CPU_SECONDS, "") or "0"
        try:
            seconds = float(seconds_text)
        except ValueError:
            raise ValueError(f"{ENV_CPU_SECONDS}={seconds_text!r} is not a number") from None
        dump_on_signal(sig, os.environ.get(ENV_PATH) or None, cpu_seconds=seconds,
                       cpu_path=os.environ.get(ENV_CPU_PATH) or None)
    except (ValueError, TypeError, OSError) as exc:
        problem = f"{ENV_SIGNAL}={raw!r}: {exc}"
        if report is not None:
            report(f"ignoring {problem}")
        return problem
    return ""
