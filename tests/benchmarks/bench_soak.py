"""Soak: memory of a long CPU profile at 1000 Hz under a server-like load.

Eight threads (the main thread and seven others) serve "requests": each is
a ``pyproperf.do`` call with a unique request id label on top of one of 20
route contexts, three ``labeled("stage", ...)`` regions inside, CPU work
through a random path of 2-7 calls among 64 generated functions (distinct
code objects, so stacks are many and distinct), sometimes a 1 ms sleep in
a region, a short-lived child thread every 100 requests (it inherits the
labels), and a 0-4 ms sleep between requests.

Two variants, each in a fresh process so their RSS do not mix:

* ``single``: one ``start_cpu_profile`` at 1000 Hz for the whole soak,
  written after the workers stop;
* ``rotate``: stop and start every 30 s, as a server answering
  ``/debug/pprof/profile?seconds=30`` back to back would; each profile is
  written while the workers run.

Profiles go to a sink that counts their bytes and keeps none.  Every 10 s
the monitor thread records VmRSS and VmHWM (peak) from
``/proc/self/status``, pymalloc's arenas and the bytes in use in them
(``sys._debugmallocstats``), the number of distinct keys (stack, labels,
thread name) the running collector holds, what those keys and their label
sets take (a deep size: tuples, ints, lists, label sets and their strings;
not the code objects), and the label sets alive.  At the end, after the
profile is stopped and garbage collected: what is left behind (registered
frames, thread states, label sets, collectors).

Not in the default run of ``python -m tests.benchmarks`` (it lasts
minutes): ask for it by name.

    python -m tests.benchmarks soak            # both variants, 300 s each
    python -m tests.benchmarks soak --quick    # both, 15 s each
    python -m tests.benchmarks.bench_soak --variant single --seconds 180 [--tracemalloc]

``PYPROPERF_SOAK_SECONDS`` overrides the duration of each variant.
``--tracemalloc`` traces allocations (1 frame; the workload runs slower)
and prints the biggest growths from the first sample at or after
``--trace-from`` seconds (default 60; rotate: the first rotation then) to
the last one (rotate: the last rotation), and to after the final stop.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyproperf
from pyproperf import _cpu, _labels
from pyproperf._labels import _state as _labels_state
from pyproperf._sampler import Collector, engine

THREADS = 8  # the main thread and seven others
HZ = 1000
FUNCTIONS = 64
ROUTES = 20
STAGES = ("parse", "query", "render")
CHILD_EVERY = 100  # requests of a worker between two short-lived child threads
FULL_S = 300.0
QUICK_S = 15.0
SAMPLE_S = 10.0
ROTATE_S = 30.0

_MB = 1024 * 1024

_Func = Callable[[tuple[int, ...], int], int]


def _make_functions(n: int) -> list[_Func]:
    """``n`` distinct functions: each works a little, then calls the next one on the path.

    The work allocates nothing (every int stays below 257, CPython's cached
    ones), so the heap the soak watches is the profiler's and the request
    path's, and ``--tracemalloc`` slows the work little.
    """
    parts = []
    for i in range(n):
        parts.append(
            f"def f{i}(path, depth):\n"
            f"    acc = {i}\n"
            f"    for _ in range({3 + i % 10}):\n"
            f"        for j in SMALL:\n"
            f"            acc = ((acc ^ j) + {i % 7 + 1}) & 127\n"
            f"    if depth < len(path):\n"
            f"        acc ^= FUNCS[path[depth]](path, depth + 1)\n"
            f"    else:\n"
            f"        for _ in range({8 + (i * 13) % 16}):\n"
            f"            for j in SMALL:\n"
            f"                acc = ((acc + j) ^ {i % 5}) & 127\n"
            f"    return acc\n\n"
        )
    namespace: dict[str, Any] = {"SMALL": tuple(range(64))}
    exec(compile("".join(parts), "soak_generated.py", "exec"), namespace)
    funcs: list[_Func] = [namespace[f"f{i}"] for i in range(n)]
    namespace["FUNCS"] = funcs
    return funcs


class _Workload:
    """The request loop the eight threads run."""

    def __init__(self) -> None:
        self.funcs = _make_functions(FUNCTIONS)
        self.routes = [
            pyproperf.with_labels(None, pyproperf.labels("route", f"/api/v1/r{i}"))
            for i in range(ROUTES)
        ]
        self.ids = itertools.count()
        self.stop = threading.Event()
        self.done = [0] * THREADS  # requests, per worker
        self.children = [0] * THREADS  # child threads, per worker

    def worker(self, index: int) -> None:
        rng = random.Random(index)
        do = pyproperf.do
        labels = pyproperf.labels
        n = len(self.funcs)
        routes = self.routes
        while not self.stop.is_set():
            rid = next(self.ids)
            path = tuple(rng.randrange(n) for _ in range(rng.randint(2, 7)))
            child = (self.done[index] + 1) % CHILD_EVERY == 0
            do(
                routes[rng.randrange(len(routes))],
                labels("req", str(rid)),
                functools.partial(self.handle, index, rng, path, child),
            )
            self.done[index] += 1
            time.sleep(rng.uniform(0.0, 0.004))

    def handle(
        self, index: int, rng: random.Random, path: tuple[int, ...], child: bool, ctx: object
    ) -> None:
        first = self.funcs[path[0]]
        for stage in STAGES:
            with pyproperf.labeled("stage", stage):
                for _ in range(rng.randint(1, 4)):
                    first(path, 1)
                if stage == "query" and rng.random() < 0.3:
                    time.sleep(0.001)  # waiting inside a region
                if child and stage == "render":
                    t = threading.Thread(target=first, args=(path, 1), name="soak-child")
                    t.start()
                    t.join()
                    self.children[index] += 1


# -- measurements ----------------------------------------------------------------------


def _status_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in kB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def _pymalloc() -> tuple[float, float]:
    """MB of pymalloc's arenas (the small-object heap) and of the blocks in use in them.

    From ``sys._debugmallocstats()``, which writes to file descriptor 2.
    Their difference is free space inside arenas: freed blocks the heap
    keeps, and pools an arena cannot return while one block in it lives.
    """
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("ascii", "replace")
    arenas = used = 0
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.startswith("# arenas allocated current"):
            arenas = int(value.replace(",", ""))
        elif name.startswith("# bytes in allocated blocks"):
            used = int(value.replace(",", ""))
    return arenas * 1024 * 1024 / _MB, used / _MB  # arenas are 1 MiB on 64-bit CPython 3.10+


def _mb(value: float, digits: int) -> str:
    """A pymalloc figure, or n/a (tracemalloc's hooks hide pymalloc's statistics)."""
    return f"{value:.{digits}f}" if value else "n/a"


def _running_collector() -> Collector | None:
    profile = _cpu._go.profile
    return profile[0] if profile is not None else None


def _measure(collector: Collector | None) -> tuple[int, int, int]:
    """Distinct keys, samples and the bytes the collector's table holds (a deep size).

    Walked while holding the sampler's tick lock (ticks wait; a copy of the
    table would itself grow the heap being measured).  Counted: the dict,
    each key tuple, stack tuple and its large ints (the instruction
    offsets above 256, one object each), each ``[samples, ns]`` list and
    its ints, and once each, however many keys share it, every label set
    with its pairs, strings, cached context and merge cache.  Not counted:
    code objects (the program has them anyway) and small ints (shared).
    """
    if collector is None:
        return 0, 0, 0
    getsizeof = sys.getsizeof
    seen: set[int] = set()  # label sets and strings: a few per request, not per key
    with engine._tick_lock:
        agg = collector.agg
        total = getsizeof(agg)
        samples = 0
        for key, slot in agg.items():
            stack, ls, name = key
            total += getsizeof(key) + getsizeof(stack) + getsizeof(slot)
            for x in stack:
                if type(x) is int and not -5 <= x <= 256:
                    total += getsizeof(x)
            for x in slot:
                if not -5 <= x <= 256:
                    total += getsizeof(x)
            samples += slot[0]
            if id(name) not in seen:
                seen.add(id(name))
                total += getsizeof(name)
            if isinstance(ls, pyproperf.LabelSet) and id(ls) not in seen:
                seen.add(id(ls))
                total += _label_set_size(ls, seen)
        return len(agg), samples, total


def _label_set_size(ls: pyproperf.LabelSet, seen: set[int]) -> int:
    """A label set's deep size: pairs, strings not in ``seen`` (added), context, merge cache."""
    getsizeof = sys.getsizeof
    total = getsizeof(ls) + getsizeof(ls.pairs)
    for pair in ls.pairs:
        total += getsizeof(pair)
        for text in pair:
            if id(text) not in seen:
                seen.add(id(text))
                total += getsizeof(text)
    if ls._ctx is not None:
        total += getsizeof(ls._ctx)
    if ls._merged is not None:
        total += getsizeof(ls._merged)
    return total


