"""The CPU and wall-clock sampler: clocks, ticks, and per-profile aggregation.

One engine serves every consumer at once (``start_cpu_profile``, ``with
cpu_profile(...)`` blocks and ``@cpu_profile`` functions; their API is in
``_cpu``).  Each tick
reads ``sys._current_frames()`` and, per thread, how much CPU (or wall)
time passed since the previous tick; that time is credited to the
thread's current stack and labels.  Weighing by each thread's own CPU
clock is what keeps the profile right when the main thread is blocked
while workers burn CPU, and when C code runs without the GIL.

Ticks come from two clocks, because each one alone fails somewhere:

* SIGPROF from ``setitimer(ITIMER_PROF)``, as in Go.  Python runs the
  handler in the main thread, so it ticks while the main thread runs
  Python (an asyncio loop keeps a helper thread from ever getting the GIL).
* A helper thread that ticks itself whenever no tick happened for one
  period: it covers a main thread that is blocked, a main thread whose
  restarted system call keeps it from its handler, and ``start`` off the
  main thread or with SIGPROF taken by someone else.

The handler installs with SA_RESTART (``siginterrupt(False)``), so no
system call of the host program sees EINTR; the previous handler and
timer are restored when the last consumer stops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import CodeType, FrameType, ModuleType
from typing import Any

from pyproperf import _stacks
from pyproperf._builder import ProfileBuilder
from pyproperf._labels import LabelSet

__all__ = ["CLOCKS", "INTERNAL_THREAD_PREFIX", "MAX_HZ", "Collector", "engine"]

CLOCKS = ("cpu", "wall")
# Threads pyproperf starts are named so; the sampler leaves them out.
INTERNAL_THREAD_PREFIX = "pyproperf-"
MAX_HZ = 10_000


# Aggregation key: (stack key, labels, thread name) -> [samples, nanoseconds].
_Key = tuple[_stacks.StackKey, "LabelSet | None", str]


def _thread_cpu_clock(native_id: int) -> int:
    """Linux clock id of a thread's CPU-time clock (glibc's MAKE_THREAD_CPUCLOCK).

    Built from the kernel thread id rather than ``pthread_getcpuclockid``:
    a thread that exits between two ticks then yields EINVAL, never a read
    of freed pthread memory.
    """
    return ((~native_id) << 3) | 6


def _real_thread_module() -> ModuleType:
    """The OS-thread primitives, even under gevent's monkey patching.

    The helper clock must be a real thread and our locks real locks: a
    patched ``threading`` would give a greenlet that never runs while the
    program computes.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("_thread"):
        module = ModuleType("_thread_original")
        for name in ("start_new_thread", "allocate_lock", "get_ident", "RLock"):
            setattr(module, name, monkey.get_original("_thread", name))
        return module
    import _thread

    return _thread


class _ThreadClock:
    """Per-thread clock state kept between ticks."""

    __slots__ = ("clock", "cpu", "internal", "last", "thread", "wall")

    def __init__(self, clock: int | None, cpu: int, wall: int, thread: threading.Thread | None):
        # pyproperf's own threads (heap sampler, HTTP server) are never sampled.
        self.internal = thread is not None and thread.name.startswith(INTERNAL_THREAD_PREFIX)
        self.clock = clock
        self.cpu = cpu
        self.wall = wall
        self.thread = thread
        # The stack and labels seen at the last tick: where CPU used after it
        # is charged if the thread exits before the next tick.
        self.last: tuple[_stacks.StackKey, LabelSet | None] | None = None


