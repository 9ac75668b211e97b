"""CPU workloads with their own ground truth, shared by the CPU tests and benchmarks.

Each workload measures the truth itself (``time.thread_time()`` around
each piece of work) and returns ``{function name: CPU seconds}``, so the
profile can be held against what really happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import threading
import time
from collections.abc import Callable

MODULE = __name__


def spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU in pure Python."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def shared_work(seconds: float) -> float:
    """Burn ``seconds`` of this thread's CPU in code every request shares; return what it used.

    The label tests' workload: one function whatever the request, so only
    labels tell requests apart in a profile.
    """
    t0 = time.thread_time()
    x = 0
    while time.thread_time() - t0 < seconds:
        for i in range(300):
            x += i * i
    return time.thread_time() - t0


def leaf_60(seconds: float) -> None:
    spin(seconds)


def leaf_30(seconds: float) -> None:
    spin(seconds)


def leaf_10(seconds: float) -> None:
    spin(seconds)


def three_leaves(scale: float) -> dict[str, float]:
    """Three leaves at about 60/30/10 % in the main thread, interleaved."""
    truth = {"leaf_60": 0.0, "leaf_30": 0.0, "leaf_10": 0.0}
    funcs: list[tuple[str, Callable[[float], None], float]] = [
        ("leaf_60", leaf_60, 0.06), ("leaf_30", leaf_30, 0.03), ("leaf_10", leaf_10, 0.01)
    ]
    rounds = max(1, int(10 * scale))
    for _ in range(rounds):
        for name, fn, seconds in funcs:
            t0 = time.thread_time()
            fn(seconds)
            truth[name] += time.thread_time() - t0
    return truth


def worker_a(seconds: float) -> None:
    spin(seconds)


def worker_b(seconds: float) -> None:
    spin(seconds)


def worker_c(seconds: float) -> None:
    spin(seconds)


def threads_main_joins(scale: float) -> dict[str, float]:
    """Three worker threads burn 3:2:1 while the main thread only joins."""
    truth: dict[str, float] = {}
    lock = threading.Lock()

    def run(name: str, fn: Callable[[float], None], seconds: float) -> None:
        t0 = time.thread_time()
        fn(seconds)
        with lock:
            truth[name] = time.thread_time() - t0

    threads = [
        threading.Thread(target=run, args=("worker_a", worker_a, 0.3 * scale), name="wa"),
        threading.Thread(target=run, args=("worker_b", worker_b, 0.2 * scale), name="wb"),
        threading.Thread(target=run, args=("worker_c", worker_c, 0.1 * scale), name="wc"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return truth


def green_a(seconds: float) -> None:
    spin(seconds)


def green_b(seconds: float) -> None:
    spin(seconds)


def greenlets(scale: float) -> dict[str, float]:
    """Two greenlets in the main thread take turns, 2:1."""
    import greenlet

    truth = {"green_a": 0.0, "green_b": 0.0}
    rounds = max(1, int(30 * scale))

    def body(name: str, fn: Callable[[float], None], seconds: float) -> None:
        for _ in range(rounds):
            t0 = time.thread_time()
            fn(seconds)
            truth[name] += time.thread_time() - t0
            greenlet.getcurrent().parent.switch()

    ga = greenlet.greenlet(lambda: body("green_a", green_a, 0.01))
    gb = greenlet.greenlet(lambda: body("green_b", green_b, 0.005))
    for _ in range(rounds):
        ga.switch()
        gb.switch()
    return truth


async def task_a(seconds: float, rounds: int, truth: dict[str, float]) -> None:
    for _ in range(rounds):
        t0 = time.thread_time()
        spin(seconds)
        truth["task_a"] += time.thread_time() - t0
        await asyncio.sleep(0)


async def task_b(seconds: float, rounds: int, truth: dict[str, float]) -> None:
    for _ in range(rounds):
        t0 = time.thread_time()
        spin(seconds)
        truth["task_b"] += time.thread_time() - t0
        await asyncio.sleep(0)


def asyncio_tasks(scale: float) -> dict[str, float]:
    """Two asyncio tasks on the main thread's loop, 2:1."""
    truth = {"task_a": 0.0, "task_b": 0.0}
    rounds = max(1, int(30 * scale))

    async def main() -> None:
        await asyncio.gather(task_a(0.01, rounds, truth), task_b(0.005, rounds, truth))

    asyncio.run(main())
    return truth


DATA = b"\x5a" * (8 << 20)


def hash_data(times: int) -> None:
    """sha256 releases the GIL for large buffers: C work without the GIL."""
    for _ in range(times):
        hashlib.sha256(DATA).digest()


