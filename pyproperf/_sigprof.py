"""The signal clock: SIGPROF every period of the main thread's own CPU time.

As Go does on Linux since 1.18, the timer is a POSIX timer on the main
thread's CPU clock (``timer_create`` through ``ctypes``, stdlib only)
that sends SIGPROF to the main thread itself (``SIGEV_THREAD_ID``).  It
fires only while the main thread runs, so the Python handler, which
CPython runs in the main thread between bytecodes, always finds the main
thread where it is using CPU: the one thread whose stack a handler can
read at the moment it runs.  Where that timer cannot be made (not Linux,
no ``timer_create``), ``setitimer(ITIMER_PROF)`` is the fallback, as in
Go before 1.18.

This module owns SIGPROF: it takes it only when nobody else uses it,
installs with SA_RESTART so no system call of the host sees EINTR, and
puts back the previous handler when done.  Restoring needs the main
thread; from another thread it is handed to the main thread as a pending
call (``Py_AddPendingCall``), never by sending a signal, which would
interrupt a main thread blocked in C with EINTR.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pyproperf import _hooks

__all__ = ["SignalClock", "precise_wakeups", "thread_cpu_clock"]

Handler = Callable[[FrameType | None], None]


def thread_cpu_clock(native_id: int) -> int:
    """Linux clock id of a thread's CPU-time clock (glibc's MAKE_THREAD_CPUCLOCK).

    Built from the kernel thread id rather than ``pthread_getcpuclockid``:
    a thread that exits between two reads then yields EINVAL, never a read
    of freed pthread memory.
    """
    return ((~native_id) << 3) | 6


_PR_SET_TIMERSLACK = 29
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
# The helper thread's scheduler slice (sched_attr.sched_runtime), the
# shortest Linux takes.
HELPER_SLICE_NS = 100_000


def precise_wakeups() -> None:
    """Let the calling thread's timed waits end on time (Linux; elsewhere nothing).

    The sampler's helper thread looks at times of its own choosing, and
    each µs its wake-up comes late is a µs at the start of every burst of
    work it cannot see.  Two settings of the calling thread alone:

    * timer slack of 1 ns: Linux otherwise lets a timed wait end up to
      50 µs late, to batch wake-ups;
    * a 0.1 ms scheduler slice (``sched_setattr``; Linux 6.12+ lets any
      thread ask for one, older kernels ignore it): a thread with a short
      slice runs as soon as it wakes, where with the default one it
      waited behind a thread the kernel ran on the same CPU, measured up
      to 1.4 ms (0.2 ms with it).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
        number = _SYS_SCHED_SETATTR.get(os.uname().machine)
        if number is not None:
            # struct sched_attr, first version (48 bytes): size, policy (SCHED_OTHER),
            # flags, nice (the thread's own, kept), priority, then sched_runtime: the slice.
            nice = os.getpriority(os.PRIO_PROCESS, 0) & 0xFFFF_FFFF
            attr = (ctypes.c_uint64 * 6)(48, 0, nice, HELPER_SLICE_NS, 0, 0)
            libc.syscall(number, 0, ctypes.byref(attr), 0)
    except (OSError, AttributeError):
        pass


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):
    # Linux: sigval (pointer-sized), signo, notify, then a union whose first
    # int is the target thread id for SIGEV_THREAD_ID; 64 bytes in all.
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("sigev_notify_thread_id", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_SIGEV_THREAD_ID = 4


class _ThreadTimer:
    """A POSIX timer on one thread's CPU clock that signals that thread."""

    _libc: Any = None

    def __init__(self, native_id: int, signo: int) -> None:
        libc = self._load()
        event = _Sigevent()
        event.sigev_signo = signo
        event.sigev_notify = _SIGEV_THREAD_ID
        event.sigev_notify_thread_id = native_id
        timer = ctypes.c_void_p()
        clock = ctypes.c_int(thread_cpu_clock(native_id))
        if libc.timer_create(clock, ctypes.byref(event), ctypes.byref(timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")
        self._timer: ctypes.c_void_p | None = timer

    @classmethod
    def _load(cls) -> Any:
        if cls._libc is None:
            if not sys.platform.startswith("linux"):
                raise OSError("per-thread CPU timers need Linux")
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                libc.timer_create  # noqa: B018 - glibc 2.34+ has it in libc
            except AttributeError:
                libc = ctypes.CDLL("librt.so.1", use_errno=True)
            libc.timer_create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            libc.timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_void_p]
            libc.timer_delete.argtypes = [ctypes.c_void_p]
            cls._libc = libc
        return cls._libc

    def set_period(self, period_ns: int) -> None:
        """Fire every ``period_ns`` of the thread's CPU time (0 disarms)."""
        if self._timer is None:
            return
        ts = _Timespec(period_ns // 1_000_000_000, period_ns % 1_000_000_000)
        spec = _Itimerspec(ts, ts)
        self._libc.timer_settime(self._timer, 0, ctypes.byref(spec), None)

    def delete(self) -> None:
        if self._timer is not None:
            self._libc.timer_delete(self._timer)
            self._timer = None


# Py_AddPendingCall's callback: int (*)(void *).  Kept alive for the process.
_PENDING_CALL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class SignalClock:
    """SIGPROF ticks in the main thread, one per period of its CPU time."""

    def __init__(self, on_tick: Handler) -> None:
        self._on_tick = on_tick
        self.installed = False  # our handler is the SIGPROF handler
        self.armed = False  # the timer runs
        self.main_ident: int | None = None  # the thread our handler runs in
        self.kind = ""  # "thread timer" or "itimer"
        self._previous: Any = None
        self._timer: _ThreadTimer | None = None
        self._period_ns = 10_000_000
        self._main_native_id = 0
        self._restore_wanted = False
        self._pending_call = _PENDING_CALL(self._restore_from_pending_call)

    # -- install and remove --------------------------------------------------------

    def install(self, period_ns: int) -> bool:
        """Take SIGPROF and start ticking; False if we cannot (not main, SIGPROF in use)."""
        self._period_ns = period_ns
        if self.installed:  # still ours from last time (restore was pending)
            self._restore_wanted = False
            if self._timer is None and self.kind == "thread timer":
                try:
                    self._timer = _ThreadTimer(self._main_native_id, signal.SIGPROF)
                except (OSError, AttributeError, ValueError):
                    self.kind = "itimer"
            self.arm()
            return True
        if not hasattr(signal, "SIGPROF"):
            return False
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return False  # a profiler or the application owns SIGPROF: leave it alone
        if signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0):
            return False
        try:
            timer: _ThreadTimer | None = _ThreadTimer(threading.get_native_id(), signal.SIGPROF)
        except (OSError, AttributeError, ValueError):
            timer = None
        try:
            self._previous = signal.signal(signal.SIGPROF, self._handler)
        except (ValueError, OSError):
            if timer is not None:
                timer.delete()
            return False
        signal.siginterrupt(signal.SIGPROF, False)  # SA_RESTART: no EINTR in the host
        self._timer = timer
        self._main_native_id = threading.get_native_id()
        self.kind = "thread timer" if timer is not None else "itimer"
        self.main_ident = _hooks.real_get_ident()
        self.installed = True
        self.arm()
        return True

    def arm(self) -> None:
        """(Re)start the timer with the current period."""
        if not self.installed:
            return
        self.armed = True
        if self._timer is not None:
            self._timer.set_period(self._period_ns)
        else:
            seconds = self._period_ns / 1e9
            signal.setitimer(signal.ITIMER_PROF, seconds, seconds)

    def disarm(self) -> None:
        """Stop the timer; the handler stays (cheap to re-arm)."""
        if not self.armed:
            return
        self.armed = False
        if self._timer is not None:
            self._timer.set_period(0)
        else:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)

    def set_period(self, period_ns: int) -> None:
        if period_ns != self._period_ns:
            self._period_ns = period_ns
            if self.armed:
                self.arm()

    def uninstall(self) -> None:
        """Stop ticking and give SIGPROF back (now on the main thread, else soon)."""
        if not self.installed:
            return
        self.disarm()
        if self._timer is not None:
            self._timer.delete()
            self._timer = None
        try:
            self._restore()
        except ValueError:  # not the main thread: the main thread does it next
            self._restore_wanted = True
            try:
                ctypes.pythonapi.Py_AddPendingCall(self._pending_call, None)
            except (AttributeError, OSError):
                pass  # the handler restores at the next SIGPROF instead

    def after_fork_in_child(self) -> None:
        """The child starts clean: POSIX timers are not inherited; put the handler back."""
        self._timer = None
        self.armed = False
        self.main_ident = _hooks.real_get_ident()
        if self.installed:
            try:
                signal.setitimer(signal.ITIMER_PROF, 0, 0)
                self._restore()
            except (ValueError, OSError):
                self._restore_wanted = True

    # -- the handler ---------------------------------------------------------------

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._restore_wanted:
            try:
                self._restore()
            except ValueError:
                pass
            return
        if self.armed:
            self._on_tick(frame)

    def _restore(self) -> None:
        """Put the previous handler back once no SIGPROF of ours is pending.

        A signal generated just before the timer was disarmed can still be
        pending; restoring SIG_DFL before it lands would let it kill the
        process.
        """
        deadline = time.monotonic() + 0.5
        while signal.SIGPROF in signal.sigpending() and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.signal(signal.SIGPROF, self._previous)
        self._previous = None
        self._restore_wanted = False
        self.installed = False
        self.kind = ""

    def _restore_from_pending_call(self, _arg: object) -> int:
        """Runs in the main thread between bytecodes (Py_AddPendingCall)."""
        try:
            if self._restore_wanted and self.installed and not self.armed:
                self._restore()
        except Exception:
            pass
        return 0