class Collector:
    """One profile being collected."""

    __slots__ = ("active", "agg", "clock", "code", "hz", "start_mono", "start_wall")

    def __init__(self, hz: int, clock: str, code: CodeType | None = None) -> None:
        self.hz = hz
        self.clock = clock
        # For @cpu_profile: only stacks running this code, only while called.
        self.code = code
        self.active = 0
        self.agg: dict[_Key, list[int]] = {}
        self.start_wall = time.time_ns()
        self.start_mono = time.monotonic_ns()

    def build(self, agg: dict[_Key, list[int]] | None = None) -> bytes:
        """Encode the samples collected so far as a gzipped profile."""
        agg = self.agg if agg is None else agg
        kind = self.clock
        period = 1_000_000_000 // self.hz
        what = (
            "CPU time each thread used, read from per-thread CPU clocks"
            if kind == "cpu"
            else "wall time of every thread, running or waiting"
        )
        builder = ProfileBuilder(
            [("samples", "count"), (kind, "nanoseconds")],
            period_type=(kind, "nanoseconds"),
            period=period,
            time_nanos=self.start_wall,
            duration_nanos=time.monotonic_ns() - self.start_mono,
            comments=[f"pyproperf {kind} profile at {self.hz} Hz: values are the {what}"],
        )
        resolver = _stacks.Resolver()
        for (key, labels, thread_name), (count, nanos) in agg.items():
            pairs: list[tuple[str, str]] = list(labels.pairs) if labels else []
            if thread_name and not any(k == "thread" for k, _ in pairs):
                pairs.append(("thread", thread_name))
            builder.add_ids(resolver.location_ids(key, builder), [count, nanos], pairs)
        return builder.to_gzip()


