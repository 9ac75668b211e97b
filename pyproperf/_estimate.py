"""Where a thread's CPU time goes: the estimator behind CPU profiles.

Every tick reads each thread's own CPU clock, so *how much* CPU a thread
used between two looks at it is exact.  *Where* it used it is the hard
part: a tick sees the stack a thread is at now, and a thread that worked
and then started waiting is found waiting.  Charging its CPU to the stack
found would put work on ``time.sleep`` and ``Condition.wait``.

So each look at a thread is a *sighting* marked running or waiting (the
clocks decide which; see ``_helper``), and ``observe`` charges CPU only to
stacks seen running:

* running (outside the standard library's waiting code, where a thread
  seen running is entering or leaving a wait): the CPU since the last
  look, plus any held back, goes to the stack seen now;
* waiting, and running at the last look: it went on from the stack seen
  then and stopped since; the CPU goes there;
* waiting, and not running at the last look either: the CPU was used in
  between, unseen; it is held back (pending) for the next running
  sighting, as the thread will be seen again where it works;
* held back longer than ``MAX_PENDING_NS``: the thread's work is never
  seen running (its bursts are shorter than the helper's wait for the
  GIL: about 0.2 ms at the helper's short switch interval, a whole
  interval while threads compete for the GIL; see ``_helper``).  The CPU
  goes to the last stack seen running if that sighting is recent, else
  to the waiting stack with its standard library frames removed, under a
  ``(ran between samples)`` leaf: the caller that waits is known, the
  work inside it was not seen.
"""

from __future__ import annotations

import os
import threading
from types import CodeType

from pyproperf import _stacks
from pyproperf._labels import LabelSet

__all__ = [
    "INTERNAL_THREAD_PREFIX",
    "MAX_PENDING_NS", "Sighting", "ThreadState", "in_wait_code", "observe", "settle", "unseen",
]

# A stack and the labels active on it.
Sighting = tuple[_stacks.StackKey, "LabelSet | None"]

# Threads pyproperf starts are named so; the sampler leaves them out.
INTERNAL_THREAD_PREFIX = "pyproperf-"

# CPU held back waiting for a running sighting is settled after this long.
MAX_PENDING_NS = 1_000_000_000

_STDLIB = os.path.dirname(os.path.abspath(threading.__file__)) + os.sep

# Standard-library code threads wait in.  A thread seen running there is
# entering or leaving a wait: its CPU since the last look was used
# elsewhere, so such a sighting counts as waiting.
_WAIT_FILES = frozenset(
    _STDLIB + name
    for name in ("threading.py", "queue.py", "selectors.py", "socket.py", "ssl.py",
                 "subprocess.py")
)
_WAIT_DIRS = tuple(_STDLIB + d + os.sep for d in ("asyncio", "concurrent", "multiprocessing"))


def in_wait_code(sighting: Sighting) -> bool:
    """Whether the innermost frame of a sighting is standard-library waiting code."""
    key = sighting[0]
    filename = getattr(key[0], "co_filename", "") if key else ""
    return filename in _WAIT_FILES or filename.startswith(_WAIT_DIRS)


class ThreadState:
    """What the sampler knows of one thread between ticks."""

    __slots__ = (
        "charged",
        "clock",
        "fresh",
        "internal",
        "last_running",
        "name",
        "pending",
        "pending_since",
        "running_at",
        "thread",
        "waiting_at",
        "wall",
    )

    def __init__(
        self, clock: int | None, charged: int, wall: int, thread: threading.Thread | None
    ) -> None:
        # pyproperf's own threads (heap sampler, HTTP server) are never sampled.
        self.internal = thread is not None and thread.name.startswith(INTERNAL_THREAD_PREFIX)
        self.name = thread.name if thread is not None else ""
        self.thread = thread
        self.clock = clock  # the thread's CPU clock id, None if unknown
        self.charged = charged  # CPU clock value accounted up to (charged or pending)
        self.wall = wall  # monotonic time accounted up to (wall clock profiles)
        self.pending = 0  # CPU ns seen while waiting, not yet charged
        self.pending_since = 0
        self.last_running: Sighting | None = None
        self.running_at = 0  # monotonic time of that sighting
        self.fresh = False  # the last look at the thread saw it running
        self.waiting_at: Sighting | None = None  # the last waiting sighting


def observe(
    st: ThreadState, sighting: Sighting, running: bool, cpu: int, now: int
) -> tuple[Sighting, int] | None:
    """Account ``cpu`` ns used since the last look; return (where, ns) to charge, if any."""
    if running and in_wait_code(sighting):
        running = False
    if running:
        st.last_running = sighting
        st.running_at = now
        st.fresh = True
        total = st.pending + cpu
        st.pending = 0
        return (sighting, total) if total > 0 else None
    st.waiting_at = sighting
    if st.fresh and st.last_running is not None:
        # Seen running last time: it went on from there, then stopped.
        st.fresh = False
        total = st.pending + cpu
        st.pending = 0
        return (st.last_running, total) if total > 0 else None
    if cpu > 0:
        if not st.pending:
            st.pending_since = now
        st.pending += cpu
    if st.pending and now - st.pending_since > MAX_PENDING_NS:
        return settle(st, now)
    return None


def settle(
    st: ThreadState,
    now: int,
    fallback: Sighting | None = None,
    within: CodeType | None = None,
) -> tuple[Sighting, int] | None:
    """Charge what is held back now (stop, thread exit, or held back too long).

    ``within``: the CPU belongs to a call of this code that is ending (a
    decorated function's), and ``fallback`` is a sighting inside it; a
    place outside the call (the thread seen before the call began) gives
    way to ``fallback``.
    """
    total, st.pending = st.pending, 0
    if total <= 0:
        return None
    if st.last_running is not None and now - st.running_at <= 2 * MAX_PENDING_NS:
        if within is None or within in st.last_running[0]:
            return st.last_running, total
    elif st.waiting_at is not None and (within is None or within in st.waiting_at[0]):
        return unseen(st.waiting_at), total
    if fallback is None:
        return None
    return unseen(fallback), total


def unseen(sighting: Sighting) -> Sighting:
    """The waiting stack without its standard-library leaf frames, under a marker leaf."""
    key, labels = sighting
    i = 0
    n = len(key)
    while i + 2 < n:
        code = key[i]
        filename = getattr(code, "co_filename", "")
        if not (
            filename.startswith("<frozen ")
            or (
                filename.startswith(_STDLIB)
                and "site-packages" not in filename
                and "dist-packages" not in filename
            )
        ):
            break
        i += 2
    return (_stacks.UNSEEN, 0, *key[i:]), labels
