"""Run every ``tests/benchmarks/bench_*.py`` (or the named ones) and print their tables.

Each benchmark module has ``main(quick: bool) -> None`` and prints a
Markdown table of medians.  ``--quick`` shrinks the rounds for a smoke run.
The benchmarks in ``ON_REQUEST`` run only when named: the soak lasts ten
minutes (two variants of five), which would nearly double the default run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

# Run only when named (``python -m tests.benchmarks soak``), never by default.
ON_REQUEST = frozenset({"soak"})


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument(
        "names", nargs="*",
        help=f"benchmarks to run (default: all but {', '.join(sorted(ON_REQUEST))}), e.g. cpu",
    )
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    here = Path(__file__).parent
    found = sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )
    names = args.names or [name for name in found if name not in ON_REQUEST]
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = cpu
    version = platform.python_version()
    print(f"# pyproperf benchmarks: Python {version}, {model}, {os.cpu_count()} CPUs")
    for name in names:
        if name not in found:
            print(f"unknown benchmark {name!r}; have: {', '.join(found)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"tests.benchmarks.bench_{name}")
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        module.main(args.quick)
        print(f"\n({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
