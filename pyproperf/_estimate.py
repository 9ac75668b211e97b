"""Where a thread's CPU time goes: the estimator behind CPU profiles.

Every tick reads each thread's own CPU clock, so *how much* CPU a thread
used between two looks at it is exact.  *Where* it used it is the hard
part: a tick sees the stack a thread is at now, and a thread that worked
and then started waiting is found waiting.  Charging its CPU to the stack
found would put work on ``time.sleep`` and ``Condition.wait``.

So each look at a thread is a *sighting* marked running or waiting (the
clocks decide which; see ``_helper``), and only stacks seen running get
CPU.  The estimator works in *windows* of about ``WINDOW_NS`` per thread:

* a look adds the CPU the thread used since the last look to the
  window's CPU, and a running sighting (outside the standard library's
  waiting code, where a thread seen running is entering or leaving a
  wait) adds its *weight* to its stack: the time the look stands for,
  the time since the helper's previous look.  A look that came late
  because C code held the GIL (a long ``sorted()``) so stands for the
  whole call in the thread that ran it (in the others, for at most two
  periods: ``_sampler``);
* when the window is ``WINDOW_NS`` old, its CPU is split among the
  stacks seen running in it, in proportion to their weights.  The
  helper's looks come at times of their own (jittered, see ``_helper``),
  so a stack is seen in proportion to the time the thread runs it: a
  burst of 2 ms between waits gets its share, where charging each look's
  CPU to the stack seen at that look would hand it to the longer burst
  next to it (measured: 19 % for a true 25 %);
* a window in which the thread was never seen running (its bursts are
  shorter than the helper's wait for the GIL: about 0.2 ms at the
  helper's short switch interval, a whole interval while threads compete
  for the GIL) is settled whole: to the last stack seen running if that
  sighting is recent, else to the waiting stack with its standard
  library frames removed, under a ``(ran between samples)`` leaf: the
  caller that waits is known, the work inside it was not seen;
* the SIGPROF handler's ticks of the main thread (``tick``) come every
  period of the thread's own CPU, where it runs: each is charged at once
  with the CPU since the last, as in Go, and takes the window with it;
* a running sighting that is not sure (the thread ran only part of the
  helper's probe) at a place (innermost code and instruction) where the
  probes found the thread blocked more often than running had just woken
  there, and counts for nothing when its window closes
  (``_sampler._probe_verdict``);
* a window closes early when the profiles being fed change (a profile
  starts or stops, a decorated call begins or ends, the thread exits),
  so no CPU crosses into a profile that was not running when it was used.
"""

from __future__ import annotations

import os
import threading
from types import CodeType

from pyproperf import _stacks
from pyproperf._labels import LabelSet

__all__ = [
    "INTERNAL_THREAD_PREFIX",
    "PLACES_MAX",
    "WINDOW_NS",
    "Charge",
    "Place",
    "Sighting",
    "ThreadState",
    "blocks_at",
    "expire",
    "in_wait_code",
    "observe",
    "place",
    "settle",
    "tick",
    "unseen",
]

# A stack and the labels active on it.
Sighting = tuple[_stacks.StackKey, "LabelSet | None"]

# Where CPU goes: (sighting, samples, nanoseconds).
Charge = tuple[Sighting, int, int]

# Where a thread stands: its innermost code and instruction offset.
Place = tuple[object, object]

# How many places a thread was probed at are kept (then only those it blocks at).
PLACES_MAX = 1024

# Threads pyproperf starts are named so; the sampler leaves them out.
INTERNAL_THREAD_PREFIX = "pyproperf-"

# How long a thread's CPU is gathered before it is split among its
# running sightings (at 100 Hz, about 100 looks at a busy thread).
WINDOW_NS = 1_000_000_000

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


def place(sighting: Sighting) -> Place | None:
    """Where the sighting's thread stands: its innermost code and instruction offset."""
    key = sighting[0]
    return (key[0], key[1]) if len(key) >= 2 and key[0] is not None else None


def blocks_at(st: ThreadState, where: Place | None, blocked: bool) -> int:
    """Count a probe that found the thread blocked (or running) at ``where``.

    Returns the place's score before this one: the probes that found the
    thread blocked there, less those that found it running there.
    """
    if where is None:
        return 0
    places = st.places
    score = places.get(where, 0)
    if len(places) >= PLACES_MAX and where not in places:
        # Keep the places it blocks at if they are at most half; else forget them all.
        blocking = {p: n for p, n in places.items() if n > 0}
        places.clear()
        if 2 * len(blocking) <= PLACES_MAX:
            places.update(blocking)
    places[where] = score + (1 if blocked else -1)
    return score


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
        "places",
        "running_at",
        "seen",
        "thread",
        "unseen_ns",
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
        self.pending = 0  # CPU ns in the open window, not yet charged
        self.pending_since = 0  # when the open window began
        # Running sightings in the open window, per stack: [looks, weight, and the
        # same of the sure ones].
        self.seen: dict[Sighting, list[int]] = {}
        self.last_running: Sighting | None = None
        self.running_at = 0  # monotonic time of that sighting
        self.fresh = False  # the last look at the thread saw it running
        self.waiting_at: Sighting | None = None  # the last waiting sighting
        self.unseen_ns = 0  # CPU of the last look used between two looks that saw it waiting
        # Places (innermost code and instruction offset): how many more probes found
        # the thread blocked there than running there (``_sampler._probe_verdict``).
        self.places: dict[Place, int] = {}


