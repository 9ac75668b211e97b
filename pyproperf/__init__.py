"""pyproperf: Go's runtime/pprof for Python.

CPU and wall-clock, heap and allocs, goroutine (threads, greenlets,
asyncio tasks), threadcreate, block, mutex and custom profiles, written
as gzipped profile.proto files that ``go tool pprof``, Grafana Pyroscope
and speedscope read as they are.  Profiler labels ride along on samples
and pass to threads, greenlets and tasks spawned under them.
"""

from __future__ import annotations

# Issue areas: CPU (_cpu), labels (_labels), registry and goroutine
# (_registry), memory (_heap), block and mutex (_contention).
from pyproperf._contention import set_block_profile_rate, set_mutex_profile_fraction
from pyproperf._cpu import cpu_profile, flush, start_cpu_profile, stop_cpu_profile
from pyproperf._dump import dump_on_signal
from pyproperf._heap import heap_profile, start_heap_profile, stop_heap_profile
from pyproperf._labels import (
    LabelContext,
    LabelSet,
    do,
    for_labels,
    label,
    labeled,
    labels,
    set_goroutine_labels,
    with_labels,
)
from pyproperf._registry import Profile, lookup, new_profile, profiles, write_heap_profile

__all__ = [  # noqa: RUF022 - grouped by area, as the docs are
    # --- CPU ---
    "cpu_profile",
    "flush",
    "start_cpu_profile",
    "stop_cpu_profile",
    "dump_on_signal",
    # --- labels ---
    "LabelContext",
    "LabelSet",
    "do",
    "for_labels",
    "label",
    "labeled",
    "labels",
    "set_goroutine_labels",
    "with_labels",
    # --- registry ---
    "Profile",
    "lookup",
    "new_profile",
    "profiles",
    "write_heap_profile",
    # --- block and mutex ---
    "set_block_profile_rate",
    "set_mutex_profile_fraction",
    # --- memory ---
    "heap_profile",
    "start_heap_profile",
    "stop_heap_profile",
]

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext pyproperf``: register the ``%%pprof`` and ``%pprof`` magics.

    IPython calls it; the magics' module (and IPython) is imported only now.
    See docs/integrations.md.
    """
    from pyproperf._ipython import load

    load(ipython)
