"""Cost of entering and leaving a labelled region, against a plain ContextVar context manager.

Each round times every case in turn (the order alternates between rounds)
and divides it by the baseline measured in that same round; the table
shows medians over rounds.  "profiled" rounds run the same loops while a
100 Hz CPU profile is being recorded.

    python -m tests.benchmarks labels
"""

from __future__ import annotations

import contextvars
import functools
import io
import statistics
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pyproperf
from pyproperf import _labels

_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench", default=None)


class _VarCM:
    """The baseline: a context manager that sets one ContextVar and resets it."""

    __slots__ = ("token", "value")

    def __init__(self, value: str) -> None:
        self.value = value

    def __enter__(self) -> None:
        self.token = _var.set(self.value)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _var.reset(self.token)


def _f(ctx: object) -> None:
    return None


_LS = pyproperf.labels("endpoint", "/users")


def _loops(n: int) -> dict[str, Callable[[], None]]:
    labeled = pyproperf.labeled
    do = pyproperf.do
    ls = _LS
    f = _f
    r = range(n)

    def base_with() -> None:
        for _ in r:
            with _VarCM("/users"):
                pass

    def labeled_with() -> None:
        for _ in r:
            with labeled("endpoint", "/users"):
                pass

    def base_nested() -> None:
        with _VarCM("outer"):
            for _ in r:
                with _VarCM("/users"):
                    pass

    def labeled_nested() -> None:
        with labeled("tenant", "acme"):
            for _ in r:
                with labeled("endpoint", "/users"):
                    pass

    def base_call() -> None:
        for _ in r:
            with _VarCM("/users"):
                f(None)

    def do_call() -> None:
        for _ in r:
            do(None, ls, f)

    @labeled("endpoint", "/users")
    def decorated() -> None:
        return None

    def base_decorated_target() -> None:
        with _VarCM("/users"):
            pass

    def decorated_call() -> None:
        for _ in r:
            decorated()

    def base_decorated() -> None:
        for _ in r:
            base_decorated_target()

    return {
        "base_with": base_with,
        "labeled_with": labeled_with,
        "base_nested": base_nested,
        "labeled_nested": labeled_nested,
        "base_call": base_call,
        "do_call": do_call,
        "base_decorated": base_decorated,
        "decorated_call": decorated_call,
    }


# (label, measured loop, its baseline)
_CASES = [
    ("`with labeled(k, v)` (built in the statement)", "labeled_with", "base_with"),
    ("`with labeled(...)` nested in another region", "labeled_nested", "base_nested"),
    ("`do(None, ls, f)`", "do_call", "base_call"),
    ("`@labeled(k, v)` function call", "decorated_call", "base_decorated"),
]


def _round(loops: dict[str, Callable[[], None]], n: int, order: list[str]) -> dict[str, float]:
    out = {}
    for name in order:
        t0 = time.perf_counter_ns()
        loops[name]()
        out[name] = (time.perf_counter_ns() - t0) / n
    return out


