"""Writing the ``heap`` and ``allocs`` profiles: profile.proto or Go's debug=1 text.

Both layouts take the same input: the records of one observation (a
snapshot, folded into the heap-profiling session if there is one), their
stacks resolved by ``_heap_names``, and the comments that say how the
numbers were obtained.  The text layout is Go's ``heap profile:`` one;
tracemalloc and gc statistics stand where Go prints ``runtime.MemStats``.
"""

from __future__ import annotations

import _tracemalloc
import gc
import sys
from typing import NamedTuple, Protocol

from pyproperf import _text
from pyproperf._builder import ProfileBuilder
from pyproperf._heap_names import Site, Stacks

__all__ = ["Observation", "Record", "Session", "profile"]

_SAMPLE_TYPES = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
# tracemalloc domains with a well-known owner (numpy's NPY_TRACE_DOMAIN).
_DOMAIN_NAMES = {0: "python", 389047: "numpy"}

# One sample: (site, alloc_objects, alloc_space, inuse_objects, inuse_space, truncated).
Record = tuple[Site, int, int, int, int, bool]


class Session(Protocol):
    """What a profile tells of the heap-profiling session behind it."""

    started_ns: int  # time.time_ns() when the session started
    snapshots: int  # snapshots folded in so far


class Observation(NamedTuple):
    """What one profile is written from: a snapshot, folded into the session if any."""

    tracing: bool  # False: tracemalloc is off and there are no records
    session: Session | None  # None: no heap-profiling session, alloc_* == inuse_*
    records: list[Record]
    blocks: int  # live blocks traced
    limit: int  # tracemalloc's traceback limit


def profile(
    name: str,
    debug: int,
    data: Observation,
    stacks: Stacks,
    comments: list[str],
    interval: float,
) -> bytes:
    """The whole ``name`` profile: gzipped proto (debug <= 0) or Go's text (debug >= 1).

    ``stacks.stacks[i]`` is the stack of ``data.records[i]``; ``interval``
    is the snapshot thread's current interval in seconds (0: none).
    """
    if debug > 0:
        text = _text_profile(data, stacks, comments, interval)
        return text.encode("utf-8", "surrogateescape")
    return _proto_profile(name, data, stacks, comments)


def _domain(site: Site) -> int:
    """The tracemalloc domain of ``site`` (0: Python's own allocator)."""
    first = site[0]
    return first if type(first) is int else 0


def _domain_name(domain: int) -> str:
    """The ``domain`` label's value: a known owner's name, else the number."""
    return _DOMAIN_NAMES.get(domain, str(domain))


def _proto_profile(name: str, data: Observation, stacks: Stacks, comments: list[str]) -> bytes:
    """The gzipped profile.proto, with Go's four sample types (allocs: alloc_space default)."""
    b = ProfileBuilder(
        _SAMPLE_TYPES,
        period_type=("space", "bytes"),
        period=1,  # every block is traced: nothing to scale
        default_sample_type="alloc_space" if name == "allocs" else "",
        comments=comments,
    )
    frames = stacks.frames
    lids = [0] * len(frames)  # location ids, made on first use
    # Blocks of other tracemalloc domains than Python's own allocator (0),
    # such as numpy's, carry a "domain" label.
    domain_labels: dict[int, list[tuple[str, str]]] = {0: []}
    for (site, an, ab, n, nb, _), stack in zip(data.records, stacks.stacks, strict=True):
        domain = _domain(site)
        labels = domain_labels.get(domain)
        if labels is None:
            labels = domain_labels[domain] = [("domain", _domain_name(domain))]
        # Go 1.27 writes each bucket's block size; a site has many sizes: the mean.
        size = nb // n if n else (ab // an if an else 0)
        ids = []
        for j in stack:
            lid = lids[j]
            if not lid:
                lid = lids[j] = b.location_id(frames[j])
            ids.append(lid)
        b.add_ids(
            ids,
            [an, ab, n, nb],
            labels=labels,
            num_labels=[("bytes", size, "")],
        )
    return b.to_gzip()


def _text_profile(data: Observation, stacks: Stacks, comments: list[str], interval: float) -> str:
    """Go's heap debug=1 layout; tracemalloc and gc statistics replace runtime.MemStats."""
    order = sorted(range(len(data.records)), key=lambda i: data.records[i][4])
    t_an = sum(r[1] for r in data.records)
    t_ab = sum(r[2] for r in data.records)
    t_n = sum(r[3] for r in data.records)
    t_nb = sum(r[4] for r in data.records)
    if t_nb == t_ab:
        t_ab += 1  # Go: keeps pprof from taking it for an old two-column profile
    lines = [f"heap profile: {t_n}: {t_nb} [{t_an}: {t_ab}] @ heap/2"]
    for i in order:
        site, an, ab, n, nb, _ = data.records[i]
        stack = [stacks.frames[j] for j in stacks.stacks[i]]
        lines.append(f"{n}: {nb} [{an}: {ab}] {_text.at_line(stack)}")
        domain = _domain(site)
        if domain:
            lines.append(f"# labels: {_text.labels_text([('domain', _domain_name(domain))])}")
        lines.extend(_text.format_frames(stack))
        lines.append("")
    lines.append("")
    lines.extend(_trailer(data, comments, interval))
    return _text.tabwrite(lines)


def _trailer(data: Observation, comments: list[str], interval: float) -> list[str]:
    """The ``# name = value`` lines after the samples: comments, tracemalloc, gc."""
    current, peak = _tracemalloc.get_traced_memory()
    out = ["# pyproperf heap profile"]
    out.extend(f"# {c}" for c in comments)
    out.append("# tracemalloc")
    out.append(f"# Tracing = {str(data.tracing).lower()}")
    out.append(f"# TracebackLimit = {data.limit}")
    out.append(f"# TracedBlocks = {data.blocks}")
    out.append(f"# TracedMemory = {current}")
    out.append(f"# PeakTracedMemory = {peak}")
    out.append(f"# TracemallocMemory = {_tracemalloc.get_tracemalloc_memory()}")
    acc = data.session
    out.append(f"# Snapshots = {acc.snapshots if acc is not None else 0}")
    out.append(f"# SnapshotInterval = {interval:.3f}s")
    stats = gc.get_stats()
    out.append("# gc")
    out.append(f"# Enabled = {str(gc.isenabled()).lower()}")
    out.append(f"# Count = [{' '.join(map(str, gc.get_count()))}]")
    out.append(f"# Threshold = [{' '.join(map(str, gc.get_threshold()))}]")
    for key, title in (
        ("collections", "Collections"),
        ("collected", "Collected"),
        ("uncollectable", "Uncollectable"),
    ):
        out.append(f"# {title} = [{' '.join(str(s.get(key, 0)) for s in stats)}]")
    out.append(f"# Garbage = {len(gc.garbage)}")
    out.append(f"# Frozen = {gc.get_freeze_count()}")
    out.append(f"# AllocatedBlocks = {sys.getallocatedblocks()}")
    try:
        import resource

        out.append(f"# MaxRSS = {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
    except (ImportError, OSError):
        pass
    return out
