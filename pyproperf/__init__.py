"""pyproperf: Go's runtime/pprof for Python.

CPU and wall-clock, heap and allocs, goroutine (threads, greenlets,
asyncio tasks), threadcreate, block, mutex and custom profiles, written
as gzipped profile.proto files that ``go tool pprof``, Grafana Pyroscope
and speedscope read as they are.  Profiler labels ride along on samples
and pass to threads, greenlets and tasks spawned under them.
"""

from __future__ import annotations

# --- CPU (issue 2) ---
from pyproperf._cpu import cpu_profile, flush, start_cpu_profile, stop_cpu_profile

# --- labels (issue 3) ---
from pyproperf._labels import LabelSet

__all__ = [
    # --- CPU ---
    "cpu_profile",
    "flush",
    "start_cpu_profile",
    "stop_cpu_profile",
    # --- labels ---
    "LabelSet",
]

__version__ = "0.1.0"
