"""The CPU and wall-clock sampler: the coordinator of clocks, threads and profiles.

One engine serves every consumer at once (``start_cpu_profile``, ``with
cpu_profile(...)`` blocks and ``@cpu_profile`` functions; their API is in
``_cpu``).  Its parts, one job each:

* ``_sigprof.SignalClock``: SIGPROF every period of the main thread's CPU
  time; the handler looks at the main thread where it runs.
* ``_helper.HelperClock``: a helper thread that looks at every other
  thread (and at the main thread while it is blocked or in C), with a
  short GIL probe that tells running threads from waiting ones.
* ``_estimate``: per-thread state and ``observe``, which gathers a
  thread's CPU and running sightings in windows and splits each window's
  CPU among the stacks seen running in it.
* this module: the collectors (one per profile being written), start and
  stop, and the ticks that read clocks and stacks and feed collectors.

Each tick reads each thread's own CPU clock, so the CPU in a profile is
measured, not counted: a main thread blocked while workers burn CPU, or C
code running without the GIL, is weighed right.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Collection
from types import CodeType, FrameType
from typing import NamedTuple

from pyproperf import _hooks, _stacks
from pyproperf._builder import ProfileBuilder
from pyproperf._estimate import (
    INTERNAL_THREAD_PREFIX,
    Charge,
    Sighting,
    ThreadState,
    blocks_at,
    expire,
    observe,
    place,
    settle,
    tick,
)
from pyproperf._helper import HelperClock
from pyproperf._labels import LabelSet
from pyproperf._sigprof import SignalClock, thread_cpu_clock

__all__ = [
    "CLOCKS", "INTERNAL_THREAD_PREFIX", "MAX_HZ", "Built", "Collector", "Look", "engine",
    "running_threads",
]

CLOCKS = ("cpu", "wall")
MAX_HZ = 10_000


# Aggregation key: (stack key, labels, thread name) -> [samples, nanoseconds].
_Key = tuple[_stacks.StackKey, "LabelSet | None", str]


class Built(NamedTuple):
    """An encoded profile and what it holds, for a summary without decoding it."""

    data: bytes  # the gzipped profile
    duration_ns: int  # its duration_nanos
    samples: int  # the sum of its "samples" values
    nanos: int  # the sum of its "cpu" or "wall" values


class Collector:
    """One profile being collected."""

    __slots__ = ("active", "agg", "busy_ns", "busy_since", "clock", "code", "hz", "start_mono",
                 "start_wall")

    def __init__(self, hz: int, clock: str, code: CodeType | None = None) -> None:
        self.hz = hz
        self.clock = clock
        # For @cpu_profile: only stacks running this code, only while called.
        self.code = code
        self.active = 0  # calls in progress (function collectors)
        self.busy_ns = 0  # time with a call in progress, calls ended so far
        self.busy_since = 0
        self.agg: dict[_Key, list[int]] = {}
        self.start_wall = time.time_ns()
        self.start_mono = time.monotonic_ns()

    @property
    def wants_samples(self) -> bool:
        return self.code is None or self.active > 0

    def call_started(self) -> bool:
        """Count a call in; True when it is the only one (sampling must resume)."""
        self.active += 1
        if self.active == 1:
            self.busy_since = time.monotonic_ns()
            return True
        return False

    def call_ended(self) -> bool:
        """Count a call out; True when none is left (sampling may pause)."""
        self.active -= 1
        if self.active == 0:
            self.busy_ns += time.monotonic_ns() - self.busy_since
            return True
        return False

    def duration_ns(self) -> int:
        """Wall time covered: since start, or for a function the time calls were in progress."""
        now = time.monotonic_ns()
        if self.code is None:
            return now - self.start_mono
        return self.busy_ns + (now - self.busy_since if self.active else 0)

    def build(self, agg: dict[_Key, list[int]] | None = None) -> bytes:
        """Encode the samples collected so far as a gzipped profile."""
        return self.build_counted(agg).data

    def build_counted(self, agg: dict[_Key, list[int]] | None = None) -> Built:
        """``build``, with the totals of what it wrote."""
        agg = self.agg if agg is None else agg
        kind = self.clock
        period = 1_000_000_000 // self.hz
        what = (
            "CPU time each thread used, read from per-thread CPU clocks"
            if kind == "cpu"
            else "wall time of every thread, running or waiting"
        )
        duration = self.duration_ns()
        builder = ProfileBuilder(
            [("samples", "count"), (kind, "nanoseconds")],
            period_type=(kind, "nanoseconds"),
            period=period,
            time_nanos=self.start_wall,
            duration_nanos=duration,
            comments=[f"pyproperf {kind} profile at {self.hz} Hz: values are the {what}"],
        )
        resolver = _stacks.Resolver()
        total_count = total_nanos = 0
        for (key, labels, thread_name), (count, nanos) in agg.items():
            pairs: list[tuple[str, str]] = list(labels.pairs) if labels else []
            if thread_name and not any(k == "thread" for k, _ in pairs):
                pairs.append(("thread", thread_name))
            if key and not _stacks.strip_launcher_root(key):
                continue  # only ``run``'s launcher ran (compiling the program, exiting)
            builder.add_ids(resolver.location_ids(key, builder), [count, nanos], pairs)
            total_count += count
            total_nanos += nanos
        return Built(builder.to_gzip(), duration, total_count, total_nanos)


class _Engine:
    """The single sampler shared by every collector in the process."""

    def __init__(self) -> None:
        real = self._real = _hooks.real_thread()
        self._lock = real.RLock()  # collectors, start/stop
        self._tick_lock = real.allocate_lock()  # one tick at a time
        self._collectors: tuple[Collector, ...] = ()
        self.want_cpu = False
        self.want_wall = False
        self.sampling = False  # some collector wants samples now
        self.states: dict[int, ThreadState] = {}
        self.period_ns = 10_000_000
        self.last_signal_tick = 0
        self.signals = SignalClock(self._on_signal)
        self.helper = HelperClock(self, real)
        self.errors = 0  # ticks that failed (never raised into the host program)
        self._threads_hooked = False

    # -- consumers -------------------------------------------------------------

    def add(self, collector: Collector) -> None:
        with self._lock:
            if not self._collectors:
                self._start(collector.hz)
            else:
                with self._tick_lock:
                    self._settle_all()  # CPU used so far is not the new profile's
            self._collectors = (*self._collectors, collector)
            self._reconfigure()

    def feeds(self, collector: Collector) -> bool:
        """Whether ticks currently reach ``collector``."""
        return collector in self._collectors

    def remove(self, collector: Collector) -> None:
        """Stop feeding ``collector``, after settling every thread so its tail is counted."""
        with self._lock:
            if collector not in self._collectors:
                return
            with self._tick_lock:
                self._settle_all()
            self._collectors = tuple(c for c in self._collectors if c is not collector)
            if self._collectors:
                self._reconfigure()
            else:
                self._shutdown()

    def snapshot(self, collector: Collector) -> dict[_Key, list[int]]:
        """A consistent copy of what ``collector`` holds (it may still be fed)."""
        with self._tick_lock:
            return {k: list(v) for k, v in collector.agg.items()}

    def activity_changed(self) -> None:
        """A function collector's first call began or its last call ended."""
        with self._lock:
            self._reconfigure()

    def _reconfigure(self) -> None:
        collectors = self._collectors
        self.want_cpu = any(c.clock == "cpu" for c in collectors)
        self.want_wall = any(c.clock == "wall" for c in collectors)
        self.period_ns = 1_000_000_000 // max(c.hz for c in collectors)
        if not self.signals.installed:
            self.signals.install(self.period_ns)
        self.signals.set_period(self.period_ns)
        sampling = any(c.wants_samples for c in collectors)
        if sampling == self.sampling:
            return
        if sampling:
            # Only CPU used from now on counts: not what ran between calls.
            with self._tick_lock:
                self._baseline()
                self.helper.baseline(self.read_clocks(every=True))
            self.sampling = True
            self.signals.arm()
            self.helper.wake()
        else:
            with self._tick_lock:
                self._settle_all()
                self.sampling = False
                _hooks.restore_switch_interval()
            self.signals.disarm()

    # -- engine start and stop ---------------------------------------------------

    def _start(self, hz: int) -> None:
        self.period_ns = 1_000_000_000 // hz
        self.sampling = False
        self._hook_threads()
        self.helper = HelperClock(self, self._real)
        self.helper.start()

    def _shutdown(self) -> None:
        self._collectors = ()
        self.want_cpu = self.want_wall = self.sampling = False
        self.signals.uninstall()
        self.helper.stop()
        _hooks.restore_switch_interval()
        self.states = {}

    def after_fork_in_child(self) -> None:
        """The child starts clean: no collectors, no timer, the old handler back.

        threading keeps the parent's native id for the thread that forked
        (multiprocessing corrects it in its own children, nothing else does);
        each thread's CPU clock is read by that id, so a profile started in
        the child would read none (EINVAL) without the correction here.
        """
        set_native_id = getattr(threading.current_thread(), "_set_native_id", None)
        if callable(set_native_id):
            try:
                set_native_id()
            except Exception:
                pass
        real = _hooks.real_thread()
        self._lock = real.RLock()
        self._tick_lock = real.allocate_lock()
        self._collectors = ()
        self.want_cpu = self.want_wall = self.sampling = False
        self.helper.forget()
        self.states = {}
        self.signals.after_fork_in_child()

    # -- thread states -------------------------------------------------------------

    def _new_state(self, ident: int, thread: threading.Thread | None, now: int) -> ThreadState:
        native = getattr(thread, "native_id", None) if thread is not None else None
        if not native and ident == self.signals.main_ident:
            native = os.getpid()  # gevent can hide the real main thread from threading
        return ThreadState(thread_cpu_clock(native) if native else None, 0, now, thread)

    def _state_for(self, ident: int, active: dict[int, threading.Thread] | None, now: int
                   ) -> ThreadState:
        """The state of thread ``ident``, made on first sight (its CPU from its start counts).

        A new OS thread may reuse an exited one's ident; it has a new kernel
        thread id, hence a new CPU clock.  (Under gevent, ``threading``'s
        table can name a greenlet for the main thread's ident: same clock,
        same state.)
        """
        st = self.states.get(ident)
        thread = active.get(ident) if active is not None else None
        if st is not None and thread is not None and thread is not st.thread:
            native = getattr(thread, "native_id", None)
            if native and thread_cpu_clock(native) != st.clock:
                self._drop(st, now)
                st = None  # the ident was reused by a new thread
        if st is None:
            st = self.states[ident] = self._new_state(ident, thread, now)
        return st

    def _baseline(self) -> None:
        """Read every thread's clock, so only CPU used from now on counts."""
        now = time.monotonic_ns()
        active = getattr(threading, "_active", None)
        states: dict[int, ThreadState] = {}
        for ident in sys._current_frames():
            st = self._new_state(ident, active.get(ident) if active else None, now)
            if st.clock is not None:
                try:
                    st.charged = time.clock_gettime_ns(st.clock)
                except OSError:
                    continue
            states[ident] = st
        self.states = states
        self.last_signal_tick = 0

    def read_clocks(
        self, *, every: bool = False, only: Collection[int] | None = None
    ) -> dict[int, int]:
        """CPU clocks of threads that used CPU since their last look (all: ``every``),
        of threads ``only`` if given."""
        out = {}
        gettime = time.clock_gettime_ns
        states = self.states
        for ident, st in list(states.items() if only is None else
                              ((i, states.get(i)) for i in only)):
            if st is None or st.clock is None or st.internal:
                continue
            try:
                cpu = gettime(st.clock)
            except OSError:
                continue
            if every or cpu > st.charged:
                out[ident] = cpu
        return out

    def main_covered(self) -> int | None:
        """The main thread's ident while its own SIGPROF ticks look at it, else None."""
        if self.signals.armed and time.monotonic_ns() - self.last_signal_tick < 2 * self.period_ns:
            return self.signals.main_ident
        return None

    # -- ticks -------------------------------------------------------------------------

    def _on_signal(self, frame: FrameType | None) -> None:
        """SIGPROF tick, in the main thread: it is running where ``frame`` stands."""
        try:
            if not self._tick_lock.acquire(blocking=False):
                return
            try:
                collectors = self._collectors
                ident = self.signals.main_ident
                if not collectors or not self.sampling or ident is None:
                    return
                now = self.last_signal_tick = time.monotonic_ns()
                st = self._state_for(ident, getattr(threading, "_active", None), now)
                if st.clock is None:
                    return
                gettime = time.clock_gettime_ns
                sighting = _stacks.capture(frame, ident)
                # While the helper looks every period anyway, no need to ask.
                others = False
                for other in list(self.states.values()) if self.helper.quiet else ():
                    if others:
                        break
                    if other is not st and other.clock is not None and not other.internal:
                        try:
                            others = gettime(other.clock) > other.charged
                        except OSError:
                            pass
                # Read last: the tick's own CPU goes where the main thread is,
                # as a Go signal handler's does, with any garbage collection
                # it set off (the program's garbage, collected at this point).
                used = gettime(st.clock) - st.charged
                self._charge(collectors, st, sighting, True, used, now, own_timer=True)
            finally:
                self._tick_lock.release()
            if others:
                self.helper.wake()
            self.helper.look_if_overdue(now)
        except Exception:
            self.errors += 1

    def capture(self, idents: list[int]) -> dict[int, Sighting]:
        """The stacks of threads ``idents`` now (before a probe lets them move)."""
        frames = sys._current_frames()
        try:
            capture = _stacks.capture
            return {i: capture(frames[i], i) for i in idents if i in frames}
        finally:
            frames.clear()

    def helper_tick(
        self, before: dict[int, int], seen: dict[int, Sighting], window: int, interval_ns: int,
        since: int, *, wait: bool = True, probe_end: dict[int, int] | None = None,
        stopped: frozenset[int] = frozenset(),
    ) -> Look:
        """The helper's look at every thread (see ``_helper``).

        ``before``: CPU clocks read before the GIL probe, which lasted
        ``window`` ns; ``seen``: the stacks taken then; ``interval_ns``: a
        run of CPU in the window this long means the thread was made to
        let go of the GIL mid-work; ``since``: the time since the previous
        look, which a running sighting stands for (``_estimate``); ``wait``
        False (the SIGPROF handler's look): skip the look rather than wait
        for another thread's tick; ``probe_end``: the clocks read at the
        probe's end, if no thread held on to the GIL at it (None if one
        did); ``stopped``: threads that ran part of the probe and none of a
        second one (``_helper._runs_that_ended``).
        """
        if not self._tick_lock.acquire(blocking=wait):
            return Look(False, False)
        try:
            return self._look_at_threads(
                before, seen, window, interval_ns, since, probe_end, stopped)
        finally:
            self._tick_lock.release()

    def _look_at_threads(
        self, before: dict[int, int], seen: dict[int, Sighting], window: int, interval_ns: int,
        since: int, probe_end: dict[int, int] | None, stopped: frozenset[int],
    ) -> Look:
        """``helper_tick``'s look, with the tick lock held."""
        collectors = self._collectors
        if not collectors or not self.sampling:
            return Look(False, False)
        now = time.monotonic_ns()
        main = self.main_covered()
        looks = self._gather(before, seen, probe_end, stopped, main, now)
        probes = [probed for _, _, _, probed, _ in looks]
        beside = self._cpu_in_window(main, before, probe_end)
        running = running_threads(probes, window, interval_ns, beside)
        # No thread held on to the GIL at the probe's end, and together the threads
        # used little of it: a thread that took none of it was blocked.
        idle = probe_end is not None and 4 * (sum(probes) + beside) < window
        held_back = False
        shared = 0
        for (st, sighting, used, probed, ended), run in zip(looks, running, strict=True):
            through = 5 * probed >= 4 * window
            if run and not through:
                shared += 1  # it did not run through the probe: it took turns at the GIL
            sure = True
            if ended is not None:
                run, sure = _probe_verdict(st, sighting, run, through, idle and probed == 0,
                                           ended)
            # Bursty: it used CPU unseen, less than half the time since the last look
            # at it (more is a busy thread a probe missed; seen for the first time, a
            # thread has no last look).
            elapsed = now - st.wall
            bursty = 0 < 2 * used < elapsed
            # A look the GIL kept late stands for its whole delay only in a
            # thread that used that CPU (the one holding the GIL), not in
            # one that waited behind it.
            weight = min(since, max(used, 2 * self.period_ns))
            self._charge(collectors, st, sighting, run, used, now, weight=weight, sure=sure)
            if bursty and st.unseen_ns >= HELD_BACK_MIN_NS:
                held_back = True
        look = Look(held_back, shared >= 2)
        if self.want_cpu:
            self.helper.adjust_switch_interval(*look)
        return look

    def _gather(
        self, before: dict[int, int], seen: dict[int, Sighting],
        probe_end: dict[int, int] | None, stopped: frozenset[int], main: int | None, now: int,
    ) -> list[tuple[ThreadState, Sighting, int, int, bool | None]]:
        """Every thread that used CPU since its last look (every thread, for wall
        profiles): its state, stack, CPU since then, CPU in the probe, and whether its
        run ended in the probe (None: its stack was taken after the probe)."""
        collectors = self._collectors
        want_wall = self.want_wall
        helper = self.helper.ident
        active = getattr(threading, "_active", None)
        gettime = time.clock_gettime_ns
        capture = _stacks.capture
        frames = sys._current_frames()
        looks: list[tuple[ThreadState, Sighting, int, int, bool | None]] = []
        for ident, frame in frames.items():
            if ident == helper or (ident == main and not want_wall):
                continue
            st = self._state_for(ident, active, now)
            if st.internal:
                continue
            cpu = 0
            if st.clock is not None:
                try:
                    cpu = gettime(st.clock)
                except OSError:  # the thread has just exited
                    continue
            used = cpu - st.charged
            if used <= 0 and not want_wall:
                # Idle since the last look: no stack needed, but a window
                # may be due to close.
                if st.pending or st.seen:
                    _credit_all(collectors, st, expire(st, now))
                continue
            end = probe_end.get(ident, cpu) if probe_end else cpu  # at the probe's end
            probed = end - before.get(ident, end) if st.clock is not None and used > 0 else 0
            taken = seen.get(ident)  # its stack before the probe
            ended = None if taken is None or st.clock is None or used <= 0 else ident in stopped
            looks.append((st, taken or capture(frame, ident), used, probed, ended))
        self._forget_dead(frames, active, now)
        # The dict holds this frame, which holds the dict: a cycle that would keep every
        # thread's frame (and its locals) for the garbage collector, which finalizes
        # them in any order (a BytesIO before the memoryview on it: BufferError).
        frames.clear()
        return looks

    def _cpu_in_window(
        self, ident: int | None, before: dict[int, int], probe_end: dict[int, int] | None
    ) -> int:
        """CPU thread ``ident`` (the main thread its own ticks see, not looked at) used
        since ``before`` (up to ``probe_end``, if read there): its share of the GIL
        the others took turns at."""
        st = self.states.get(ident) if ident is not None else None
        if st is None or st.clock is None or ident not in before:
            return 0
        if probe_end and ident in probe_end:
            return max(0, probe_end[ident] - before[ident])
        try:
            return max(0, time.clock_gettime_ns(st.clock) - before[ident])
        except OSError:
            return 0

    def _charge(
        self,
        collectors: tuple[Collector, ...],
        st: ThreadState,
        sighting: Sighting,
        running: bool,
        used: int,
        now: int,
        *,
        weight: int = 0,
        own_timer: bool = False,
        final: bool = False,
        within: CodeType | None = None,
        sure: bool = True,
    ) -> None:
        """Feed one look at a thread to the estimator and the collectors.

        ``weight``: what a running sighting stands for (``_estimate``);
        ``own_timer``: a tick of the thread's own CPU timer (``tick``);
        ``final``: close the thread's window now (a collector joins or
        leaves, sampling pauses), as ``settle`` says; ``within``: inside this
        code's call, which is ending (``sighting`` must be inside it);
        ``sure``: False for a running sighting the thread's place may undo
        (``_probe_verdict``).
        """
        used = max(used, 0)
        st.charged += used
        if final:
            st.pending += used
            charges = settle(st, now, sighting, within)
        elif own_timer:
            charges = tick(st, sighting, used, now)
        else:
            charges = observe(st, sighting, running, used, now, weight, sure=sure)
        _credit_all(collectors, st, charges)
        wall = now - st.wall
        st.wall = now
        if self.want_wall and wall > 0:
            _credit(collectors, sighting[0], sighting[1], st.name, 0, wall)

    def _settle_all(self) -> None:
        """Charge every thread's CPU up to now (a collector leaves, sampling pauses)."""
        collectors = self._collectors
        if not collectors or not self.sampling:
            return
        now = time.monotonic_ns()
        frames = sys._current_frames()
        frames[_hooks.real_get_ident()] = sys._getframe()
        active = getattr(threading, "_active", None)
        for ident, frame in frames.items():
            if ident == self.helper.ident:
                continue
            st = self._state_for(ident, active, now)
            if st.internal:
                continue
            used = 0
            if st.clock is not None:
                try:
                    used = time.clock_gettime_ns(st.clock) - st.charged
                except OSError:
                    continue
            sighting = _stacks.capture(frame, ident)
            self._charge(collectors, st, sighting, False, used, now, final=True)
        frames.clear()  # it holds this frame: no cycle for the collector (see helper_tick)

    def settle_current_thread(self, code: CodeType | None = None) -> None:
        """Charge the calling thread's CPU up to now: close its window (see ``_estimate``).

        A decorated function's call (of ``code``) is ending in this thread:
        what it used since the window opened belongs to the call, and is
        split among the stacks seen running in it while the call still
        counts as in progress.  (Without ``code``, a call is beginning: what
        the thread used before it is charged first, to its own window.)
        Otherwise a non-main thread's last stretch, looked at only after the
        call returned, would be lost to its profile.  CPU the helper never
        saw inside the call (a short call, or a helper kept from the GIL) is
        charged to the function itself
        (``code`` under "ran between samples"), as a thread's last CPU is at
        its exit, rather than lost or put outside the call.
        """
        ident = _hooks.real_get_ident()
        with self._tick_lock:
            collectors = self._collectors
            if not collectors or not self.sampling:
                return
            now = time.monotonic_ns()
            st = self._state_for(ident, getattr(threading, "_active", None), now)
            if st.clock is None or st.internal:
                return
            try:
                used = time.clock_gettime_ns(st.clock) - st.charged
            except OSError:
                return
            key, labels = _stacks.capture(sys._getframe(1), ident)
            if code is not None and code not in key:
                key = (code, -1, *key)
            self._charge(collectors, st, (key, labels), False, used, now, final=True, within=code)
            if code is not None:
                # The call is over: what the thread does next, unseen, is not in it.
                if st.last_running is not None and code in st.last_running[0]:
                    st.last_running = None
                if st.waiting_at is not None and code in st.waiting_at[0]:
                    st.waiting_at = None

    def _forget_dead(self, frames: dict[int, FrameType], active: object, now: int) -> None:
        states = self.states
        if len(states) > len(frames):
            alive = active if isinstance(active, dict) else {}
            for ident in [i for i in states if i not in frames and i not in alive]:
                self._drop(states.pop(ident), now)

    def _drop(self, st: ThreadState, now: int) -> None:
        """A thread gone without telling us: charge its open window, as its exit would."""
        if (st.pending or st.seen) and self._collectors and self.sampling:
            _credit_all(self._collectors, st, settle(st, now))

    # -- thread exit ---------------------------------------------------------------------

    def thread_exiting(self, thread: threading.Thread) -> None:
        """Charge what a finishing thread used since it was last charged (else it is lost).

        Runs in the exiting thread, from the ``Thread._bootstrap_inner``
        hook, while its CPU clock can still be read.  Only real OS threads:
        under gevent's monkey patching a ``Thread`` is a greenlet, whose
        ``native_id`` is the main thread's.
        """
        ident = thread.ident
        if not self._collectors or ident is None or ident != _hooks.real_get_ident():
            return
        if thread.name.startswith(INTERNAL_THREAD_PREFIX):
            return
        with self._tick_lock:
            collectors = self._collectors
            if not collectors or not self.sampling:
                return
            now = time.monotonic_ns()
            st = self.states.pop(ident, None)
            if st is None or st.thread is not thread:
                st = self._new_state(ident, thread, now)
            if st.clock is None:
                return
            try:
                cpu = time.clock_gettime_ns(st.clock)
            except OSError:
                return
            if cpu > st.charged:
                st.pending += cpu - st.charged
            target = getattr(thread, "_target", None) or type(thread).run
            code = getattr(target, "__code__", None)
            key, labels = _stacks.capture(sys._getframe(), ident)
            if isinstance(code, CodeType):
                key = (code, -1, *key)
            _credit_all(collectors, st, settle(st, now, (key, labels)))

    def _hook_threads(self) -> None:
        """Have every new thread wake the helper and report its exit (hooked once, for good)."""
        if self._threads_hooked:
            return
        self._threads_hooked = True

        def enter(thread: threading.Thread, frame: FrameType) -> None:
            # A new thread: the helper looks now, so the handler's check of
            # the other threads' clocks includes it from the next tick.
            if engine._collectors and not thread.name.startswith(INTERNAL_THREAD_PREFIX):
                engine.helper.wake()

        def leave(thread: threading.Thread, frame: FrameType, token: object) -> None:
            if engine._collectors:
                try:
                    engine.thread_exiting(thread)
                except Exception:
                    engine.errors += 1

        _hooks.on_thread_run(enter, leave)