class _Engine:
    """The single sampler shared by every collector in the process."""

    def __init__(self) -> None:
        real = self._real = _real_thread_module()
        self._lock = real.RLock()  # collectors, start/stop
        self._tick_lock = real.allocate_lock()  # one tick at a time
        self._collectors: tuple[Collector, ...] = ()
        self._want_cpu = False
        self._want_wall = False
        self._states: dict[int, _ThreadClock] = {}
        self._period_ns = 10_000_000
        self._last_tick = 0
        self._last_handler_tick = 0
        self._helper_running = False
        self._helper_ident: int | None = None
        self._stop = real.allocate_lock()  # held while the helper should run
        self._helper_done = real.allocate_lock()  # held while the helper runs
        self._signals = False  # our SIGPROF handler is installed
        self._restore_pending = False  # waiting for the main thread to restore it
        self._previous_handler: Any = None
        # The real main thread (gevent hides it from threading), set with our handler.
        self._main_ident: int | None = None
        self.errors = 0  # ticks that failed (never raised into the host program)
        self._exit_hooked = False

    # -- consumers -------------------------------------------------------------

    def add(self, collector: Collector) -> None:
        with self._lock:
            if not self._collectors:
                self._start(collector.hz)
            self._collectors = (*self._collectors, collector)
            self._reconfigure()

    def feeds(self, collector: Collector) -> bool:
        """Whether ticks currently reach ``collector``."""
        return collector in self._collectors

    def remove(self, collector: Collector) -> None:
        """Stop feeding ``collector``, after one last tick so its tail is counted."""
        with self._lock:
            if collector not in self._collectors:
                return
            with self._tick_lock:
                self._tick(None)
            self._collectors = tuple(c for c in self._collectors if c is not collector)
            if self._collectors:
                self._reconfigure()
            else:
                self._shutdown()

    def snapshot(self, collector: Collector) -> dict[_Key, list[int]]:
        """A consistent copy of what ``collector`` holds (it may still be fed)."""
        with self._tick_lock:
            return {k: list(v) for k, v in collector.agg.items()}

    def _reconfigure(self) -> None:
        collectors = self._collectors
        self._want_cpu = any(c.clock == "cpu" for c in collectors)
        self._want_wall = any(c.clock == "wall" for c in collectors)
        period = 1_000_000_000 // max(c.hz for c in collectors)
        if period != self._period_ns:
            self._period_ns = period
            if self._signals:
                seconds = period / 1e9
                signal.setitimer(signal.ITIMER_PROF, seconds, seconds)
        if not self._signals:
            self._install_signals()

    # -- engine start and stop ---------------------------------------------------

    def _start(self, hz: int) -> None:
        self._period_ns = 1_000_000_000 // hz
        self._baseline()
        self._hook_thread_exit()
        real = self._real = _real_thread_module()
        self._stop = real.allocate_lock()
        self._stop.acquire()
        self._helper_done = real.allocate_lock()
        self._helper_done.acquire()
        self._helper_running = True
        real.start_new_thread(self._run_helper, ())

    def _install_signals(self) -> None:
        """Take SIGPROF if we are on the main thread and nobody else uses it."""
        if self._restore_pending:
            # Our handler is still installed from the previous run: re-arm it.
            self._restore_pending = False
            self._signals = True
            seconds = self._period_ns / 1e9
            signal.setitimer(signal.ITIMER_PROF, seconds, seconds)
            return
        if not hasattr(signal, "SIGPROF") or not hasattr(signal, "setitimer"):
            return
        current = signal.getsignal(signal.SIGPROF)
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return  # a profiler or the application owns SIGPROF: leave it alone
        if signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0):
            return
        try:
            self._previous_handler = signal.signal(signal.SIGPROF, self._on_sigprof)
        except (ValueError, OSError):  # not the main thread
            return
        signal.siginterrupt(signal.SIGPROF, False)  # SA_RESTART: no EINTR in the host
        self._main_ident = self._real.get_ident()
        seconds = self._period_ns / 1e9
        signal.setitimer(signal.ITIMER_PROF, seconds, seconds)
        self._signals = True

    def _shutdown(self) -> None:
        self._collectors = ()
        self._want_cpu = self._want_wall = False
        if self._signals:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            self._signals = False
            try:
                self._restore_handler()
            except ValueError:
                # Only the main thread may set handlers: our handler does it
                # when it next runs there; wake it once to make that soon.
                self._restore_pending = True
                if self._main_ident is not None:  # set whenever our handler is
                    try:
                        signal.pthread_kill(self._main_ident, signal.SIGPROF)
                    except (OSError, ValueError):
                        pass
        if self._helper_running:
            self._helper_running = False
            self._stop.release()
            if self._helper_ident != self._real.get_ident():
                self._helper_done.acquire()  # joined: no thread survives stop
            self._helper_ident = None
        self._states = {}

    def _restore_handler(self) -> None:
        """Put back the previous SIGPROF handler once no SIGPROF of ours is pending.

        A timer signal generated just before the timer was disarmed can still
        be pending for a thread that has not run yet; restoring SIG_DFL
        before it lands would let it kill the process.
        """
        deadline = time.monotonic() + 0.5
        while signal.SIGPROF in signal.sigpending() and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.signal(signal.SIGPROF, self._previous_handler)
        self._previous_handler = None
        self._restore_pending = False

    def after_fork_in_child(self) -> None:
        """The child starts clean: no collectors, no timer, the old handler back."""
        real = _real_thread_module()
        self._lock = real.RLock()
        self._tick_lock = real.allocate_lock()
        self._collectors = ()
        self._want_cpu = self._want_wall = False
        self._helper_running = False
        self._helper_ident = None
        self._states = {}
        self._main_ident = real.get_ident()  # the forking thread is the child's main thread
        if self._signals or self._restore_pending:
            self._signals = False
            try:
                signal.setitimer(signal.ITIMER_PROF, 0, 0)
                signal.signal(signal.SIGPROF, self._previous_handler)
                self._restore_pending = False
                self._previous_handler = None
            except (ValueError, OSError):
                self._restore_pending = True

    # -- the two clocks ----------------------------------------------------------

    def _on_sigprof(self, signum: int, frame: FrameType | None) -> None:
        """SIGPROF handler: tick from the main thread, with its interrupted frame."""
        try:
            if self._restore_pending:
                if not self._signals:
                    self._restore_handler()
                return
            now = time.monotonic_ns()
            # ITIMER_PROF fires on kernel ticks (4 ms on a HZ=250 kernel), so
            # a 10 ms timer arrives after 8 or 12 ms: accept anything past half
            # a period, and let the CPU-time weights even out the spacing.
            if now - self._last_tick < self._period_ns // 2:
                return
            if not self._tick_lock.acquire(blocking=False):
                return
            try:
                self._last_tick = self._last_handler_tick = now
                self._tick(frame)
            finally:
                self._tick_lock.release()
        except Exception:
            self.errors += 1

    def _helper_delay(self) -> int:
        """How long after the last tick the helper ticks itself.

        While the SIGPROF handler keeps ticking, the helper stays out of its
        way: it can only run when the main thread lets go of the GIL (in an
        event loop's select, say), so its samples of the main thread would
        pile up there.  It steps in after two silent periods, and ticks every
        period once the handler has been silent for three.
        """
        period = self._period_ns
        if not self._signals or time.monotonic_ns() - self._last_handler_tick > 3 * period:
            return period * 9 // 10
        return 2 * period

    def _main_allows_helper_tick(self) -> bool:
        """Whether a helper tick cannot bias where the main thread's CPU goes.

        With our handler armed, a main thread that used CPU since the last
        tick will tick itself soon, unless it is stuck where handlers cannot
        run (C code, a restarted system call), which shows as more CPU used
        than a period and a half without a tick.  A main thread that used
        (almost) none is blocked, and sampling it anywhere is right.
        """
        if not self._signals:
            return True
        st = self._states.get(self._main_ident) if self._main_ident is not None else None
        if st is None or st.clock is None:
            return True
        try:
            used = time.clock_gettime_ns(st.clock) - st.cpu
        except OSError:
            return True
        period = self._period_ns
        return used < period // 4 or used >= 3 * period // 2

    def _run_helper(self) -> None:
        """Helper clock: tick whenever nothing else did for one period."""
        self._helper_ident = self._real.get_ident()
        stop = self._stop
        done = self._helper_done
        try:
            while True:
                wait = self._last_tick + self._helper_delay() - time.monotonic_ns()
                if wait > 0:
                    if stop.acquire(timeout=wait / 1e9):
                        return
                    continue
                if not self._helper_running:
                    return
                if not self._main_allows_helper_tick():
                    # The handler's tick is due: don't sample the main thread
                    # at the one moment it let go of the GIL.
                    if stop.acquire(timeout=self._period_ns / 2e9):
                        return
                    continue
                if self._tick_lock.acquire(blocking=False):
                    try:
                        now = time.monotonic_ns()
                        if now - self._last_tick >= self._helper_delay():
                            self._last_tick = now
                            self._tick(None)
                    except Exception:
                        self.errors += 1
                    finally:
                        self._tick_lock.release()
                elif stop.acquire(timeout=self._period_ns / 4e9):
                    return
        finally:
            done.release()

    # -- ticks ---------------------------------------------------------------------

    def thread_exiting(self, thread: threading.Thread) -> None:
        """Charge what a finishing thread used since the last tick (else it would be lost).

        Runs in the exiting thread, from the ``Thread._bootstrap_inner`` hook,
        while its CPU clock can still be read.  The time goes to the stack
        the last tick saw; a thread that lived between two ticks is charged
        to its ``run``/target function.
        """
        ident = thread.ident
        if not self._collectors or ident is None:
            return
        if thread.name.startswith(INTERNAL_THREAD_PREFIX):
            return
        with self._tick_lock:
            collectors = self._collectors
            st = self._states.get(ident)
            if st is None:
                st = self._new_state(thread, self._last_tick)
            if st.clock is None:
                return
            try:
                cpu = time.clock_gettime_ns(st.clock)
            except OSError:
                return
            now = time.monotonic_ns()
            cpu_delta, wall_delta = cpu - st.cpu, now - st.wall
            st.cpu, st.wall = cpu, now
            if st.last is not None:
                key, labels = st.last
            else:
                target = getattr(thread, "_target", None) or type(thread).run
                code = getattr(target, "__code__", None)
                key, labels = _stacks.capture(sys._getframe(), ident)
                if isinstance(code, CodeType):
                    key = (code, -1, *key)
            _credit(collectors, key, labels, thread.name, cpu_delta, wall_delta)

    def _hook_thread_exit(self) -> None:
        """Wrap ``threading.Thread._bootstrap_inner`` once, for ``thread_exiting``.

        The wrapper stays after the engine stops (it returns at once when
        nothing samples): unwrapping could not undo a wrapper someone else
        (our labels, another library) put on top of it.
        """
        cls = threading.Thread
        original = cls.__dict__.get("_bootstrap_inner")
        if original is None or self._exit_hooked:
            return
        self._exit_hooked = True

        def _bootstrap_inner(thread: threading.Thread) -> None:
            try:
                original(thread)
            finally:
                if engine._collectors:
                    try:
                        engine.thread_exiting(thread)
                    except Exception:
                        engine.errors += 1

        _bootstrap_inner.__wrapped__ = original  # type: ignore[attr-defined]
        cls._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]

    def _baseline(self) -> None:
        """Read every known thread's clocks, so only CPU used from now on counts."""
        now = time.monotonic_ns()
        self._last_tick = now
        states: dict[int, _ThreadClock] = {}
        for thread in threading.enumerate():
            if thread.ident is None:
                continue
            st = self._new_state(thread, now)
            if st.clock is not None:
                try:
                    st.cpu = time.clock_gettime_ns(st.clock)
                except OSError:
                    continue
            states[thread.ident] = st
        self._states = states

    def _new_state(self, thread: threading.Thread | None, now: int) -> _ThreadClock:
        native = getattr(thread, "native_id", None) if thread is not None else None
        clock = _thread_cpu_clock(native) if native else None
        return _ThreadClock(clock, 0, now, thread)

    def _tick(self, main_frame: FrameType | None) -> None:
        """Credit each thread's CPU/wall time since the last tick to its current stack."""
        collectors = self._collectors
        if not collectors:
            return
        want_cpu = self._want_cpu
        want_wall = self._want_wall
        now = time.monotonic_ns()
        frames = sys._current_frames()
        if main_frame is not None and self._main_ident is not None:
            me = self._main_ident
            frames[me] = main_frame
        else:
            me = self._real.get_ident()
        states = self._states
        active = getattr(threading, "_active", None)
        helper = self._helper_ident
        main_ident = self._main_ident
        gettime = time.clock_gettime_ns
        capture = _stacks.capture
        for ident, frame in frames.items():
            if ident == helper:
                continue
            st = states.get(ident)
            if (
                st is not None
                and st.thread is not None
                and active is not None
                and active.get(ident, st.thread) is not st.thread
            ):
                st = None  # the ident was reused by a new thread
            if st is None:
                thread = active.get(ident) if active is not None else None
                st = self._new_state(thread, self._last_tick)
                if st.clock is None and ident == main_ident:
                    st.clock = _thread_cpu_clock(os.getpid())  # the main thread's tid
                    st.cpu = gettime(st.clock)
                states[ident] = st
            if st.internal:
                continue
            cpu_delta = 0
            if want_cpu and st.clock is not None:
                try:
                    cpu = gettime(st.clock)
                except OSError:  # the thread has just exited
                    continue
                cpu_delta = cpu - st.cpu
                st.cpu = cpu
            wall_delta = now - st.wall
            st.wall = now
            if cpu_delta <= 0 and not want_wall:
                continue
            key, labels = st.last = capture(frame, ident)
            t = st.thread
            _credit(collectors, key, labels, t.name if t is not None else "", cpu_delta, wall_delta)
        # The tick's own CPU is not the host program's: restart this thread's clock.
        st = states.get(me)
        if st is not None and st.clock is not None and want_cpu:
            try:
                st.cpu = gettime(st.clock)
            except OSError:
                pass
        if len(states) > len(frames):
            alive = active if active is not None else {}
            for ident in [i for i in states if i not in frames and i not in alive]:
                del states[ident]


def _credit(
    collectors: tuple[Collector, ...],
    key: _stacks.StackKey,
    labels: LabelSet | None,
    thread_name: str,
    cpu_delta: int,
    wall_delta: int,
) -> None:
    """Add one observation of a thread to every collector that wants it."""
    k = (key, labels, thread_name)
    for c in collectors:
        weight = cpu_delta if c.clock == "cpu" else wall_delta
        if weight <= 0 or (c.code is not None and (not c.active or c.code not in key)):
            continue
        slot = c.agg.get(k)
        if slot is None:
            c.agg[k] = [1, weight]
        else:
            slot[0] += 1
            slot[1] += weight


engine = _Engine()


os.register_at_fork(after_in_child=engine.after_fork_in_child)
