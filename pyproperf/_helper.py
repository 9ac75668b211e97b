"""The helper clock: a real OS thread that looks at every thread each period.

The SIGPROF handler can only ever look at the main thread (Python runs
handlers there).  Every other thread, and the main thread while it is
blocked or inside C code, is looked at from here.

**When.**  Every period, at jittered times (0.5 to 1.5 periods apart), so
no rhythm of the program stays in step with the looks; never at a moment
the program picks (the handler's wake-up only says "look every period
again").  While only the main thread works, its own ticks see it and the
helper looks every 50 ms.  The helper thread asks Linux to wake it on
time (``_sigprof.precise_wakeups``).

**What a look sees.**  Looking needs the GIL, and CPython takes it from a
thread running Python only after a whole *switch interval* (5 ms by
default): a thread that works in bursts shorter than that, then waits,
has always finished its burst by the time the helper gets the GIL, and is
never seen working.  So while a look finds CPU it never saw running
(``held_back``), the helper sets a switch interval of 50 µs
(``_hooks.lower_switch_interval``): it then gets the GIL about 0.1-0.2 ms
after it asks, mid-burst.  The program's interval comes back 1 s after
the last look that found unseen bursts.  A shorter interval costs threads that compete
for the GIL (each forced turn costs both); a look that finds threads
competing (``contended``) puts the program's interval back for a hold
that doubles while the contention lasts (5 periods up to 8 s), and the
short one returns only when a later look needs it.  The program's own
interval is back whenever sampling stops, and in a forked child.

**Running or waiting.**  Holding the GIL, the helper cannot tell a thread
waiting for the GIL (made to let go mid-work: its stack is where it
works) from one blocked in ``sleep`` or ``wait``; Linux shows both
asleep on a futex.  So a look is a short probe:

1. read every thread's CPU clock and take the stacks;
2. let go of the GIL for ``PROBE_S``, so a thread that wants it takes it;
3. take the GIL back and read the clocks again.

A thread waiting for the GIL at step 1 takes it at once and runs through
step 2 (so does C code without the GIL); threads competing for the GIL
share step 2; a thread that woke from a wait during step 2 runs only its
end (``_sampler.running_threads``).  A thread whose burst ended during
step 2 also runs only part of it: a second probe tells it from one that
woke (``_runs_that_ended``).  Running threads are seen at their
step-1 stacks; any other thread is waiting, and ``_estimate.observe``
splits its CPU among the stacks it is seen running at in the window.  A
thread seen "running" in the standard library's waiting code is taken as
waiting.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Collection
from typing import Any, Protocol

from pyproperf import _hooks
from pyproperf._estimate import in_wait_code
from pyproperf._sigprof import precise_wakeups
from pyproperf._stacks import capture


class Engine(Protocol):
    """What the helper needs of the sampler engine (``_sampler._Engine``)."""

    period_ns: int
    last_signal_tick: int
    want_cpu: bool
    want_wall: bool
    sampling: bool
    errors: int

    def read_clocks(
        self, *, every: bool = False, only: Collection[int] | None = None
    ) -> dict[int, int]: ...
    def main_covered(self) -> int | None: ...
    def capture(self, idents: list[int]) -> dict[int, Any]: ...
    def helper_tick(
        self, before: dict[int, int], seen: dict[int, Any], window: int, interval_ns: int,
        since: int, *, wait: bool = True, probe_end: dict[int, int] | None = None,
        stopped: frozenset[int] = frozenset(),
    ) -> tuple[bool, bool]: ...


__all__ = [
    "BURST_INTERVAL_S", "CONTENDED_HOLD_MAX_NS", "CONTENDED_HOLD_PERIODS", "OVERDUE_NS", "PROBE_S",
    "UNNEEDED_NS", "Engine", "HelperClock",
]

# How long the helper lets go of the GIL in a probe: long enough for a
# thread waiting for the GIL to be woken and take it.
PROBE_S = 0.0002
PROBE_NS = int(PROBE_S * 1e9)

# The switch interval while threads work in bursts the helper cannot see at
# the program's own (see the module's docstring).  After a look finds
# threads competing for the GIL, the program's own is kept for a while:
# twice as long each time in a row, from a few periods up to the maximum.
BURST_INTERVAL_S = 0.00005
CONTENDED_HOLD_PERIODS = 5
CONTENDED_HOLD_MAX_NS = 8_000_000_000
# The program's own comes back after this long without unseen bursts.
UNNEEDED_NS = 1_000_000_000

# A look that waited more than twice max(switch interval, this) for the GIL
# found threads queueing for it; a run this long (or a whole switch
# interval, if longer) in a probe means a thread was made to let go.
LATE_FLOOR_NS = 1_000_000
RUN_FLOOR_NS = 1_000_000

# While the handler ticks, the helper still looks this often (or every four
# periods, if longer) to find threads that started without telling us.
QUIET_LOOK_NS = 50_000_000

# A helper that has not looked for this long (or three periods, if longer)
# is kept from the GIL by busy threads: the SIGPROF handler, which runs with
# the GIL, looks for it (measured on this 2-CPU VM: with the main thread and
# one worker busy for 0.15 s, the worker went unseen in 3 runs of 140, the
# helper 150 ms without the GIL in one of them).
OVERDUE_NS = 20_000_000


class HelperClock:
    """The helper thread: ticks when the SIGPROF handler cannot cover every thread."""

    def __init__(self, engine: Engine, real: Any) -> None:
        self._engine = engine
        self._real = real
        self.ident: int | None = None
        self.native_id: int | None = None  # the kernel's id of the helper thread
        self._running = False
        self._wake = real.allocate_lock()  # released to wake the helper early
        self._done = real.allocate_lock()  # held while the helper thread runs
        self._probe = real.allocate_lock()  # always held: acquire(timeout) = GIL-free pause
        self._last_clocks: dict[int, int] = {}  # CPU clocks at the end of the last look
        self._hold_until = 0  # keep the program's switch interval until then
        self._hold = 0  # how long it was kept last time (0: no contention lately)
        self._needed_at = 0  # when a look last found unseen bursts
        self.quiet = False  # only the main thread, seen by its own ticks, uses CPU
        self._jitter = random.Random()
        self._last_look = 0
        self._looking = False  # a look is in progress (the helper's or the handler's)

    def start(self) -> None:
        real = self._real
        self._wake = real.allocate_lock()
        self._wake.acquire()
        self._done = real.allocate_lock()
        self._done.acquire()
        self._probe = real.allocate_lock()
        self._probe.acquire()
        self._running = True
        started = real.allocate_lock()
        started.acquire()
        real.start_new_thread(self._run, (started,))
        started.acquire()  # until the thread knows its ids

    def stop(self) -> None:
        """Stop the thread and wait for it (unless called from it)."""
        if not self._running:
            return
        self._running = False
        self._release_wake()
        if self.ident != self._real.get_ident():
            self._done.acquire()
        self.ident = None

    def forget(self) -> None:
        """In a forked child: the thread is gone."""
        self._running = False
        self.ident = None

    def wake(self) -> None:
        """Other threads use CPU (or one started): look every period again, if not already.

        The helper then looks after a period of its own choosing, never at
        the waker's moment: the handler wakes it while the main thread runs,
        and looks made then would never find other threads working in the
        main thread's pauses.
        """
        if self.quiet:
            self.quiet = False  # the handler may have to look for it meanwhile
            self._release_wake()

    def baseline(self, clocks: dict[int, int]) -> None:
        """Sampling starts (engine's tick lock held): the next look's window starts now."""
        self._last_clocks = clocks
        self._last_look = time.monotonic_ns()

    def look_if_overdue(self, now: int) -> None:
        """From the SIGPROF handler (GIL held): look in the helper's place if it is kept out.

        Busy threads hand the GIL to each other and can keep the helper
        from it for whole profiles.  The handler's look takes no probe (it
        must not let go of the GIL in the main thread): like a helper look
        that got the GIL late, it takes the time since the last look as its
        window, and a thread that ran a good part of it is running
        (``_look``, ``_sampler.running_threads``).
        """
        engine = self._engine
        if (
            self._running
            and engine.want_cpu
            and not self.quiet
            and not self._looking
            and now - self._last_look > max(3 * engine.period_ns, OVERDUE_NS)
        ):
            self._look(0, probe=False)

    def _release_wake(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def _run(self, started: Any) -> None:
        try:
            self.ident = self._real.get_ident()
            self.native_id = threading.get_native_id()
            precise_wakeups()
        finally:
            started.release()
        engine = self._engine
        try:
            while self._running:
                period = engine.period_ns
                # While only the main thread works, its own ticks see it: look
                # rarely, to find threads that start without telling us.  Else
                # every period, at jittered times that no rhythm of the
                # program can keep in step with.
                signal_active = (
                    not engine.want_wall
                    and time.monotonic_ns() - engine.last_signal_tick < 2 * period
                )
                self.quiet = quiet = self.quiet and signal_active
                if quiet:
                    timeout = max(4 * period, QUIET_LOOK_NS)
                else:
                    timeout = int(period * (0.5 + self._jitter.random()))
                asked = time.monotonic_ns()
                woken = self._wake.acquire(timeout=timeout / 1e9)
                if not self._running:
                    return
                if woken:
                    self.quiet = False
                    continue
                if not engine.sampling:
                    continue
                # How long the GIL took to come back after the wait ended.
                late = time.monotonic_ns() - asked - timeout
                try:
                    self.quiet = not self._look(late)
                except Exception:
                    engine.errors += 1
        finally:
            self._done.release()

    def adjust_switch_interval(self, held_back: bool, contended: bool) -> None:
        """After a look (engine's tick lock held, sampling): the interval the next needs.

        Short bursts the look could not see (``held_back``) ask for the
        short interval, and keep it while they go on; threads competing for
        the GIL (``contended``) make the program's own come back, since
        each forced turn at the GIL costs them both, for a hold that
        doubles while contention persists.
        """
        now = time.monotonic_ns()
        if held_back:
            self._needed_at = now
        if contended:
            base = CONTENDED_HOLD_PERIODS * self._engine.period_ns
            self._hold = min(max(2 * self._hold, base), CONTENDED_HOLD_MAX_NS)
            self._hold_until = now + self._hold
            _hooks.restore_switch_interval(keep_choice=True)
        elif now < self._hold_until:
            pass
        elif held_back:
            if _hooks.switch_interval_lowered():
                self._hold = 0  # short turns without contention: it was passing
            _hooks.lower_switch_interval(BURST_INTERVAL_S)
        elif now - self._needed_at > UNNEEDED_NS:
            _hooks.restore_switch_interval(keep_choice=True)

    def _look(self, late: int, *, probe: bool = True) -> bool:
        """One look at every thread, after a probe unless the GIL is in heavy demand.

        When getting the GIL back took more than two switch intervals, busy
        threads queue for it, and a probe would cost two more turns of the
        queue: the look then takes the time since the last look as its
        window (a thread that held the GIL a whole interval in it was made
        to let go, as in a probe).  So does a look with ``probe`` False
        (the handler's, ``look_if_overdue``).
        """
        self._looking = True
        try:
            return self._look_once(late, probe)
        finally:
            self._looking = False

    def _look_once(self, late: int, probe: bool) -> bool:
        engine = self._engine
        interval = int(sys.getswitchinterval() * 1e9)
        before: dict[int, int] = {}
        seen: dict[int, Any] = {}
        window = 0
        probe_end: dict[int, int] | None = None
        stopped: frozenset[int] = frozenset()
        others = True  # threads other than a main thread its ticks see use CPU
        if engine.want_cpu:
            if not probe or (late > 2 * max(interval, LATE_FLOOR_NS) and self._last_clocks):
                before, window = self._last_clocks, time.monotonic_ns() - self._last_look
            else:
                before = engine.read_clocks()
                # The main thread, while its own ticks see it, needs no probe.
                covered = engine.main_covered()
                looked_at = [ident for ident in before if ident != covered]
                others = bool(looked_at)
                if others:
                    seen = engine.capture(looked_at)
                    t0 = time.monotonic_ns()
                    self._probe.acquire(timeout=PROBE_S)  # let go of the GIL
                    window = time.monotonic_ns() - t0
                    if window < 2 * PROBE_NS:  # no thread held on to the GIL at its end
                        probe_end, stopped = self._runs_that_ended(before, seen, window)
        since = time.monotonic_ns() - self._last_look
        # Without a probe (the handler's look), a run of a whole interval in a
        # window of several tells nothing: the thread may have worked 1 ms and
        # then blocked in a call.  Only running for a good part of the window
        # counts (``running_threads``).
        run_ns = max(interval, RUN_FLOOR_NS) if probe else window
        engine.helper_tick(before, seen, window, run_ns, since, wait=probe,
                           probe_end=probe_end, stopped=stopped)
        if engine.want_cpu:
            self._last_clocks = engine.read_clocks(every=True)
            self._last_look = time.monotonic_ns()
        return others

    def _runs_that_ended(
        self, before: dict[int, int], seen: dict[int, Any], window: int
    ) -> tuple[dict[int, int], frozenset[int]]:
        """After the probe: the CPU clocks at its end, and the threads whose run it saw end.

        A thread that ran only part of the probe either was running when
        its stack was taken and stopped during the probe (a burst ended:
        it was running, at that stack) or was waiting and woke during it
        (it was waiting).  Counting only runs of half the probe as running
        misses about 0.1 ms of every burst's end (0.3 ms with the helper's
        own delay to the GIL, measured), a larger part of a short burst
        than of a long one.  So for a thread that ran
        part of the probe, moved from its stack and was not taken in the
        standard library's waiting code, a second probe tells the two
        apart: a run that ended (a burst) takes no CPU in it; a thread that
        woke and still works wants the GIL again, and takes it.  One that woke, ran
        briefly and blocked again elsewhere takes none either: the engine
        counts these only at a place the thread was found running at more
        often than blocked at (``_sampler._probe_verdict``).
        """
        engine = self._engine
        end = engine.read_clocks(only=before)  # the main thread's too, if it used CPU
        half = window // 2
        partial = [
            ident for ident, sighting in seen.items()
            if 0 < end.get(ident, 0) - before.get(ident, end.get(ident, 0)) < half
            and not in_wait_code(sighting)
        ]
        if not partial:
            return end, frozenset()
        frames = sys._current_frames()
        try:
            moved = [ident for ident in partial if _moved(frames.get(ident), seen[ident])]
        finally:
            frames.clear()
        if not moved:
            return end, frozenset()
        t0 = time.monotonic_ns()
        self._probe.acquire(timeout=PROBE_S)  # let go of the GIL again
        if time.monotonic_ns() - t0 >= 2 * PROBE_NS:
            return end, frozenset()  # a thread held on to the GIL: it tells nothing
        again = engine.read_clocks(every=True, only=moved)
        return end, frozenset(ident for ident in moved if again.get(ident) == end[ident])


def _moved(frame: Any, sighting: Any) -> bool:
    """Whether a thread now at ``frame`` has left the innermost place of ``sighting``
    (its leaf as ``_stacks.capture`` takes it; a walk cut at once is nowhere)."""
    now, _ = capture(frame, None, limit=1)
    return bool(now) and now[0] is not None and now[:2] != sighting[0][:2]
