"""Summarise a web server's access log: a CPU-bound example to profile.

    python -m pyproperf run -o cpu.pb.gz tests/examples/logstats.py
    python -m pyproperf top cpu.pb.gz

The work has four stages of clearly different cost, so the profile has
something to show: ``parse_line`` (a regular expression, a timestamp
through ``datetime.strptime`` and some string handling per line: the most
expensive, counting what it calls), ``fingerprint`` (hashing each
request with hashlib), ``percentiles`` (sorting latencies per path) and
``generate`` (making the synthetic log).  Takes about two seconds; use
``--lines N`` to change the size.  Deterministic: the same log every run.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

PATHS = [
    "/", "/login", "/logout", "/search", "/cart", "/checkout", "/api/items",
    "/api/items/{id}", "/api/users/{id}", "/static/app.js", "/static/app.css",
]
AGENTS = [
    "curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "python-requests/2.32", "Go-http-client/1.1",
]
LINE = re.compile(
    r'(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" '
    r'(?P<status>\d{3}) (?P<size>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<ms>\d+\.\d+)'
)


@dataclass
class Request:
    ip: str
    time: datetime
    method: str
    path: str
    status: int
    size: int
    agent: str
    ms: float


def generate(n: int, seed: int = 1) -> list[str]:
    """``n`` access-log lines in the combined format, plus a latency field."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        path = rng.choice(PATHS).replace("{id}", str(rng.randrange(1000)))
        lines.append(
            f"10.0.{rng.randrange(256)}.{rng.randrange(256)} - - "
            f"[12/Mar/2025:10:{i // 60 % 60:02d}:{i % 60:02d} +0000] "
            f'"{rng.choice(("GET", "GET", "GET", "POST"))} {path} HTTP/1.1" '
            f"{rng.choice((200, 200, 200, 304, 404, 500))} {rng.randrange(50_000)} "
            f'"-" "{rng.choice(AGENTS)}" {rng.expovariate(1 / 40):.3f}'
        )
    return lines


def parse_line(line: str) -> Request | None:
    """One log line -> Request; None for lines that do not match."""
    m = LINE.match(line)
    if m is None:
        return None
    path = m["path"].split("?", 1)[0].rstrip("/") or "/"
    parts = [p if not p.isdigit() else "{id}" for p in path.split("/")]
    return Request(
        ip=m["ip"],
        time=datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z"),
        method=m["method"],
        path="/".join(parts) or "/",
        status=int(m["status"]),
        size=int(m["size"]),
        agent=m["agent"].split("/", 1)[0].strip(),
        ms=float(m["ms"]),
    )


def fingerprint(req: Request) -> str:
    """A stable id for a request, as a de-duplicating pipeline would compute it."""
    key = f"{req.ip}|{req.method}|{req.path}|{req.agent}".encode()
    digest = hashlib.sha256(key).digest()
    for _ in range(16):  # key stretching, to make the cost visible
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 of a list of latencies."""
    ordered = sorted(latencies)
    n = len(ordered)
    return ordered[n // 2], ordered[n * 9 // 10], ordered[min(n - 1, n * 99 // 100)]


def summarise(lines: list[str]) -> dict[str, tuple[int, int, float, float, float]]:
    """Per path: requests, distinct clients, p50, p90, p99 latency."""
    by_path: dict[str, list[float]] = defaultdict(list)
    clients: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        req = parse_line(line)
        if req is None or req.status >= 500:
            continue
        by_path[req.path].append(req.ms)
        clients[req.path].add(fingerprint(req))
    out = {}
    for path, latencies in by_path.items():
        # Sorting 20 times stands in for the many reports a real job would rank.
        for _ in range(20):
            p50, p90, p99 = percentiles(latencies)
        out[path] = (len(latencies), len(clients[path]), p50, p90, p99)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=110_000, help="log lines (default 110000)")
    args = parser.parse_args(argv)
    lines = generate(args.lines)
    stats = summarise(lines)
    print(f"{'path':<18} {'requests':>8} {'clients':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for path, (count, distinct, p50, p90, p99) in sorted(stats.items(), key=lambda kv: -kv[1][0]):
        print(f"{path:<18} {count:>8} {distinct:>8} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