def _measure(n: int, rounds: int) -> dict[str, list[float]]:
    loops = _loops(n)
    names = list(loops)
    samples: dict[str, list[float]] = {name: [] for name in names}
    _round(loops, n // 10 or 1, names)  # warm up
    for i in range(rounds):
        order = names if i % 2 == 0 else names[::-1]
        for name, ns in _round(loops, n, order).items():
            samples[name].append(ns)
    assert not _labels.frame_labels
    return samples


def _rows(samples: dict[str, list[float]], mode: str) -> list[str]:
    rows = []
    for title, case, base in _CASES:
        ratios = [c / b for c, b in zip(samples[case], samples[base], strict=True)]
        rows.append(
            f"| {title} | {mode} | {statistics.median(samples[base]):.0f} "
            f"| {statistics.median(samples[case]):.0f} | {statistics.median(ratios):.2f}x |"
        )
    return rows


def _switch_round_trips(n: int, traced: bool) -> float:
    """ns per greenlet switch pair (there and back), in a fresh thread."""
    import threading

    import greenlet

    out: list[float] = []

    def run() -> None:
        if traced:
            _labels.ensure_tracer(force=True)
        else:
            greenlet.settrace(None)
        main = greenlet.getcurrent()

        def other() -> None:
            while True:
                main.switch()

        g = greenlet.greenlet(other)
        with pyproperf.labeled("k", "v"):
            g2 = greenlet.greenlet(other)  # a labelled greenlet too
            g2.switch()
        switch = g.switch
        switch2 = g2.switch
        t0 = time.perf_counter_ns()
        for _ in range(n // 2):
            switch()
            switch2()
        out.append((time.perf_counter_ns() - t0) / n)
        g.throw(greenlet.GreenletExit)
        g2.throw(greenlet.GreenletExit)
        _labels.remove_tracer()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def _switch_rows(n: int, rounds: int) -> list[str]:
    plain: list[float] = []
    traced: list[float] = []
    for _ in range(rounds):
        plain.append(_switch_round_trips(n, False))
        traced.append(_switch_round_trips(n, True))
    ratios = [t / p for t, p in zip(traced, plain, strict=True)]
    return [
        f"| plain greenlet switch there and back (switch tracer vs none; no gevent) | off "
        f"| {statistics.median(plain):.0f} | {statistics.median(traced):.0f} "
        f"| {statistics.median(ratios):.2f}x |"
    ]


def _gevent_rows(n: int, rounds: int) -> list[str]:
    """gevent.sleep(0) in greenlets spawned inside a labelled region vs outside."""
    import gevent

    def worker(k: int) -> None:
        for _ in range(k):
            gevent.sleep(0)

    def run(labelled: bool) -> float:
        if labelled:
            with pyproperf.labeled("request", "r"):
                gs = [gevent.spawn(worker, n) for _ in range(2)]
        else:
            gs = [gevent.spawn(worker, n) for _ in range(2)]
        t0 = time.perf_counter_ns()
        gevent.joinall(gs)
        return (time.perf_counter_ns() - t0) / (2 * n)

    def spawn(labelled: bool) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n // 10):
            if labelled:
                with pyproperf.labeled("request", "r"):
                    g = gevent.spawn(_f, None)
            else:
                g = gevent.spawn(_f, None)
            g.join()
        return (time.perf_counter_ns() - t0) / (n // 10)

    rows = []
    for title, fn in (
        ("gevent.sleep(0) in a greenlet spawned in a region vs outside", run),
        ("gevent.spawn + join (region entry included) vs outside", spawn),
    ):
        base: list[float] = []
        lab: list[float] = []
        for i in range(rounds):
            if i % 2:
                base.append(fn(False))
                lab.append(fn(True))
            else:
                lab.append(fn(True))
                base.append(fn(False))
        ratios = [a / b for a, b in zip(lab, base, strict=True)]
        rows.append(
            f"| {title} | off | {statistics.median(base):.0f} | {statistics.median(lab):.0f} "
            f"| {statistics.median(ratios):.2f}x |"
        )
    return rows


def _loop_rows(n: int, rounds: int) -> list[str]:
    """Per task created, and per task step, on each loop: tasks created in a region vs outside.

    A labelled task costs its loop's hook once, at creation (its root frame
    registered, dropped at its end); its steps cost nothing more.
    """
    import asyncio

    import trio
    import uvloop

    async def empty() -> None:
        return None

    async def stepper(k: int, sleep: Callable[[float], Any]) -> None:
        for _ in range(k):
            await sleep(0)

    def on_asyncio(run: Callable[[Any], Any], make: Callable[[], Any], tasks: int) -> float:
        async def main() -> float:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter_ns()
            made = [loop.create_task(make()) for _ in range(tasks)]
            await asyncio.gather(*made)
            return time.perf_counter_ns() - t0

        return float(run(main()))

    def on_trio(make: Callable[[], Any], tasks: int) -> float:
        async def main() -> float:
            t0 = time.perf_counter_ns()
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(make)
            return time.perf_counter_ns() - t0

        return float(trio.run(main))

    runners: dict[str, Callable[[Callable[[], Any], int], float]] = {
        "asyncio": lambda make, t: on_asyncio(asyncio.run, make, t),
        "uvloop": lambda make, t: on_asyncio(uvloop.run, make, t),
        "trio": on_trio,
    }
    steps = 20
    rows = []
    for loop_name, run in runners.items():
        sleep: Callable[[float], Any] = trio.sleep if loop_name == "trio" else asyncio.sleep
        cases = (
            ("task created and run to its end", empty, n // 10, n // 10),
            (f"task step (await sleep(0), {steps} a task)",
             functools.partial(stepper, steps, sleep), n // 100, n // 100 * steps),
        )
        for title, make, tasks, ops in cases:
            base: list[float] = []
            lab: list[float] = []
            for i in range(rounds):
                for labelled in (i % 2 == 0, i % 2 != 0):
                    if labelled:
                        with pyproperf.labeled("request", "r"):
                            lab.append(run(make, tasks) / ops)
                    else:
                        base.append(run(make, tasks) / ops)
            assert not _labels.frame_labels
            ratios = [a / b for a, b in zip(lab, base, strict=True)]
            rows.append(
                f"| {loop_name}: {title}, created in a region vs outside | off "
                f"| {statistics.median(base):.0f} | {statistics.median(lab):.0f} "
                f"| {statistics.median(ratios):.2f}x |"
            )
    return rows


def main(quick: bool) -> None:
    n = 2_000 if quick else 20_000
    rounds = 5 if quick else 31
    print("| operation | profiler | baseline ns | labels ns | ratio (median) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in _rows(_measure(n, rounds), "off"):
        print(row, flush=True)
    for row in _switch_rows(n, 5 if quick else 15):
        print(row, flush=True)
    for row in _gevent_rows(n // 2, 5 if quick else 15):
        print(row, flush=True)
    for row in _loop_rows(n, 5 if quick else 15):
        print(row, flush=True)
    out = io.BytesIO()
    try:
        pyproperf.start_cpu_profile(out, hz=100)
    except NotImplementedError:
        print("| (CPU sampler not available: profiled rows skipped) | | | | |")
        return
    try:
        samples = _measure(n, rounds)
    finally:
        pyproperf.stop_cpu_profile()
    for row in _rows(samples, "100 Hz CPU"):
        print(row, flush=True)
    print(f"\n{rounds} rounds of {n} iterations; ratio = labels / baseline, same round.")
