"""Block and mutex profiles: what they cost an uncontended primitive.

python -m tests.benchmarks contention [--quick]

Each row times one uncontended operation on an object made under the
row's settings, in alternating rounds with the same operation on a raw
primitive (a ``_thread.allocate_lock()``, or a ``queue.Queue`` made while
profiling was off), all in one process; the table shows the medians and
the median of the per-round ratios (each round keeps the fastest of five
alternating chunks, since the benchmark machine is shared).

* Lock pair: ``lock.acquire(); lock.release()`` and ``with lock: pass``.
* Queue pair: ``q.put(1); q.get()``.
* "made while on, now off": an instrumented lock left behind after both
  profiles were turned off (it runs the real lock's C methods).
* ``threading.Lock()``: making a lock, against ``_thread.allocate_lock()``.
"""

from __future__ import annotations

import _thread
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pyproperf

CHUNKS = 5

SETTINGS: list[tuple[str, int, int]] = [
    # (label, block rate, mutex fraction)
    ("off (the default)", 0, 0),
    ("block, rate 1", 1, 0),
    ("block, rate 10 ms (sampling)", 10_000_000, 0),
    ("mutex, fraction 1", 0, 1),
    ("mutex, fraction 10 (sampling)", 0, 10),
    ("block 10 ms + mutex 10", 10_000_000, 10),
]


def make_lock() -> Any:
    """Whatever ``threading.Lock()`` makes under the current settings."""
    return threading.Lock()


def make_raw_lock() -> Any:
    return _thread.allocate_lock()


def lock_pair(lock: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return time.perf_counter() - t0


def lock_with(lock: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return time.perf_counter() - t0


def queue_pair(q: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        q.put(1)
        q.get()
    return time.perf_counter() - t0


def create_lock(factory: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        factory()
    return time.perf_counter() - t0


def rates(block: int, mutex: int) -> None:
    pyproperf.set_block_profile_rate(block)
    pyproperf.set_mutex_profile_fraction(mutex)


def measure(
    op: Callable[[Any, int], float], make: Callable[[], Any], raw: Any, block: int, mutex: int,
    n: int, rounds: int, leftover: bool = False, maker: bool = False,
) -> tuple[float, float, float]:
    """(raw ns/op, profiled ns/op, median ratio) over alternating rounds.

    A round times raw and profiled in turn ``CHUNKS`` times and keeps each
    one's fastest chunk (the machine is shared and noisy); the results are
    the medians over rounds.

    The raw object is timed with both profiles off (class-level wrappers
    would otherwise slow it down too); ``leftover``: ``obj`` is made with the
    profiles on and timed with them off; ``maker``: time ``make`` itself.
    """
    rates(block, mutex)
    obj = make if maker else make()
    on = (0, 0) if leftover else (block, mutex)
    base: list[float] = []
    prof: list[float] = []
    ratios: list[float] = []
    for i in range(rounds + 1):
        bs, ps = [], []
        for _ in range(CHUNKS):
            rates(0, 0)
            bs.append(op(raw, n))
            rates(*on)
            ps.append(op(obj, n))
        if i:  # the first round warms up
            b, p = min(bs), min(ps)
            base.append(b)
            prof.append(p)
            ratios.append(p / b)
    rates(0, 0)
    scale = 1e9 / n
    return statistics.median(base) * scale, statistics.median(prof) * scale, statistics.median(
        ratios
    )


def main(quick: bool) -> None:
    rounds = 3 if quick else 21
    n = 2_000 if quick else 5_000
    raw_lock = _thread.allocate_lock()
    rates(0, 0)
    raw_queue: queue.Queue[int] = queue.Queue()

    rows: list[tuple[str, str, float, float, float]] = []
    for label, block, mutex in SETTINGS:
        for opname, op, make, raw in (
            ("Lock acquire+release", lock_pair, make_lock, raw_lock),
            ("with Lock", lock_with, make_lock, raw_lock),
            ("Queue put+get", queue_pair, queue.Queue, raw_queue),
        ):
            b, p, r = measure(op, make, raw, block, mutex, n // (10 if op is queue_pair else 1),
                              rounds)
            rows.append((opname, label, b, p, r))
    for opname, op in (("Lock acquire+release", lock_pair), ("with Lock", lock_with)):
        b, p, r = measure(op, make_lock, raw_lock, 1, 1, n, rounds, leftover=True)
        rows.append((opname, "made while on, now off", b, p, r))
    for label, block, mutex in SETTINGS[:2]:
        b, p, r = measure(create_lock, make_lock, make_raw_lock, block, mutex,
                          n, rounds, maker=True)
        rows.append(("threading.Lock()", label, b, p, r))
    order = ["Lock acquire+release", "with Lock", "Queue put+get", "threading.Lock()"]
    rows.sort(key=lambda row: order.index(row[0]))
    print(f"{rounds} rounds of {CHUNKS} alternating chunks (fastest chunk per round); "
          "ns per operation, medians over rounds; ratio = median of per-round profiled/raw\n")
    print("| operation | setting | raw ns | profiled ns | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for opname, label, b, p, r in rows:
        print(f"| {opname} | {label} | {b:.0f} | {p:.0f} | {r:.2f} |")
