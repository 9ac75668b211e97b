"""The data behind the block and mutex profiles: rates, records, events.

This is the bottom layer of the contention profiles.  The instrumented
locks (``_contention_locks``) and the wrapped waits (``_contention_waits``)
measure; they report here through ``block_event`` and ``mutex_event``,
which apply Go's sampling and debiasing (``runtime/mprof.go``) and add the
result to a record keyed by stack:

    records: stack key (``_stacks.stack_key``, leaf first) -> [count, delay_ns]

``count`` is a float, as in Go, because debiased block samples add
``rate / delay``; it is truncated (and clamped to at least 1) when written.
Records live until the process ends, as Go's do; rates only decide what is
added.
"""

from __future__ import annotations

import _thread
import random
import time
from types import CodeType, FrameType

from pyproperf import _hooks, _stacks

__all__ = [
    "Scope",
    "Waiter",
    "block_event",
    "block_records",
    "charge",
    "mutex_event",
    "mutex_records",
    "now",
    "reset",
    "scope",
    "skip_codes",
    "snapshot",
    "waiter_frame",
]

# Go's blockprofilerate (nanoseconds here, Go's "cycles" being nanoseconds):
# 0 off, 1 every event, n > 1 events shorter than n ns sampled.
block_rate = 0
# Go's mutexprofilerate: 0 off, n records one contended release in n.
mutex_rate = 0

now = time.monotonic_ns

Record = list[float]  # [count, delay_ns]
block_records: dict[_stacks.StackKey, Record] = {}
mutex_records: dict[_stacks.StackKey, Record] = {}
_records_lock = _thread.allocate_lock()  # a real lock, never an instrumented one

# Code of the primitives' own methods (threading, queue, asyncio) and of our
# wrappers: a recorded stack starts at the first frame outside them, i.e. at
# the user's call.
skip_codes: set[CodeType] = set()

# Bumped in a forked child: waiters registered before the fork (by threads
# that do not exist in the child) are dropped when next seen.
epoch = 0


class Scope(_thread._local):
    """Per thread: inside a wrapped wait (``Condition.wait``, ``Thread.join``)?

    That call records one block event for its whole duration; a wait nested
    in it (re-acquiring the Condition's lock) records nothing.
    """

    active = False


scope = Scope()


class Waiter:
    """A thread waiting for an instrumented lock, for the mutex profile.

    ``mark``: the time up to which its waiting has been charged to a holder.
    """

    __slots__ = ("epoch", "mark")

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self.epoch = epoch


def charge(waiters: set[Waiter]) -> int:
    """The waiting time ``waiters`` accumulated since last charged; mark them charged now.

    Called by a holder that releases a lock others wait for: Go charges the
    unlocker with the delay its critical section caused (``semrelease``).
    """
    t = now()
    ep = epoch
    total = 0
    for w in list(waiters):
        if w.epoch != ep:
            waiters.discard(w)
            continue
        d = t - w.mark
        if d > 0:
            total += d
            w.mark = t
    return total


def waiter_frame(frame: FrameType | None) -> FrameType | None:
    """The first frame outside the primitives and our wrappers.

    None when there is none, or when it belongs to pyproperf itself: the
    profiler's own waiting (its sampler thread, say) is never recorded.
    """
    skip = skip_codes
    while frame is not None and frame.f_code in skip:
        frame = frame.f_back
    if frame is None or _stacks.is_own_code(frame.f_code):
        return None
    return frame


def _record(records: dict[_stacks.StackKey, Record], frame: FrameType | None, count: float,
            delay: int) -> None:
    f = waiter_frame(frame)
    if f is None:
        return
    key = _stacks.stack_key(f)
    with _records_lock:
        rec = records.get(key)
        if rec is None:
            records[key] = [count, delay]
        else:
            rec[0] += count
            rec[1] += delay


def block_event(delay: int, frame: FrameType | None) -> None:
    """A wait of ``delay`` ns by the code of ``frame`` (Go's ``blockevent``).

    At rate 1, or for a wait at least ``rate`` ns long, it counts once with
    its delay.  A shorter wait is kept with probability about
    ``delay / rate`` and then counts ``rate / delay`` times with delay
    ``rate``, so that totals stay unbiased.
    """
    rate = block_rate
    if rate <= 0:
        return
    if delay <= 0:
        delay = 1
    if rate > delay:
        # Go's blocksampled: drop unless cheaprand64() % rate <= cycles.
        if int(random.random() * rate) > delay:
            return
        _record(block_records, frame, rate / delay, rate)
    else:
        _record(block_records, frame, 1.0, delay)


def mutex_event(delay: int, frame: FrameType | None) -> None:
    """A release that ended ``delay`` ns of others' waiting (Go's ``mutexevent``).

    One in ``rate`` is kept, scaled by ``rate`` in count and delay.
    """
    rate = mutex_rate
    if rate <= 0:
        return
    delay = max(delay, 0)
    if rate > 1 and int(random.random() * rate) != 0:
        return
    _record(mutex_records, frame, float(rate), rate * delay)


def snapshot(name: str) -> list[tuple[_stacks.StackKey, int, int]]:
    """(stack key, count, delay ns) of every record of ``name``, Go's values, unsorted."""
    records = block_records if name == "block" else mutex_records
    with _records_lock:
        items = [(key, rec[0], rec[1]) for key, rec in records.items()]
    return [(key, max(int(count), 1), int(delay)) for key, count, delay in items]


def reset() -> None:
    """Forget every record (tests only: Go has no way to do this)."""
    with _records_lock:
        block_records.clear()
        mutex_records.clear()


def _after_fork_in_child() -> None:
    # Module globals, not a state object: the instrumented locks read ``epoch`` on their
    # hot paths (Waiter(), charge()), where an attribute lookup more would cost.
    global _records_lock, epoch  # noqa: PLW0603 - a fork child's fresh lock and epoch
    _records_lock = _thread.allocate_lock()
    epoch += 1
    scope.active = False


_hooks.at_fork_child(_after_fork_in_child)
