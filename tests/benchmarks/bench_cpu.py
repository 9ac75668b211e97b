"""CPU profiler: overhead, cost per sample, write time, accuracy.

python -m tests.benchmarks cpu [--quick]

* overhead: the same CPU-bound work timed unprofiled, profiled and
  unprofiled again in each round inside one process; the median of the
  rounds' ratios, beside the noise (A/A) and a bare-signal floor.
* look rate: helper looks a second with busy threads while main is
  blocked (the GIL's turn-taking bounds it).
* sample cost: one tick of the sampler (wall clock, so every thread's
  stack is walked) against thread count and stack depth.
* contention: two CPU-bound threads beside a bursty worker, profiled or
  not (the cost of the sampler's short switch interval where threads
  compete for the GIL).
* write: encoding a profile of 100,000 distinct stacks.
* accuracy: tests/cpu_workloads.py's ground-truth workloads, share error
  pooled over runs (percentage points) and profiled/true total CPU.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pyproperf
from pyproperf import _helper, _sampler
from pyproperf._estimate import Sighting
from tests import cpu_workloads
from tests.pprof_tool import load, stacks


def cpu_bound(n: int) -> int:
    """A mix of calls, arithmetic, dict and string work."""

    def fib(k: int) -> int:
        return k if k < 2 else fib(k - 1) + fib(k - 2)

    total = 0
    d: dict[str, int] = {}
    for i in range(n):
        total += fib(12)
        d[str(i % 97)] = d.get(str(i % 97), 0) + i
    return total + len(d)


def overhead(hz: int, clock: str, rounds: int) -> tuple[float, float, float, float]:
    """Profiled/unprofiled time of the same work: (round ms, ratio, A/A, bare-signal floor).

    Each round times the work unprofiled, profiled, and unprofiled again;
    its ratio is profiled over the mean of the two around it, so the
    machine's drift between rounds cancels.  Medians over rounds.  "A/A"
    is the second unprofiled time over the first: the noise of the
    measurement.  The floor is the same ratio with nothing but a no-op
    Python SIGPROF handler on ``setitimer(ITIMER_PROF)`` at ``hz``: what
    the platform charges for the signals themselves.
    """
    n = 1_500  # about 60 ms a round on the project machine
    cpu_bound(n)

    def paired(
        start: Callable[[], object], stop: Callable[[], object]
    ) -> tuple[float, float, float]:
        ratios: list[float] = []
        aa: list[float] = []
        base: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            cpu_bound(n)
            off = time.perf_counter() - t0
            start()
            t0 = time.perf_counter()
            cpu_bound(n)
            on = time.perf_counter() - t0
            stop()
            t0 = time.perf_counter()
            cpu_bound(n)
            off2 = time.perf_counter() - t0
            ratios.append(on / ((off + off2) / 2))
            aa.append(off2 / off)
            base.append(off)
        return statistics.median(base), statistics.median(ratios), statistics.median(aa)

    base, ratio, aa = paired(
        lambda: pyproperf.start_cpu_profile(io.BytesIO(), hz=hz, clock=clock),
        pyproperf.stop_cpu_profile,
    )
    previous = signal.signal(signal.SIGPROF, lambda signum, frame: None)
    try:
        _, floor, _ = paired(
            lambda: signal.setitimer(signal.ITIMER_PROF, 1 / hz, 1 / hz),
            lambda: signal.setitimer(signal.ITIMER_PROF, 0, 0),
        )
    finally:
        signal.signal(signal.SIGPROF, previous)
    return base, ratio, aa, floor


def look_rate(busy: int, hz: int, seconds: float) -> tuple[float, float]:
    """Helper looks a second and the longest gap (ms): ``busy`` threads, main joined."""
    engine = _sampler.engine
    looks: list[int] = []
    original = engine.helper_tick

    def counted(
        before: dict[int, int], seen: dict[int, Sighting], window: int,
        interval_ns: int, since: int, *, wait: bool = True,
        probe_end: dict[int, int] | None = None, stopped: frozenset[int] = frozenset(),
    ) -> _sampler.Look:
        looks.append(time.monotonic_ns())
        return original(before, seen, window, interval_ns, since, wait=wait,
                        probe_end=probe_end, stopped=stopped)

    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1_000):
                x += i

    workers = [threading.Thread(target=spin) for _ in range(busy)]
    engine.helper_tick = counted  # type: ignore[method-assign]
    try:
        pyproperf.start_cpu_profile(io.BytesIO(), hz=hz)
        timer = threading.Timer(seconds, stop.set)
        for t in workers:
            t.start()
        timer.start()
        for t in workers:
            t.join()
        pyproperf.stop_cpu_profile()
    finally:
        del engine.helper_tick
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    return len(looks) / ((looks[-1] - looks[0]) / 1e9), max(gaps) / 1e6


def park(depth: int, ready: threading.Barrier, stop: threading.Event) -> None:
    if depth > 1:
        park(depth - 1, ready, stop)
        return
    ready.wait()
    stop.wait()


@contextlib.contextmanager
def parked(threads: int, depth: int, clock: str) -> Iterator[_sampler._Engine]:
    """``threads`` threads parked ``depth`` frames deep, with the engine feeding one profile."""
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(target=park, args=(depth, ready, stop), daemon=True)
        for _ in range(threads)
    ]
    for t in workers:
        t.start()
    ready.wait()
    engine = _sampler.engine
    collector = _sampler.Collector(100, clock)
    engine.add(collector)
    try:
        yield engine
    finally:
        engine.remove(collector)
        stop.set()
        for t in workers:
            t.join()


def sample_cost(threads: int, depth: int, ticks: int) -> float:
    times = []
    with parked(threads, depth, "wall") as engine:
        for _ in range(ticks):
            t0 = time.perf_counter()
            # One helper look: the probe's clock reads and stacks, then every thread's.
            before = engine.read_clocks()
            engine.helper_tick(before, engine.capture(list(before)), 0, 5_000_000, 10_000_000)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_time(n_stacks: int, repeats: int) -> float:
    """Encode a profile of ``n_stacks`` distinct stacks (20 frames each)."""
    codes = [
        compile(f"def f{i}(): pass", f"mod{i % 50}.py", "exec").co_consts[0] for i in range(400)
    ]
    collector = _sampler.Collector(100, "cpu")
    for i in range(n_stacks):
        key: list[object] = [codes[i % 400], i // 400 * 2]  # a distinct leaf
        for d in range(1, 20):
            key += [codes[(i * 7 + d * 13) % len(codes)], (i + d) % 64 * 2]
        collector.agg[(tuple(key), None, "MainThread")] = [1, 10_000_000]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = collector.build()
        times.append(time.perf_counter() - t0)
    assert len(load(data).sample) == n_stacks
    return statistics.median(times)


def clock_read_cost(threads: int, reads: int) -> float:
    """One helper look's clock reads (``read_clocks``) with ``threads`` parked threads."""
    times = []
    with parked(threads, 5, "cpu") as engine:
        for _ in range(reads):
            t0 = time.perf_counter()
            engine.read_clocks()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def contention_cost(rounds: int, n: int = 1_500) -> tuple[float, float]:
    """Two CPU-bound threads beside a worker of 2 ms bursts, profiled at 100 Hz or not.

    The sampler shortens the switch interval for the bursts, and puts the
    program's back when it finds threads competing for the GIL: what does
    that cost the competing threads?  Paired rounds as in ``overhead``
    (the bursty worker runs in both); returns (unprofiled round, ratio).
    Each profiled round is a new profile: short rounds (``n``) show what
    a profile's first 0.1 s costs, before its holds of the program's
    interval have grown; long ones what it costs once running.
    """

    def round_time() -> float:
        stop = threading.Event()

        def bursts() -> None:
            while not stop.is_set():
                cpu_workloads.spin(0.002)
                stop.wait(0.004)

        worker = threading.Thread(target=bursts)
        worker.start()
        spinners = [threading.Thread(target=cpu_bound, args=(n,)) for _ in range(2)]
        t0 = time.perf_counter()
        for t in spinners:
            t.start()
        for t in spinners:
            t.join()
        elapsed = time.perf_counter() - t0
        stop.set()
        worker.join()
        return elapsed

    ratios: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        off = round_time()
        pyproperf.start_cpu_profile(io.BytesIO(), hz=100)
        try:
            on = round_time()
        finally:
            pyproperf.stop_cpu_profile()
        off2 = round_time()
        ratios.append(on / ((off + off2) / 2))
        base.append(off)
    return statistics.median(base), statistics.median(ratios)


