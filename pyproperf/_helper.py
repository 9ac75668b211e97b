"""The helper clock: a real OS thread that looks at every thread each period.

The SIGPROF handler can only ever look at the main thread (Python runs
handlers there).  Every other thread, and the main thread while it is
blocked or inside C code, is looked at from here.

Looking at a thread while holding the GIL cannot tell, by itself, a
thread that waits for the GIL (it was running Python a moment ago: its
stack is where it works) from one blocked in ``sleep`` or ``wait`` (its
stack is where it waits); Linux shows both asleep on a futex.  So a look
is a short probe of the CPU clocks:

1. read every thread's CPU clock;
2. let go of the GIL for ``PROBE_S``, so a thread that wants it takes it;
3. take the GIL back, then read the clocks again and take the stacks.

A thread whose clock advanced by a whole switch interval in step 2 held
the GIL that long, so CPython made it let go mid-work: it is running where
it stands (waiting for the GIL).  A thread that used CPU through (nearly)
all of step 2 and whose clock still moves in step 3, while the helper
holds the GIL, runs C code without the GIL: also running.  Any other
thread is waiting, and ``_estimate.observe`` holds its CPU back for the
next time it is seen running.  A thread seen "running" in the standard
library's waiting code (it ran, then blocked in ``Condition.wait``, say,
within a long step 2) is taken as waiting by ``observe``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol


class Engine(Protocol):
    """What the helper needs of the sampler engine (``_sampler._Engine``)."""

    period_ns: int
    last_signal_tick: int
    want_cpu: bool
    want_wall: bool
    sampling: bool
    errors: int

    def read_clocks(self, *, every: bool = False) -> dict[int, int]: ...
    def main_covered(self) -> int | None: ...
    def helper_tick(self, before: dict[int, int], window: int, interval_ns: int) -> None: ...


__all__ = ["PROBE_S", "Engine", "HelperClock"]

# How long the helper lets go of the GIL in a probe: long enough for a
# thread waiting for the GIL to be woken and take it.
PROBE_S = 0.0002

# While the handler ticks, the helper still looks this often (or every four
# periods, if longer) to find threads that started without telling us.
QUIET_LOOK_NS = 50_000_000


class HelperClock:
    """The helper thread: ticks when the SIGPROF handler cannot cover every thread."""

    def __init__(self, engine: Engine, real: Any) -> None:
        self._engine = engine
        self._real = real
        self.ident: int | None = None
        self._running = False
        self._wake = real.allocate_lock()  # released to wake the helper early
        self._done = real.allocate_lock()  # held while the helper thread runs
        self._probe = real.allocate_lock()  # always held: acquire(timeout) = GIL-free pause
        self._last_clocks: dict[int, int] = {}  # CPU clocks at the end of the last look
        self._last_look = 0

    def start(self) -> None:
        real = self._real
        self._wake = real.allocate_lock()
        self._wake.acquire()
        self._done = real.allocate_lock()
        self._done.acquire()
        self._probe = real.allocate_lock()
        self._probe.acquire()
        self._running = True
        real.start_new_thread(self._run, ())

    def stop(self) -> None:
        """Stop the thread and wait for it (unless called from it)."""
        if not self._running:
            return
        self._running = False
        self.wake()
        if self.ident != self._real.get_ident():
            self._done.acquire()
        self.ident = None

    def forget(self) -> None:
        """In a forked child: the thread is gone."""
        self._running = False
        self.ident = None

    def wake(self) -> None:
        """Make the helper look now (the handler saw other threads use CPU)."""
        try:
            self._wake.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def _run(self) -> None:
        self.ident = self._real.get_ident()
        engine = self._engine
        try:
            while self._running:
                period = engine.period_ns
                # While the handler ticks, it wakes us when others need a look;
                # still look every few periods to find new threads.
                signal_active = (
                    not engine.want_wall
                    and time.monotonic_ns() - engine.last_signal_tick < 2 * period
                )
                timeout = max(4 * period, QUIET_LOOK_NS) if signal_active else period
                asked = time.monotonic_ns()
                woken = self._wake.acquire(timeout=timeout / 1e9)
                if not self._running:
                    return
                if not engine.sampling:
                    continue
                # How long the GIL took to come back after the wait ended.
                late = 0 if woken else time.monotonic_ns() - asked - timeout
                try:
                    self._look(late)
                except Exception:
                    engine.errors += 1
        finally:
            self._done.release()

    def _look(self, late: int) -> None:
        """One look at every thread, after a probe unless the GIL is in heavy demand.

        When getting the GIL back took more than two switch intervals, busy
        threads queue for it, and a probe would cost two more turns of the
        queue: the look then takes the time since the last look as its
        window (a thread that held the GIL a whole interval in it was made
        to let go, as in a probe).
        """
        engine = self._engine
        interval = int(sys.getswitchinterval() * 1e9)
        before: dict[int, int] = {}
        window = 0
        if engine.want_cpu:
            if late > 2 * interval and self._last_clocks:
                before, window = self._last_clocks, time.monotonic_ns() - self._last_look
            else:
                before = engine.read_clocks()
                # The main thread, while its own ticks see it, needs no probe.
                if set(before) - {engine.main_covered()}:
                    t0 = time.monotonic_ns()
                    self._probe.acquire(timeout=PROBE_S)  # let go of the GIL
                    window = time.monotonic_ns() - t0
        engine.helper_tick(before, window, interval)
        if engine.want_cpu:
            self._last_clocks = engine.read_clocks(every=True)
            self._last_look = time.monotonic_ns()