# CPU a thread used unseen since the last look, from which a look asks for
# the short switch interval.  Less is a thread that polls or wakes briefly
# (0.1 ms every 10 ms, say): bursts that short the helper sees little of
# even at the short interval, and it would be shortened for nothing.
HELD_BACK_MIN_NS = 500_000


def _probe_verdict(st: ThreadState, taken: Sighting, run: bool, through: bool, blocked: bool,
                   stopped: bool) -> tuple[bool, bool]:
    """Whether a thread whose stack ``taken`` was taken before the probe was running,
    and whether that is sure.

    ``run``: what its CPU in the probe says (``running_threads``); ``through``:
    it ran 80 % of the probe or more (C code without the GIL, or the GIL's
    only taker, which may be a thread that woke at the probe's very start
    and worked on): sure.  A thread that ran only most of it may have woken from a
    blocking call just as the probe began (a request handled in 0.1 ms after
    a ``recv``): it was waiting, at the call.  ``stopped``: it ran part of
    the probe and took none of a second one (``_helper._runs_that_ended``),
    which is a run that ended in the probe, or a thread that woke in it, ran
    briefly and blocked elsewhere (an I/O loop with two places it waits at).
    ``blocked``: it took none of a probe that the other threads left mostly
    idle, so it was blocked where it was taken.

    The place tells them apart: each probe counts for it
    (``_estimate.blocks_at``).  At a place where probes found the thread
    blocked more often than running, a run that is not sure is waiting (and
    sightings made before the place was known are undone when the window
    closes: ``_estimate.settle``); a stopped run counts as running only at a
    place where they found it running more often.
    """
    where = place(taken)
    if run:
        return blocks_at(st, where, False) <= 0 or through, through
    if blocked:
        blocks_at(st, where, True)
        return False, True
    return stopped and where is not None and st.places.get(where, 0) < 0, False