@contextlib.contextmanager
def never_shortened() -> Iterator[None]:
    """The sampler as it would be without its short switch interval (for comparison)."""
    saved = _helper.BURST_INTERVAL_S
    _helper.BURST_INTERVAL_S = 1.0  # longer than any program's: never set
    try:
        yield
    finally:
        _helper.BURST_INTERVAL_S = saved


def mixed(hz: int, runs: int) -> tuple[float, float, float, float, float]:
    """work_then_wait: CPU share on waits and unseen (%, pooled), profiled/true CPU, the
    worker's CPU found on its ``work_step`` (share of its measured work), and
    main_blocks_after(4 ms, 0.3 s): the worker's share kept on its function (worst run)."""
    waits = unseen = prof = true = worker_step = worker_true = 0.0
    kept = 1.0
    step = f"{cpu_workloads.MODULE}.work_step"
    for _ in range(runs):
        buf = io.BytesIO()
        pyproperf.start_cpu_profile(buf, hz=hz)
        truth = cpu_workloads.work_then_wait(1.0)
        pyproperf.stop_cpu_profile()
        for names, v, labels in stacks(load(buf.getvalue())):
            seconds = v[1] / 1e9
            prof += seconds
            if names and names[0] == "(ran between samples)":
                unseen += seconds
            if any(n.endswith(("nap", "Condition.wait")) for n in names):
                waits += seconds
            if labels.get("thread") == "worker" and step in names:
                worker_step += seconds
        true += sum(truth.values())
        worker_true += truth["worker"]
        buf = io.BytesIO()
        pyproperf.start_cpu_profile(buf, hz=hz)
        truth = cpu_workloads.main_blocks_after(0.004, 0.3)
        pyproperf.stop_cpu_profile()
        burn = sum(v[1] / 1e9 for names, v, _ in stacks(load(buf.getvalue()))
                   if f"{cpu_workloads.MODULE}.burn" in names)
        kept = min(kept, burn / truth["burn"])
    return (100 * waits / prof, 100 * unseen / prof, prof / true, worker_step / worker_true,
            kept)