def sort_data(items: list[int]) -> None:
    """sorted() holds the GIL for the whole call: C work with the GIL."""
    sorted(items)


def c_calls(scale: float) -> dict[str, float]:
    """A worker hashes (no GIL) while main sorts (GIL held) and spins."""
    truth: dict[str, float] = {}
    items = list(range(int(1_000_000 * scale)))
    random.Random(1).shuffle(items)

    def hasher() -> None:
        t0 = time.thread_time()
        hash_data(max(1, int(12 * scale)))
        truth["hash_data"] = time.thread_time() - t0

    t = threading.Thread(target=hasher, name="hasher")
    t.start()
    t0 = time.thread_time()
    sort_data(items)
    truth["sort_data"] = time.thread_time() - t0
    t0 = time.thread_time()
    spin(0.2 * scale)
    truth["spin"] = time.thread_time() - t0
    t.join()
    return truth


WORKLOADS: dict[str, Callable[[float], dict[str, float]]] = {
    "three_leaves": three_leaves,
    "threads_main_joins": threads_main_joins,
    "greenlets": greenlets,
    "asyncio_tasks": asyncio_tasks,
    "c_calls": c_calls,
}


# -- programs that mix work and waiting --------------------------------------------------


def work_step(seconds: float) -> None:
    spin(seconds)


def nap(seconds: float) -> None:
    time.sleep(seconds)


# Whole-thread CPU of the last mixed workload, per thread: the truth for totals
# (a garbage collection in a thread counts, wherever it strikes).
THREAD_CPU: dict[str, float] = {}


def worker_loop(rounds: int, work: float, wait: float, truth: dict[str, float]) -> None:
    start = time.thread_time()
    cv = threading.Condition()
    for _ in range(rounds):
        t0 = time.thread_time()
        work_step(work)
        truth["worker"] += time.thread_time() - t0
        t0 = time.thread_time()
        with cv:
            cv.wait(wait)
        truth["waits"] += time.thread_time() - t0
    THREAD_CPU[threading.current_thread().name] = time.thread_time() - start


def work_then_wait(scale: float) -> dict[str, float]:
    """Main: 60 x (6 ms work, 10 ms sleep); a worker: 60 x (4 ms work, 12 ms Condition.wait).

    Returns CPU used in work by main ("main") and the worker ("worker"),
    and CPU used inside the waits ("waits", about zero).
    """
    start = time.thread_time()
    THREAD_CPU.clear()
    truth = {"main": 0.0, "worker": 0.0, "waits": 0.0}
    rounds = max(1, int(60 * scale))
    t = threading.Thread(target=worker_loop, args=(rounds, 0.004, 0.012, truth), name="worker")
    t.start()
    for _ in range(rounds):
        t0 = time.thread_time()
        work_step(0.006)
        truth["main"] += time.thread_time() - t0
        t0 = time.thread_time()
        nap(0.01)
        truth["waits"] += time.thread_time() - t0
    t.join()
    THREAD_CPU["main"] = time.thread_time() - start
    return truth


def burn(seconds: float) -> None:
    spin(seconds)


def main_blocks_after(main_work: float, seconds: float) -> dict[str, float]:
    """Main works ``main_work`` seconds, then joins a worker that burns ``seconds``."""
    truth: dict[str, float] = {}

    def run() -> None:
        t0 = time.thread_time()
        burn(seconds)
        truth["burn"] = time.thread_time() - t0

    t = threading.Thread(target=run, name="burner")
    t.start()
    spin(main_work)
    t.join()
    return truth


def phase_a(seconds: float) -> None:
    spin(seconds)


def phase_b(seconds: float) -> None:
    spin(seconds)


def phase_c(seconds: float) -> None:
    spin(seconds)


PHASES: dict[str, Callable[[float], None]] = {"phase_a": phase_a, "phase_b": phase_b,
                                              "phase_c": phase_c}


def random_schedule(seed: int, period: float, threads: int = 3) -> dict[str, float]:
    """Threads alternate random work phases and waits of 0.3 to 2.5 periods; main waits too."""
    THREAD_CPU.clear()
    truth = dict.fromkeys(PHASES, 0.0)
    lock = threading.Lock()
    rng = random.Random(seed)
    plans = [
        [(rng.choice(list(PHASES)), rng.uniform(0.3, 2.5) * period, rng.uniform(0.3, 2.5) * period)
         for _ in range(25)]
        for _ in range(threads)
    ]

    def run(plan: list[tuple[str, float, float]]) -> None:
        start = time.thread_time()
        ev = threading.Event()
        for name, work, wait in plan:
            t0 = time.thread_time()
            PHASES[name](work)
            used = time.thread_time() - t0
            with lock:
                truth[name] += used
            ev.wait(wait)
        THREAD_CPU[threading.current_thread().name] = time.thread_time() - start

    ts = [threading.Thread(target=run, args=(p,), name=f"rand{i}") for i, p in enumerate(plans[1:])]
    for t in ts:
        t.start()
    run(plans[0])
    for t in ts:
        t.join()
    return truth


