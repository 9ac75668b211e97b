"""pyproperf.http: request latency per endpoint, and what a running server costs.

* latency: median wall time of one GET through ``serve()`` on loopback
  (new connection each time, as ``go tool pprof`` and Alloy do), with the
  main thread idle;
* idle cost: CPU time the server's threads use per second while nobody
  asks, and while one ``/profile?seconds=N`` request waits (the disconnect
  poll) -- measured from the process CPU clock with the main thread asleep;
* overhead: a CPU-bound loop with an idle server running vs without, as a
  ratio measured in alternating rounds of the same run.

Run: ``python -m tests.benchmarks http`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import http.client
import statistics
import time

import pyproperf.http
from pyproperf.http import _core as _http_core

ENDPOINTS = [
    "/debug/pprof/",
    "/debug/pprof/cmdline",
    "/debug/pprof/goroutine",
    "/debug/pprof/goroutine?debug=2",
    "/debug/pprof/threadcreate",
    "/debug/pprof/mutex",
    "/debug/pprof/nosuch",
]


def _get(port: int, target: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _latency(port: int, target: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        _get(port, target)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _idle_cpu(seconds: float) -> float:
    """Process CPU seconds per wall second while the caller sleeps."""
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def main(quick: bool) -> None:
    rounds = 5 if quick else 50
    with pyproperf.http.serve("127.0.0.1:0") as server:
        print("| request | median latency |")
        print("| --- | --- |")
        for target in ENDPOINTS:
            ms = _latency(server.port, target, rounds) * 1e3
            print(f"| GET {target} | {ms:.2f} ms |")

    window = 1.0 if quick else 5.0
    base = _idle_cpu(window)
    with pyproperf.http.serve("127.0.0.1:0"):
        idle = _idle_cpu(window)
    print()
    print("| state | process CPU per wall second |")
    print("| --- | --- |")
    print(f"| no server | {base * 1e3:.3f} ms/s |")
    print(f"| server, no requests | {idle * 1e3:.3f} ms/s |")
    # A delta request waits like /profile (same poll loop) without a profiler.
    with pyproperf.http.serve("127.0.0.1:0") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("GET", f"/debug/pprof/threadcreate?seconds={int(window) + 2}")
        time.sleep(0.5)
        waiting = _idle_cpu(window)
        conn.close()
    print(f"| one delta request waiting | {waiting * 1e3:.3f} ms/s |")

    n = 200_000 if quick else 2_000_000
    plain: list[float] = []
    served: list[float] = []
    for _ in range(3 if quick else 9):
        plain.append(_spin(n))
        with pyproperf.http.serve("127.0.0.1:0"):
            served.append(_spin(n))
    ratio = statistics.median(served) / statistics.median(plain)
    print()
    print("| workload | without server | with idle server | ratio |")
    print("| --- | --- | --- | --- |")
    print(
        f"| {n:,} loop iterations | {statistics.median(plain) * 1e3:.1f} ms | "
        f"{statistics.median(served) * 1e3:.1f} ms | {ratio:.3f} |"
    )
    print(f"\nmax_seconds cap: {_http_core.DEFAULT_MAX_SECONDS} s")