class Look(NamedTuple):
    """What one helper look found, for the switch-interval policy (``_helper``)."""

    held_back: bool  # a thread used CPU it was never seen running (short bursts)
    contended: bool  # threads took turns at the GIL in the probe: they compete for it


def running_threads(probed: list[int], window: int, interval_ns: int, beside: int = 0
                    ) -> list[bool]:
    """Which threads were running at the look, from the CPU each used in the probe.

    A thread that was waiting for the GIL when the helper took it (made to
    let go mid-work) takes it as soon as the helper lets go, and runs
    through the probe but for the two hand-overs of the GIL (about half of
    a 0.3 ms probe, measured); so does a thread in C code without the GIL.
    Threads that compete for the GIL share the probe, each a good part of
    it, and together run at least half of it.  A thread that woke from a
    wait during the probe runs only its end, and is taken as waiting (its
    stack, taken before the probe, is where it waited).  A run of
    ``interval_ns`` means the thread held the GIL until made to let go,
    whatever the window.  ``beside``: CPU a thread not looked at (the main
    thread, seen by its own ticks) used in the window, its share of the
    turns.
    """
    half = window // 2
    share = window // 5
    together = beside + sum(p for p in probed if p >= share) >= half
    return [
        p > 0 and (p >= half or p >= interval_ns or (together and p >= share))
        for p in probed
    ]


def _credit_all(collectors: tuple[Collector, ...], st: ThreadState, charges: list[Charge]
                ) -> None:
    """Hand the estimator's charges of a thread's CPU to the collectors."""
    for (key, labels), count, nanos in charges:
        _credit(collectors, key, labels, st.name, nanos, 0, count)


def _credit(
    collectors: tuple[Collector, ...],
    key: _stacks.StackKey,
    labels: LabelSet | None,
    thread_name: str,
    cpu_delta: int,
    wall_delta: int,
    count: int = 1,
) -> None:
    """Add ``count`` samples of a thread to every collector that wants them."""
    k = (key, labels, thread_name)
    for c in collectors:
        weight = cpu_delta if c.clock == "cpu" else wall_delta
        if weight <= 0 or (c.code is not None and (not c.active or c.code not in key)):
            continue
        slot = c.agg.get(k)
        if slot is None:
            c.agg[k] = [count, weight]
        else:
            slot[0] += count
            slot[1] += weight


engine = _Engine()


_hooks.at_fork_child(engine.after_fork_in_child)