def accuracy(name: str, runs: int) -> tuple[float, float, int]:
    """Share error (pp) pooled over runs and profiled/true CPU ratio."""
    workload: Callable[[float], dict[str, float]] = cpu_workloads.WORKLOADS[name]
    truth_total: dict[str, float] = {}
    prof_total: dict[str, float] = {}
    for _ in range(runs):
        buf = io.BytesIO()
        pyproperf.start_cpu_profile(buf)
        truth = workload(1.0)
        pyproperf.stop_cpu_profile()
        p = load(buf.getvalue())
        for fn, seconds in truth.items():
            truth_total[fn] = truth_total.get(fn, 0.0) + seconds
            qual = f"{cpu_workloads.MODULE}.{fn}"
            prof_total[fn] = prof_total.get(fn, 0.0) + sum(
                v[1] / 1e9 for names, v, _ in stacks(p) if qual in names
            )
    t_sum, p_sum = sum(truth_total.values()), sum(prof_total.values())
    err = max(abs(100 * prof_total[f] / p_sum - 100 * truth_total[f] / t_sum) for f in truth_total)
    return err, p_sum / t_sum, runs


def main(quick: bool) -> None:
    rounds = 10 if quick else 120
    print("### Overhead (CPU-bound work, paired rounds, medians)\n")
    print("| clock | hz | unprofiled round | profiled / unprofiled | A/A (noise) "
          "| bare SIGPROF floor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for clock in ("cpu", "wall"):
        for hz in (100, 1000):
            b, r, aa, floor = overhead(hz, clock, rounds)
            print(f"| {clock} | {hz} | {b * 1e3:.1f} ms | {r:.3f} | {aa:.3f} | {floor:.3f} |",
                  flush=True)

    print("\n### Helper looks with busy threads and main blocked in join (hz=1000)\n")
    print("| busy threads | looks a second | longest gap |")
    print("| --- | --- | --- |")
    for busy in (1, 4, 8):
        rate, gap = look_rate(busy, 1000, 1.0 if quick else 3.0)
        print(f"| {busy} | {rate:.0f} | {gap:.0f} ms |", flush=True)

    print("\n### Cost of one sample (wall clock: every thread's stack walked)\n")
    print("| threads | stack depth | per tick | per thread |")
    print("| --- | --- | --- | --- |")
    for threads in (1, 8, 64):
        for depth in (10, 100):
            cost = sample_cost(threads, depth, 20 if quick else 100)
            print(
                f"| {threads} | {depth} | {cost * 1e6:.0f} µs | {cost / threads * 1e6:.1f} µs |",
                flush=True,
            )

    print("\n### Cost of a helper look's clock reads (one per thread, parked threads)\n")
    print("| threads | read_clocks | per thread |")
    print("| --- | --- | --- |")
    for threads in (1, 8, 64):
        cost = clock_read_cost(threads, 100 if quick else 1000)
        print(f"| {threads} | {cost * 1e6:.1f} µs | {cost / threads * 1e6:.2f} µs |", flush=True)

    print("\n### Work then wait (main 6 ms work / 10 ms sleep, worker 4 ms / 12 ms wait)\n")
    print("| hz | runs | CPU on waits | (ran between samples) | profiled / true CPU "
          "| worker's work on its work_step | worker kept when main blocks |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for hz in (100, 200):
        runs = 2 if quick else 10
        w, u, r, ws, k = mixed(hz, runs)
        print(f"| {hz} | {runs} | {w:.1f} % | {u:.1f} % | {r:.3f} | {100 * ws:.1f} % "
              f"| {100 * k:.1f} % |", flush=True)

    print("\n### Threads competing for the GIL beside short bursts (100 Hz, paired rounds)\n")
    print("| round (a new profile each) | rounds | two CPU-bound threads, unprofiled "
          "| profiled / unprofiled | same, the switch interval never shortened |")
    print("| --- | --- | --- | --- | --- |")
    for n, rounds, label in ((1_500, 10 if quick else 40, "short (0.1 s)"),
                             (30_000, 2 if quick else 8, "long (2 s)")):
        b, r = contention_cost(rounds, n)
        with never_shortened():
            _, r_plain = contention_cost(rounds, n)
        print(f"| {label} | {rounds} | {b * 1e3:.0f} ms | {r:.3f} "
              f"| {r_plain:.3f} |", flush=True)

    print("\n### Writing a profile\n")
    n = 100_000
    t = write_time(n, 1 if quick else 3)
    print(f"{n:,} distinct stacks of 20 frames: {t:.2f} s (median)\n", flush=True)

    print("### Accuracy against measured truth (100 Hz, cpu clock)\n")
    print("| workload | runs | max share error (pp, pooled) | profiled / true CPU |")
    print("| --- | --- | --- | --- |")
    for name in cpu_workloads.WORKLOADS:
        # Short workloads (about 0.25 s of CPU a run, or short bursts sighted a few times a
        # run): more runs, for their error to measure bias rather than sampling noise
        # (random_schedule 3.3 pp at 10 runs, 0.45 at 40; asyncio_tasks, about 45 ticks
        # a run, 2.34 and 0.31 at 10 on the same code, 1.31 at 40).  worker_bursts: about 40
        # sightings a run, a quarter of them short bursts, so the short bursts' share has
        # a sampling noise of about 1.1 pp at 40 runs (21.6-26.3 % measured, for a true
        # 25 %), 0.65 at 120.
        runs = 2 if quick else {"random_schedule": 40, "asyncio_tasks": 40,
                                "worker_bursts": 120}.get(name, 10)
        err, ratio, runs = accuracy(name, runs)
        print(f"| {name} | {runs} | {err:.2f} | {ratio:.3f} |", flush=True)
