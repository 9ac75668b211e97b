"""goroutine and threadcreate profiles: time to take them at scale, and what tracking costs.

python -m tests.benchmarks goroutine [--quick]

* snapshot: ``count()`` and ``render(debug)`` (what ``write_to`` writes) with
  1,000 threads, 10,000 suspended plain greenlets, 10,000 suspended gevent
  greenlets or 10,000 pending asyncio tasks (their loop runs in another
  thread), each alone and again with several million live objects.
* greenlet discovery: the one-time ``gc.get_objects()`` scan the first
  goroutine profile pays (with the big heap), what each later profile pays,
  and what a full heap scan per profile would cost instead.
* overheads, as profiled/unprofiled ratios of medians over alternating
  rounds: ``Thread.start`` with the threadcreate hook, and an
  allocation-heavy loop with the greenlet-tracking ``gc.callbacks`` hook.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import greenlet

import pyproperf
from pyproperf import _goroutine

_found = pyproperf.lookup("goroutine")
assert _found is not None
GOROUTINE: pyproperf.Profile = _found


def median_time(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- populations ----------------------------------------------------------------------------


@contextmanager
def threads(n: int) -> Iterator[None]:
    ev = threading.Event()
    old = threading.stack_size(256 * 1024)
    try:
        ts = [threading.Thread(target=ev.wait) for _ in range(n)]
        for t in ts:
            t.start()
    finally:
        threading.stack_size(old)
    try:
        yield
    finally:
        ev.set()
        for t in ts:
            t.join()


def _park(main: Any) -> None:
    main.switch()


@contextmanager
def plain_greenlets(n: int) -> Iterator[None]:
    main = greenlet.getcurrent()
    gs = [greenlet.greenlet(_park) for _ in range(n)]
    for g in gs:
        g.switch(main)
    try:
        yield
    finally:
        for g in gs:
            g.switch()


@contextmanager
def gevent_greenlets(n: int) -> Iterator[None]:
    gs = [gevent.spawn(gevent.sleep, 600) for _ in range(n)]
    gevent.sleep(0)
    try:
        yield
    finally:
        gevent.killall(gs)
        gevent.get_hub().destroy(destroy_loop=True)


@contextmanager
def tasks(n: int) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: list[asyncio.Event] = []

    async def main() -> None:
        ev = asyncio.Event()
        box.append(ev)
        ts = [asyncio.create_task(ev.wait()) for _ in range(n)]
        await asyncio.sleep(0)
        ready.set()
        await asyncio.gather(*ts)

    t = threading.Thread(target=loop.run_until_complete, args=(main(),))
    t.start()
    ready.wait()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(box[0].set)
        t.join()
        loop.close()


@contextmanager
def nothing(n: int) -> Iterator[None]:
    yield


def ballast(n: int) -> list[list[int]]:
    """n live, gc-tracked objects (lists), promoted to the oldest generation."""
    out = [[i] for i in range(n)]
    gc.collect()
    return out


# -- measurements ------------------------------------------------------------------------------


def snapshot_table(quick: bool, big: int) -> None:
    rounds = 3 if quick else 7
    cases: list[tuple[str, Callable[[int], Any], int]] = [
        ("1,000 threads", threads, 1000),
        ("10,000 plain greenlets", plain_greenlets, 10_000),
        ("10,000 gevent greenlets", gevent_greenlets, 10_000),
        ("10,000 asyncio tasks", tasks, 10_000),
    ]
    GOROUTINE.render(0)  # tracking on, Resolver caches warm: steady state
    print(f"### snapshot time, median of {rounds} (seconds)\n")
    print("| units | live objects | count() | debug=0 | debug=1 | debug=2 | units seen |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for heap in (0, big):
        keep = ballast(heap) if heap else []
        live = len(gc.get_objects())
        for label, make, n in cases:
            with make(n):
                seen = GOROUTINE.count()
                row = [median_time(GOROUTINE.count, rounds)]
                for debug in (0, 1, 2):

                    def render(d: int = debug) -> bytes:
                        return GOROUTINE.render(d)

                    row.append(median_time(render, rounds))
            cells = " | ".join(f"{x:.3f}" for x in row)
            print(f"| {label} | {live:,} | {cells} | {seen:,} |")
        del keep
        gc.collect()


def discovery_table(quick: bool, big: int) -> None:
    """First-use scan vs steady state, on a fresh tracker, with a big heap."""
    rounds = 3 if quick else 7
    keep = ballast(big)
    with plain_greenlets(10_000):
        old = _goroutine._greenlets
        if old._on_gc in gc.callbacks:
            gc.callbacks.remove(old._on_gc)
        firsts = []
        try:
            for _ in range(rounds):
                fresh = _goroutine._GreenletTracker()
                _goroutine._greenlets = fresh
                t0 = time.perf_counter()
                first = len(fresh.live())
                firsts.append(time.perf_counter() - t0)
                steady = median_time(fresh.live, rounds)
                gc.callbacks.remove(fresh._on_gc)
            base = greenlet.greenlet

            def full_scan() -> int:
                return sum(1 for o in gc.get_objects() if isinstance(o, base))

            naive = median_time(full_scan, rounds)
        finally:
            _goroutine._greenlets = old
            gc.callbacks.append(old._on_gc)
        first_t = statistics.median(firsts)
    live = len(gc.get_objects())
    print(f"\n### finding 10,000 greenlets among {live:,} live objects (seconds)\n")
    print("| first profile (one-time scan) | each later profile | full heap scan per profile |")
    print("|---:|---:|---:|")
    print(f"| {first_t:.3f} | {steady:.4f} | {naive:.3f} |")
    assert first >= 10_000
    del keep
    gc.collect()


def alternate(
    base: Callable[[], None], hooked: Callable[[], None], rounds: int
) -> tuple[float, float, float]:
    b, h = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        base()
        b.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hooked()
        h.append(time.perf_counter() - t0)
    mb, mh = statistics.median(b), statistics.median(h)
    return mb, mh, mh / mb


def overhead_table(quick: bool) -> None:
    rounds = 5 if quick else 31
    n_threads = 200

    def starts(start: Callable[[threading.Thread], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n_threads):
                t = threading.Thread(target=int)
                start(t)
                t.join()

        return run

    original_start = threading.Thread.start.__wrapped__  # type: ignore[attr-defined]
    tb, th, tr = alternate(starts(original_start), starts(threading.Thread.start), rounds)
    # The hook's own work, without the thread: the threadcreate record alone.
    saved = (_goroutine._tc_total, {k: list(v) for k, v in _goroutine._tc_stacks.items()})
    try:
        dummy = threading.Thread(target=int)
        caller = sys._getframe()

        def hooks() -> None:
            for _ in range(10_000):
                _goroutine._started(dummy, caller)

        hook_cost = median_time(hooks, rounds)
    finally:
        _goroutine._tc_total, stacks = saved
        _goroutine._tc_stacks.clear()
        _goroutine._tc_stacks.update(stacks)
        _goroutine._creators.pop(dummy, None)

    GOROUTINE.render(0)  # greenlet tracking on
    hook = _goroutine._greenlets._on_gc
    keep: collections.deque[Any] = collections.deque(maxlen=5000)

    def allocate() -> None:
        for i in range(200_000):
            keep.append({"k": [i], "t": (i, [i])})

    def without() -> None:
        gc.callbacks.remove(hook)
        try:
            allocate()
        finally:
            gc.callbacks.append(hook)

    ab, ah, ar = alternate(without, allocate, rounds)
    print(f"\n### overheads, median of {rounds} alternating rounds\n")
    print("| what | unprofiled | profiled | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| Thread.start + join, {n_threads} threads (threadcreate hook) "
        f"| {tb * 1e6 / n_threads:.1f} µs | {th * 1e6 / n_threads:.1f} µs | {tr:.3f} |"
    )
    print(f"| the hook's own work per start (no thread started) | | {hook_cost * 100:.2f} µs | |")
    print(
        f"| 200,000 allocations of dict+list+tuple, 5,000 kept (greenlet gc hook) "
        f"| {ab:.3f} s | {ah:.3f} s | {ar:.3f} |"
    )


def main(quick: bool) -> None:
    big = 1_000_000 if quick else 4_000_000
    snapshot_table(quick, big)
    discovery_table(quick, big)
    overhead_table(quick)