def _alive() -> dict[str, int]:
    """Label sets and collectors alive, and all objects the garbage collector tracks."""
    objs = gc.get_objects()
    out = {
        "gc objects": len(objs),
        "label sets": sum(1 for o in objs if type(o) is pyproperf.LabelSet),
        "collectors": sum(1 for o in objs if type(o) is Collector),
    }
    del objs
    return out


class _SizedSink:
    """Where profiles go: counts the bytes, keeps none (they would count in the RSS)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.n += len(data)
        return len(data)


class _Monitor:
    """Samples memory every ``sample_s``; in the rotate variant, rotates the profile."""

    def __init__(
        self, work: _Workload, seconds: float, sample_s: float, rotate_s: float | None,
        trace: bool, sink: _SizedSink, trace_from: float = 0.0,
    ) -> None:
        self.work = work
        self.sink = sink
        self.seconds = seconds
        self.sample_s = sample_s
        self.rotate_s = rotate_s
        self.trace = trace
        self.trace_from = trace_from
        self.rows: list[dict[str, float]] = []
        self.windows: list[dict[str, float]] = []
        self.snapshots: list[tuple[float, tracemalloc.Snapshot]] = []
        self.t0 = time.monotonic()
        self.errors: list[BaseException] = []

    def sample(self, now: float, collector: Collector | None) -> None:
        st = _status_kb()
        keys, samples, size = _measure(collector)
        alive = _alive()
        arenas, used = _pymalloc()
        self.rows.append({
            "arenas": arenas,
            "used": used,
            "t": now - self.t0,
            "rss": st["VmRSS"] / 1024,
            "peak": st["VmHWM"] / 1024,
            "keys": keys,
            "samples": samples,
            "agg": size / _MB,
            "label sets": alive["label sets"],
            "gc objects": alive["gc objects"],
            "requests": sum(self.work.done),
            "states": len(engine.states),
            "frames": len(_labels.frame_labels),
        })
        if self.trace and self.rotate_s is None and now - self.t0 >= self.trace_from:
            self._snapshot(now)

    def _snapshot(self, now: float) -> None:
        gc.collect()
        self.snapshots.append((now - self.t0, tracemalloc.take_snapshot()))
        if len(self.snapshots) > 2:
            del self.snapshots[1]  # keep the first and the latest

    def rotate(self, now: float) -> None:
        keys, samples, _ = _measure(_running_collector())
        signals = engine.signals.armed  # the main thread's own timer ticked for this profile
        t0 = time.perf_counter()
        pyproperf.stop_cpu_profile()
        written = time.perf_counter() - t0
        size = self.sink.n
        self.sink = _SizedSink()
        pyproperf.start_cpu_profile(self.sink, hz=HZ)
        self.windows.append({
            "t": now - self.t0, "keys": keys, "samples": samples, "bytes": size, "write": written,
            "sigprof": signals,
        })
        if self.trace and now - self.t0 >= self.trace_from:
            self._snapshot(now)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            self.errors.append(exc)
        finally:
            self.work.stop.set()

    def _run(self) -> None:
        end = self.t0 + self.seconds
        next_sample = self.t0 + self.sample_s
        next_rotate = self.t0 + self.rotate_s if self.rotate_s else float("inf")
        self.sample(time.monotonic(), _running_collector())
        while True:
            due = min(next_sample, next_rotate, end)
            time.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            if now >= next_rotate and now < end:
                self.rotate(now)
                next_rotate += self.rotate_s or 0
            if now >= next_sample or now >= end:
                self.sample(now, _running_collector())
                next_sample += self.sample_s
            if now >= end:
                return


def run(
    seconds: float, variant: str, sample_s: float, rotate_s: float, trace: bool,
    trace_from: float = 60.0,
) -> None:
    """One soak in this process; prints its tables.

    ``trace``: trace allocations, and compare the first snapshot taken at
    or after ``trace_from`` s (single: at a sample; rotate: just after a
    rotation) with the last one, and with one taken after the final stop.
    """
    if trace:
        tracemalloc.start(1)
    work = _Workload()
    base = _status_kb()
    print(
        f"### {variant}: {seconds:.0f} s, {THREADS} threads, {HZ} Hz, Python "
        f"{platform.python_version()}"
        + (", tracemalloc on (1 frame)" if trace else "")
        + "\n"
    )
    print(f"RSS before the profile starts (functions compiled, threads not started): "
          f"{base['VmRSS'] / 1024:.1f} MB\n", flush=True)
    sink = _SizedSink()
    pyproperf.start_cpu_profile(sink, hz=HZ)
    monitor = _Monitor(
        work, seconds, sample_s, rotate_s if variant == "rotate" else None, trace, sink,
        trace_from,
    )
    _serve(work, monitor)

    collector = _running_collector()
    keys = len(collector.agg) if collector is not None else 0
    t0 = time.perf_counter()
    pyproperf.stop_cpu_profile()
    write_s = time.perf_counter() - t0
    final_bytes = monitor.sink.n
    del collector
    snap_end = None
    if trace:
        gc.collect()
        snap_end = (time.monotonic() - monitor.t0, tracemalloc.take_snapshot())
    gc.collect()
    after = _status_kb()
    alive = _alive()
    arenas, used = _pymalloc()
    _print_memory(monitor.rows, after, alive, arenas, used, work)
    _print_windows(monitor.windows)
    rows = monitor.rows
    first = next((r for r in rows if r["t"] >= sample_s * 0.9), rows[0])
    last = rows[-1]
    what = "last profile" if variant == "rotate" else "profile"
    print(f"- {what}: {keys:,} distinct keys, {final_bytes / 1024:.0f} KB gzipped, "
          f"stop + write {write_s:.2f} s (workers stopped)")
    if variant == "single" and last["keys"] > first["keys"]:
        per_key = (last["rss"] - first["rss"]) * _MB / (last["keys"] - first["keys"])
        deep = (last["agg"] - first["agg"]) * _MB / (last["keys"] - first["keys"])
        print(f"- RSS growth per distinct key from t={first['t']:.0f} s to the end: "
              f"{per_key:,.0f} B (the keys' deep size: {deep:,.0f} B a key)")
    print(f"- requests {sum(work.done):,}, child threads {sum(work.children):,}, sampler errors "
          f"{engine.errors}")
    print(f"- left after stop + gc: registered frames {len(_labels.frame_labels)}, thread "
          f"states {len(engine.states)}, label sets {alive['label sets']:,}, collectors "
          f"{alive['collectors']}, args cache {len(_labels_state.args_cache):,}")
    print(flush=True)
    if trace and monitor.snapshots and snap_end is not None:
        t_first, s_first = monitor.snapshots[0]
        t_last, s_last = monitor.snapshots[-1]
        _print_growth(t_first, s_first, t_last, s_last)
        t_end, s_end = snap_end
        print(f"After the final stop (t={t_end:.0f} s) against t={t_first:.0f} s:\n")
        _print_growth(t_first, s_first, t_end, s_end)


def _serve(work: _Workload, monitor: _Monitor) -> None:
    """Serve on ``THREADS`` threads (this one too) while ``monitor`` runs; raise its error."""
    threads = [
        threading.Thread(target=work.worker, args=(i,), name=f"worker-{i}")
        for i in range(1, THREADS)
    ]
    for t in threads:
        t.start()
    mon = threading.Thread(target=monitor.run, name="soak-monitor")
    mon.start()
    work.worker(0)
    for t in threads:
        t.join()
    mon.join()
    if monitor.errors:
        raise monitor.errors[0]


def _print_memory(
    rows: list[dict[str, float]], after: dict[str, int], alive: dict[str, int],
    arenas: float, used: float, work: _Workload,
) -> None:
    """The monitor's samples, and a last row of what was measured after the final stop."""
    print("| t (s) | RSS MB | peak RSS MB | pymalloc arenas MB | in use MB | distinct keys "
          "| samples | keys' deep size MB | label sets alive | gc objects | thread states "
          "| frames registered | requests |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for r in rows:
        print(f"| {r['t']:.0f} | {r['rss']:.1f} | {r['peak']:.1f} | {_mb(r['arenas'], 0)} "
              f"| {_mb(r['used'], 1)} | {r['keys']:,.0f} "
              f"| {r['samples']:,.0f} | {r['agg']:.1f} | {r['label sets']:,.0f} "
              f"| {r['gc objects']:,.0f} | {r['states']:.0f} | {r['frames']:.0f} "
              f"| {r['requests']:,.0f} |")
    print(f"| after stop + gc | {after['VmRSS'] / 1024:.1f} | {after['VmHWM'] / 1024:.1f} "
          f"| {_mb(arenas, 0)} | {_mb(used, 1)} | - | - | - | {alive['label sets']:,} "
          f"| {alive['gc objects']:,} "
          f"| {len(engine.states)} | {len(_labels.frame_labels)} | {sum(work.done):,} |")
    print()


def _print_windows(windows: list[dict[str, float]]) -> None:
    """The rotate variant's table: one row per profile written (none for ``single``)."""
    if not windows:
        return
    print("| profile | stopped at (s) | SIGPROF ticks | distinct keys | samples | size KB "
          "| stop+write s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for i, w in enumerate(windows, 1):
        print(f"| {i} | {w['t']:.0f} | {'yes' if w['sigprof'] else 'no'} "
              f"| {w['keys']:,.0f} | {w['samples']:,.0f} | {w['bytes'] / 1024:.0f} "
              f"| {w['write']:.2f} |")
    print()


def _print_growth(t0: float, s0: tracemalloc.Snapshot, t1: float, s1: tracemalloc.Snapshot
                  ) -> None:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    s0 = s0.filter_traces(filters)
    s1 = s1.filter_traces(filters)
    total0 = sum(s.size for s in s0.statistics("filename"))
    total1 = sum(s.size for s in s1.statistics("filename"))
    print(f"tracemalloc, t={t0:.0f} s -> t={t1:.0f} s: traced {total0 / _MB:.1f} -> "
          f"{total1 / _MB:.1f} MB; biggest growths by line:\n")
    print("| size diff | count diff | size now | where |")
    print("| ---: | ---: | ---: | --- |")
    for d in s1.compare_to(s0, "lineno")[:12]:
        frame = d.traceback[0]
        where = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
        print(f"| {d.size_diff / 1024:+,.0f} KB | {d.count_diff:+,} | {d.size / 1024:,.0f} KB "
              f"| `{where}` |")
    print(flush=True)


def _durations(quick: bool) -> float:
    env = os.environ.get("PYPROPERF_SOAK_SECONDS")
    if env:
        return float(env)
    return QUICK_S if quick else FULL_S


def main(quick: bool) -> None:
    """Both variants, each in its own process (their RSS must not mix)."""
    seconds = _durations(quick)
    sample_s = SAMPLE_S if not quick else 2.5
    rotate_s = ROTATE_S if not quick else 5.0
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    print("The machine may be shared: the RSS figures do not depend on it, the key and "
          "sample counts (how much work and how many ticks there were) do.\n", flush=True)
    for variant in ("single", "rotate"):
        subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.bench_soak", "--variant", variant,
             "--seconds", str(seconds), "--sample", str(sample_s), "--rotate", str(rotate_s)],
            check=True, cwd=root, env=env,
        )


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_soak")
    parser.add_argument("--variant", choices=("single", "rotate"), default="single")
    parser.add_argument("--seconds", type=float, default=FULL_S)
    parser.add_argument("--sample", type=float, default=SAMPLE_S, help="RSS every this many s")
    parser.add_argument("--rotate", type=float, default=ROTATE_S,
                        help="rotate variant: a profile every this many s")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace allocations; print the biggest growths")
    parser.add_argument("--trace-from", type=float, default=60.0,
                        help="with --tracemalloc: the first snapshot compared, at or after this")
    args = parser.parse_args()
    run(args.seconds, args.variant, args.sample, args.rotate, args.tracemalloc, args.trace_from)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