def observe(st: ThreadState, sighting: Sighting, running: bool, cpu: int, now: int,
            weight: int, *, sure: bool = True) -> list[Charge]:
    """Account ``cpu`` ns used since the last look; return what to charge now, if anything.

    ``weight``: what a running sighting stands for (see the module's docstring);
    ``sure``: False for a running sighting that the place it was made at may
    undo when the window closes (``settle``).
    """
    if running and in_wait_code(sighting):
        running = False
    st.unseen_ns = 0 if running or st.fresh else cpu
    st.fresh = running
    if cpu > 0:
        if not st.pending and not st.seen:
            st.pending_since = now
        st.pending += cpu
    if running:
        st.last_running = sighting
        st.running_at = now
        weight = max(weight, 1)
        slot = st.seen.get(sighting)
        if slot is None:
            st.seen[sighting] = [1, weight, weight if sure else 0, 1 if sure else 0]
        else:
            slot[0] += 1
            slot[1] += weight
            if sure:
                slot[2] += weight
                slot[3] += 1
    else:
        st.waiting_at = sighting
    return expire(st, now)


def tick(st: ThreadState, sighting: Sighting, cpu: int, now: int) -> list[Charge]:
    """A tick of the thread's own CPU timer, where it runs: its CPU since the last, charged now.

    The timer fires every period of the thread's CPU, so the tick stands
    for all of it, the part the helper's looks read meanwhile included (a
    look at a main thread between its ticks finds it mostly waiting, and
    the few it finds "running" are wake-ups in its probe, at the wait).
    In the standard library's waiting code it is a waiting sighting, as
    in ``observe``.
    """
    if in_wait_code(sighting):
        return observe(st, sighting, False, cpu, now, 0)
    st.unseen_ns = 0
    st.fresh = True
    st.last_running = sighting
    st.running_at = now
    total, st.pending, st.seen = st.pending + cpu, 0, {}
    return [(sighting, 1, total)] if total > 0 else []


def expire(st: ThreadState, now: int) -> list[Charge]:
    """Close the thread's window if it is ``WINDOW_NS`` old (no look at it needed)."""
    if (st.pending or st.seen) and now - st.pending_since >= WINDOW_NS:
        return settle(st, now)
    return []


def settle(
    st: ThreadState,
    now: int,
    fallback: Sighting | None = None,
    within: CodeType | None = None,
) -> list[Charge]:
    """Close the thread's window now: split its CPU among its running sightings.

    With no running sighting in it, the whole goes to the last stack seen
    running if that is recent, else under the waiting stack (see the
    module's docstring).  ``within``: the CPU belongs to a call of this
    code that is ending (a decorated function's), and ``fallback`` is a
    sighting inside it; a place outside the call (the thread seen before
    the call began) gives way to ``fallback``.
    """
    total, st.pending = st.pending, 0
    seen, st.seen = st.seen, {}
    if st.places:
        # A sighting at a place where probes have since found the thread blocked more
        # often than running: it had just woken there (``_sampler._probe_verdict``).
        for s in [s for s in seen if _blocks_there(st, s)]:
            _, _, sure, sure_looks = seen[s]
            if sure:
                seen[s] = [sure_looks, sure, sure, sure_looks]
            else:
                del seen[s]
                st.waiting_at = st.waiting_at or s
        if st.last_running is not None and _blocks_there(st, st.last_running):
            st.waiting_at = st.waiting_at or st.last_running
            st.last_running = None
    if seen:
        return _split(total, seen)
    if total <= 0:
        return []
    where = unseen(fallback) if fallback is not None else None
    if st.last_running is not None and now - st.running_at <= 2 * WINDOW_NS:
        if within is None or within in st.last_running[0]:
            where = st.last_running
    elif st.waiting_at is not None and (within is None or within in st.waiting_at[0]):
        where = unseen(st.waiting_at)
    return [(where, 1, total)] if where is not None else []


def _blocks_there(st: ThreadState, sighting: Sighting) -> bool:
    """Whether probes found the thread blocked at the sighting's place more often than not."""
    where = place(sighting)
    return where is not None and st.places.get(where, 0) > 0


def _split(total: int, seen: dict[Sighting, list[int]]) -> list[Charge]:
    """``total`` ns among sightings in proportion to their weights (exactly, in integers)."""
    weights = sum(slot[1] for slot in seen.values())
    charges = [(sighting, n, total * w // weights) for sighting, (n, w, *_) in seen.items()]
    rest = total - sum(ns for _, _, ns in charges)
    if rest:
        sighting, n, ns = charges[0]
        charges[0] = (sighting, n, ns + rest)
    return charges


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