_seeds = itertools.count(1)


def random_schedules(scale: float) -> dict[str, float]:
    """``random_schedule`` with a new seed each call, periods of 10 ms x ``scale``."""
    return random_schedule(next(_seeds), 0.01 * scale)


WORKLOADS["random_schedule"] = random_schedules


# -- a worker's short bursts of two lengths ---------------------------------------------


def burst_short(seconds: float) -> None:
    spin(seconds)


def burst_long(seconds: float) -> None:
    spin(seconds)


def worker_bursts(scale: float) -> dict[str, float]:
    """A worker: 2 ms in ``burst_short``, wait 6 ms, 6 ms in ``burst_long``, wait 6 ms; main joins.

    Both bursts are shorter than the default switch interval plus a wait,
    so no other thread could see them at the program's own interval.
    """
    truth = {"burst_short": 0.0, "burst_long": 0.0}

    def run(rounds: int) -> None:
        ev = threading.Event()
        for _ in range(rounds):
            for name, fn, seconds in (("burst_short", burst_short, 0.002),
                                      ("burst_long", burst_long, 0.006)):
                t0 = time.thread_time()
                fn(seconds)
                truth[name] += time.thread_time() - t0
                ev.wait(0.006)

    t = threading.Thread(target=run, args=(max(1, int(50 * scale)),), name="bursts")
    t.start()
    t.join()
    return truth


WORKLOADS["worker_bursts"] = worker_bursts


# -- work then wait, each thread in its own function (for shares) ------------------------


def main_step(seconds: float) -> None:
    spin(seconds)


def worker_step(seconds: float) -> None:
    spin(seconds)


def work_wait_shares(scale: float) -> dict[str, float]:
    """``work_then_wait`` with main's work in ``main_step`` and the worker's in ``worker_step``."""
    truth = {"main_step": 0.0, "worker_step": 0.0}
    rounds = max(1, int(60 * scale))

    def worker() -> None:
        cv = threading.Condition()
        for _ in range(rounds):
            t0 = time.thread_time()
            worker_step(0.004)
            truth["worker_step"] += time.thread_time() - t0
            with cv:
                cv.wait(0.012)

    t = threading.Thread(target=worker, name="worker")
    t.start()
    for _ in range(rounds):
        t0 = time.thread_time()
        main_step(0.006)
        truth["main_step"] += time.thread_time() - t0
        nap(0.01)
    t.join()
    return truth


WORKLOADS["work_wait_shares"] = work_wait_shares


# -- an I/O loop that blocks at two places -------------------------------------------


def handle(seconds: float) -> None:
    spin(seconds)


def read_two_pipes(scale: float) -> dict[str, float]:
    """A thread blocks in ``os.read`` on one pipe, handles what came (0.1 ms), blocks on
    a second pipe, handles again; a feeder writes to each in turn every 1-3 ms (seeded).

    Its reads wake it at times of their own, inside the helper's probes too; a thread
    that wakes in a probe, runs briefly and blocks at its other read looks like a run
    that ended in the probe, at the first read.  Truth: the reader's CPU, and its CPU
    in ``handle``."""
    import os

    truth = {"reader": 0.0, "handle": 0.0}
    rounds = max(1, int(250 * scale))
    fds = [os.pipe(), os.pipe()]

    def reader() -> None:
        start = time.thread_time()
        for _ in range(rounds):
            for r, _w in fds:
                os.read(r, 1)
                t0 = time.thread_time()
                handle(0.0001)
                truth["handle"] += time.thread_time() - t0
        truth["reader"] = time.thread_time() - start

    def feeder() -> None:
        rnd = random.Random(1)
        for _ in range(rounds):
            for _r, w in fds:
                time.sleep(rnd.uniform(0.001, 0.003))
                os.write(w, b"x")

    threads = [threading.Thread(target=reader, name="reader"),
               threading.Thread(target=feeder, name="feeder")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for r, w in fds:
            os.close(r)
            os.close(w)
    return truth
