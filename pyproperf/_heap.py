"""``heap`` and ``allocs`` profiles from tracemalloc.

tracemalloc traces every live memory block with the traceback (file and
line per frame, leaf first) that allocated it.  A profile groups the live
blocks by (domain, traceback) -- a *site* -- and writes one sample per
site with Go's four values:

* ``inuse_objects`` / ``inuse_space``: the site's blocks live when the
  profile is written.  Exact: tracemalloc does not sample.
* ``alloc_objects`` / ``alloc_space``: tracemalloc cannot see blocks that
  were freed already, so while heap profiling is on a helper thread takes
  snapshots (as often as a CPU budget allows) and adds up, per site, every
  *increase* of its live blocks from one snapshot to the next, starting
  from nothing.  Writing a profile is one more snapshot.  The result is a
  lower bound of what each site allocated: blocks allocated and freed
  between two snapshots are missed, and a site whose blocks are replaced
  by as many new ones between two snapshots shows no increase.  Without
  a heap-profiling session (tracemalloc started by the user) there is
  only the snapshot taken when writing, and ``alloc_* == inuse_*``.

This module is the session (start/stop, the snapshot thread, the alloc_*
accumulation, whole-program runs, exit and fork) and the entry points the
registry calls (``count``, ``render``).  Turning tracemalloc's (file, line)
frames into functions is ``_heap_names``; writing proto and text is
``_heap_render``.
"""

from __future__ import annotations

import _tracemalloc
import contextlib
import contextvars
import functools
import os
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

from pyproperf import _heap_names, _heap_render, _hooks, _io, _own
from pyproperf._heap_names import Site
from pyproperf._heap_render import Observation
from pyproperf._stacks import PACKAGE_DIR, Resolver

__all__ = [
    "DEFAULT_NFRAMES",
    "ENV_FILE",
    "ENV_NFRAMES",
    "count",
    "heap_profile",
    "render",
    "start_heap_profile",
    "stop_heap_profile",
]

# Frames kept per traceback when pyproperf starts tracemalloc (a tracemalloc
# already running keeps its own).  tracemalloc's cost per allocation grows
# with the depth; measured on an allocation-heavy loop 50 frames deep
# (tests/benchmarks/bench_heap.py, Python 3.11 / 3.13): 19x / 16x the
# untraced CPU time with 1 frame, 32x / 29x with 8, 52x / 45x with 16,
# 91x / 74x with 32.  16 keeps a library's internals plus the application
# code that called them in most stacks, at about 1.6x the cost of 8.
DEFAULT_NFRAMES = 16
_MAX_NFRAMES = 65535  # tracemalloc's limit (uint16)

# Whole-program runs: PYPROPERF_HEAP=FILE starts heap profiling when pyproperf
# is imported and writes FILE at exit ("%p" in FILE becomes the process id).
ENV_FILE = "PYPROPERF_HEAP"
ENV_NFRAMES = "PYPROPERF_HEAP_NFRAMES"

# Periodic snapshots (alloc_*): the helper thread waits at least
# _MIN_INTERVAL seconds and at least (the expected wall time of the next
# snapshot) / _BUDGET, so snapshots take about 2% of the time whatever the
# heap size.  The floor bounds the fixed cost of each wake-up: handing the
# GIL to the helper thread and back costs the program milliseconds on a
# busy machine, more than a small snapshot itself.
_BUDGET = 0.02
_MIN_INTERVAL = 0.5

_NAMES = ("heap", "allocs")
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect

# (file, line) -> candidate functions, cached across profiles (tests and
# benchmarks clear it as ``_heap._index``).
_index = _heap_names.index

_P = ParamSpec("_P")
_R = TypeVar("_R")


# -- snapshots ------------------------------------------------------------------------


def _snapshot() -> tuple[dict[Site, tuple[int, int, bool]], int] | None:
    """Live blocks grouped by site: ({site: (blocks, bytes, truncated)}, blocks); None if off.

    Allocation-free per block (no int arithmetic, no new tuples for domain
    0): with tracemalloc on, every object created here would be traced too.
    """
    if not _tracemalloc.is_tracing():
        return None
    # Each trace: (domain, size, traceback leaf first, total frames before truncation).
    traces = cast(list[tuple[int, int, Site, int]], _tracemalloc._get_traces())
    nblocks = len(traces)
    groups: dict[Site, list[int]] = {}
    totals: dict[Site, int] = {}
    for domain, size, tb, total in traces:
        key = (domain, tb) if domain else tb
        try:
            groups[key].append(size)
        except KeyError:
            groups[key] = [size]
            totals[key] = total
    del traces
    out: dict[Site, tuple[int, int, bool]] = {}
    own = _heap_names.allocated_by_profiler
    for key, sizes in groups.items():
        tb = key[1] if type(key[0]) is int else key
        if own(tb):  # pyproperf's own memory is not the program's
            nblocks -= len(sizes)
            continue
        out[key] = (len(sizes), sum(sizes), totals[key] > len(tb))
    return out, nblocks


class _Accumulator:
    """Per-site growth of live blocks over the snapshots of one session."""

    def __init__(self) -> None:
        # site -> [alloc_objects, alloc_space, live_objects, live_space]
        self.sites: dict[Site, list[int]] = {}
        self.truncated: set[Site] = set()
        self.snapshots = 0
        self.started_ns = time.time_ns()
        self._frames: dict[tuple[str, int], tuple[str, int]] = {}

    def _intern(self, site: Site) -> Site:
        """Share (file, line) tuples between stored sites (they outlive the snapshot)."""
        frames = self._frames
        if type(site[0]) is int:
            return (site[0], tuple([frames.setdefault(f, f) for f in site[1]]))
        return tuple([frames.setdefault(f, f) for f in site])

    def merge(self, live: dict[Site, tuple[int, int, bool]]) -> None:
        """Fold one snapshot in: add each site's growth, record what is live now."""
        sites = self.sites
        for site, (n, b, truncated) in live.items():
            e = sites.get(site)
            if e is None:
                site = self._intern(site)
                sites[site] = [n, b, n, b]
                if truncated:
                    self.truncated.add(site)
                continue
            if n > e[2]:
                e[0] += n - e[2]
            if b > e[3]:
                e[1] += b - e[3]
            e[2] = n
            e[3] = b
        for site, e in sites.items():
            if e[2] and site not in live:
                e[2] = e[3] = 0
        self.snapshots += 1


class _Sampler:
    """Takes snapshots into the session's accumulator until stopped, in a thread of its own.

    A real OS thread from ``_thread``'s original functions, not a
    ``threading.Thread``: under gevent's monkey patching (which a program
    may apply after the thread started) a ``threading`` thread's waits and
    its exit bookkeeping would go through the patched module.
    """

    def __init__(self, fresh: bool) -> None:
        real = _hooks.real_thread()
        self._real = real
        self._stop_asked = real.allocate_lock()  # held until stop(): acquire(t) waits t
        self._stop_asked.acquire()
        self._done = real.allocate_lock()  # held while the thread runs
        self._fresh = fresh  # tracemalloc was started with the session: a small heap
        self.ident: int | None = None
        self.interval = _MIN_INTERVAL
        self.error = ""

    def start(self) -> None:
        self._done.acquire()
        self._real.start_new_thread(self._main, ())

    def _main(self) -> None:
        self.ident = self._real.get_ident()
        try:
            self.run()
        finally:
            self._done.release()

    def _wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when asked to stop."""
        if self._stop_asked.acquire(timeout=max(0.0, seconds)):
            self._stop_asked.release()
            return True
        return False

    def run(self) -> None:
        # A snapshot costs about ``per_block`` seconds per live block.  Before
        # each one, the number of live blocks is estimated -- the last
        # snapshot's count plus the change in the interpreter's allocated
        # blocks since -- so that a heap that grew large does not get an
        # expensive snapshot before its time.
        per_block = 1e-6  # seconds, until measured
        allocated = sys.getallocatedblocks()
        # A tracemalloc started with the session has traced nothing yet;
        # otherwise count every block as traced until the first snapshot.
        blocks = 0 if self._fresh else allocated
        last = time.perf_counter()
        wait = self.interval
        while not self._wait(wait):
            now = time.perf_counter()
            estimate = per_block * max(0, blocks + sys.getallocatedblocks() - allocated)
            due = last + max(_MIN_INTERVAL, estimate / _BUDGET)
            if now < due:
                wait = due - now
                continue
            try:
                data = _observe(records=False)
            except Exception as exc:  # never let the thread die silently
                self.error = f"after an error: {type(exc).__name__}: {exc}"
                return
            last = time.perf_counter()
            cost = last - now
            allocated = sys.getallocatedblocks()
            blocks = data.blocks
            if blocks:
                per_block = cost / blocks
            wait = self.interval = max(_MIN_INTERVAL, cost / _BUDGET)

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (unless called from it)."""
        try:
            self._stop_asked.release()
        except RuntimeError:  # already asked
            pass
        if self.ident != self._real.get_ident():
            with self._done:
                pass


# -- session state ----------------------------------------------------------------------

_state_lock = threading.RLock()  # start/stop
# Snapshot + merge, so snapshots apply in order; a write holds it throughout so
# the snapshot thread does not count the writer's transient memory as allocations.
_data_lock = threading.RLock()
_depth = 0
_owns_tracemalloc = False
_acc: _Accumulator | None = None
_sampler: _Sampler | None = None
_sampler_error = ""


def _observe(records: bool = True) -> Observation:
    """Take a snapshot, fold it into the session (if any), return the records.

    ``records=False`` (the snapshot thread): only fold, and only in a session.
    """
    with _data_lock:
        acc = _acc
        if not records and acc is None:
            return Observation(False, None, [], 0, 0)
        snap = _snapshot()
        if snap is None:
            return Observation(False, acc, [], 0, 0)
        live, nblocks = snap
        limit = _tracemalloc.get_traceback_limit()
        if acc is None:
            plain = [(s, n, b, n, b, t) for s, (n, b, t) in live.items()]
            return Observation(True, None, plain, nblocks, limit)
        acc.merge(live)
        if not records:
            return Observation(True, acc, [], nblocks, limit)
        trunc = acc.truncated
        out = [(s, e[0], e[1], e[2], e[3], s in trunc) for s, e in acc.sites.items()]
        return Observation(True, acc, out, nblocks, limit)


def _check_nframes(nframes: object) -> int:
    """``nframes`` if it is a valid tracemalloc depth, else TypeError/ValueError."""
    if isinstance(nframes, bool) or not isinstance(nframes, int):
        raise TypeError(f"nframes must be an int, not {type(nframes).__name__}")
    if not 1 <= nframes <= _MAX_NFRAMES:
        raise ValueError(f"nframes must be between 1 and {_MAX_NFRAMES}, not {nframes}")
    return nframes


def start_heap_profile(nframes: int = DEFAULT_NFRAMES) -> None:
    """Turn heap profiling on: tracemalloc with ``nframes`` frames, plus periodic snapshots.

    Go has no such call (its heap profile is always on, sampled every
    512 KiB); Python's tracemalloc is costly, so it runs only when asked.
    A tracemalloc that is already tracing is used as it is (its own depth)
    and is never stopped by pyproperf.  Calls nest: each needs its
    ``stop_heap_profile``, and only the outermost pair starts and stops.
    """
    global _depth, _owns_tracemalloc, _acc  # noqa: PLW0603 - the one heap session of the process, under _state_lock
    nframes = _check_nframes(nframes)
    with _state_lock:
        fresh = not _tracemalloc.is_tracing()
        if fresh:
            _tracemalloc.start(nframes)
            _owns_tracemalloc = True
        _depth += 1
        if _depth == 1:
            with _data_lock:
                _acc = _Accumulator()
            _start_sampler(fresh)


def _start_sampler(fresh: bool = False) -> None:
    """Start the snapshot thread (``fresh``: tracemalloc was just started, the heap is empty)."""
    global _sampler  # noqa: PLW0603 - the one heap session of the process, under _state_lock
    sampler = _Sampler(fresh)
    sampler.start()
    _sampler = sampler


def stop_heap_profile() -> None:
    """End the heap profiling started by the matching ``start_heap_profile``.

    Stops the snapshot thread, forgets the ``alloc_*`` data and stops
    tracemalloc if pyproperf started it.  Without an active session it does
    nothing, as Go's ``StopCPUProfile``.
    """
    global _depth, _owns_tracemalloc, _acc, _sampler, _sampler_error  # noqa: PLW0603 - the one heap session of the process, under _state_lock
    with _state_lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth:
            return
        sampler, _sampler = _sampler, None
        with _data_lock:
            _acc = None
        if sampler is not None:
            sampler.stop()
        _sampler_error = ""
        if _owns_tracemalloc:
            _owns_tracemalloc = False
            if _tracemalloc.is_tracing():
                _tracemalloc.stop()


class heap_profile:
    """Heap-profile a block or a function: ``with heap_profile(FILE):`` or ``@heap_profile(FILE)``.

    Starts heap profiling (``start_heap_profile(nframes)``) on entry and at
    the end of the block -- also when it raises -- writes the ``heap``
    profile to ``target`` (a path, replaced atomically, or a binary file
    object) and stops.  As a decorator, every call of the function is such a
    block (coroutine functions too); re-entering while active (recursion,
    several threads) only writes when the last one leaves.  With a file
    object as target each write appends a whole profile, so use a path for
    functions called more than once.
    """

    def __init__(self, target: Any, *, nframes: int = DEFAULT_NFRAMES) -> None:
        self._target = _io.open_target(target, "target")
        self._nframes = _check_nframes(nframes)
        self._active = 0
        self._lock = threading.Lock()

    def __enter__(self) -> heap_profile:
        with self._lock:
            if self._active == 0:
                start_heap_profile(self._nframes)
            self._active += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._active -= 1
            if self._active:
                return
            try:
                _io.deliver(self._target, render("heap", 0))
            except Exception as write_error:
                if exc_type is None:
                    raise
                _warn(f"pyproperf: could not write the heap profile: {write_error}")
            finally:
                stop_heap_profile()

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        code = getattr(func, "__code__", None)
        if code is not None and code.co_flags & _CO_COROUTINE:  # `async def`
            afunc = cast(Callable[_P, Awaitable[Any]], func)

            @functools.wraps(func)
            @_own.calls_user_code
            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with self:
                    return await afunc(*args, **kwargs)

            return cast(Callable[_P, _R], async_wrapper)

        @functools.wraps(func)
        @_own.calls_user_code
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self:
                return func(*args, **kwargs)

        return wrapper


# -- output -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    """ValueError unless ``name`` is ``heap`` or ``allocs``."""
    if name not in _NAMES:
        raise ValueError(f"not a heap profile name: {name!r} (want 'heap' or 'allocs')")


def count(name: str) -> int:
    """Number of sites (Go: memory-profile buckets) a ``name`` profile would have now."""
    _check_name(name)
    _ensure_sampler()
    return len(_observe().records)


# Set while a server renders a profile (``pyproperf.http``): an empty profile
# explains itself in its comments; a warning would land in the host's stderr.
_serving: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pyproperf_heap_serving", default=False
)


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """Render without warnings in this context (a server answering a request)."""
    token = _serving.set(True)
    try:
        yield
    finally:
        _serving.reset(token)


def render(name: str, debug: int) -> bytes:
    """The whole ``heap`` or ``allocs`` profile: gzipped proto (debug <= 0) or Go's text.

    Never raises for a missing tracemalloc: without tracing, the profile is
    empty, its comment says how to turn heap profiling on, and a
    RuntimeWarning points at the caller.
    """
    _check_name(name)
    _ensure_sampler()
    with _data_lock:
        data, comments, interval = _observe_for_render(name)
        return _encode(name, debug, data, comments, interval)


class Written(NamedTuple):
    """An encoded heap profile and what it holds, for a summary without decoding it."""

    data: bytes  # the gzipped profile
    stacks: int  # its samples: one per allocation site
    inuse_bytes: int  # the sum of its inuse_space values


def render_and_stop() -> Written:
    """The session's last ``allocs`` and ``heap`` profile (gzipped proto), then stop it.

    The snapshot is taken while tracing; the session is stopped (and with
    it tracemalloc, when pyproperf started it) before the sites are named
    and encoded, so that work is not traced itself: on a heap of 700,000
    blocks it took most of the time of writing.  Both names give the same
    proto (the default sample type aside), so it is ``allocs``, as ``go
    test -memprofile`` writes at exit.
    """
    try:
        _ensure_sampler()
        with _data_lock:
            data, comments, interval = _observe_for_render("allocs")
    finally:
        stop_heap_profile()
    encoded = _encode("allocs", 0, data, comments, interval)
    return Written(encoded, len(data.records), sum(r[4] for r in data.records))


def _observe_for_render(name: str) -> tuple[Observation, list[str], float]:
    """A snapshot to render, what to say of it, and the snapshot interval (hold _data_lock)."""
    data = _observe()
    if not data.tracing and not _serving.get():
        _warn(
            f"pyproperf: the {name} profile is empty because tracemalloc is not tracing; "
            "turn heap profiling on with pyproperf.start_heap_profile() or "
            f"pyproperf.heap_profile(), or set {ENV_FILE}=FILE"
        )
    sampler = _sampler
    interval = sampler.interval if sampler is not None and data.session is not None else 0.0
    return data, _comments(data), interval


def _encode(
    name: str, debug: int, data: Observation, comments: list[str], interval: float
) -> bytes:
    stacks = _heap_names.resolve_stacks(((r[0], r[5]) for r in data.records), Resolver())
    return _heap_render.profile(name, debug, data, stacks, comments, interval)


def _comments(data: Observation) -> list[str]:
    """What the numbers are: tracemalloc's state, the session's snapshots, a stopped thread."""
    if not data.tracing:
        return [
            "no data: tracemalloc is not tracing. Turn heap profiling on with "
            "pyproperf.start_heap_profile(), `with pyproperf.heap_profile(FILE):`, "
            f"{ENV_FILE}=FILE, `python -m pyproperf run --heap FILE ...` "
            "or PYTHONTRACEMALLOC=NFRAMES"
        ]
    out = [
        f"tracemalloc heap, tracebacks of at most {data.limit} frames: inuse_* counts "
        f"every block live when written ({data.blocks} blocks)"
    ]
    acc = data.session
    if acc is None:
        out.append(
            "alloc_* equals inuse_*: heap profiling was not started "
            "(pyproperf.start_heap_profile), so only this snapshot was seen"
        )
    else:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(acc.started_ns / 1e9))
        out.append(
            f"alloc_* adds up each site's growth in live blocks over {acc.snapshots} "
            f"snapshot{'' if acc.snapshots == 1 else 's'} since {since}; blocks allocated "
            "and freed between two snapshots "
            "are missed, so alloc_* is a lower bound"
        )
    error = _sampler.error if _sampler is not None else _sampler_error
    if error:
        out.append(f"periodic snapshots stopped {error}")
    return out


# -- helpers: warnings, environment, exit, fork -------------------------------------------------


def _warn(message: str) -> None:
    """Warn at the first caller outside pyproperf."""
    frame = sys._getframe()
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)


def _ensure_sampler() -> None:
    """Restart the snapshot thread in a forked child (fork keeps only the calling thread)."""
    if _depth and _sampler is None and not _sampler_error:
        with _state_lock:
            if _depth and _sampler is None:
                _start_sampler()


def _write_at_exit(path: str) -> None:
    """Write the ``heap`` profile of a whole-program run (``PYPROPERF_HEAP``), then stop."""
    try:
        target = path.replace("%p", str(os.getpid()))
        _io.write_file(target, render("heap", 0))
    except Exception as exc:
        print(f"pyproperf: could not write the heap profile {path}: {exc}", file=sys.stderr)
    finally:
        stop_heap_profile()


def _start_from_environment() -> None:
    """PYPROPERF_HEAP=FILE [PYPROPERF_HEAP_NFRAMES=N]: profile the whole run into FILE."""
    target = os.environ.get(ENV_FILE, "")
    if not target:
        return
    nframes = DEFAULT_NFRAMES
    raw = os.environ.get(ENV_NFRAMES, "")
    if raw:
        try:
            nframes = _check_nframes(int(raw))
        except ValueError:
            _warn(f"pyproperf: ignoring {ENV_NFRAMES}={raw!r}: want an int in 1..{_MAX_NFRAMES}")
    start_heap_profile(nframes)
    _hooks.at_exit(functools.partial(_write_at_exit, os.path.abspath(target)))


def _stop_sampler_at_exit() -> None:
    """Do not leave the snapshot thread running into interpreter finalization."""
    global _sampler, _sampler_error  # noqa: PLW0603 - the one heap session of the process, under _state_lock
    with _state_lock:
        sampler, _sampler = _sampler, None
        if sampler is not None:
            _sampler_error = "at interpreter exit"
            sampler.stop()


def _after_fork_child() -> None:
    """In a forked child: fresh locks (a thread may have held them), no snapshot thread."""
    global _state_lock, _data_lock, _sampler  # noqa: PLW0603 - a forked child replaces the locks a vanished thread may hold
    _state_lock = threading.RLock()
    _data_lock = threading.RLock()
    _sampler = None  # restarted by the next count/render in the child


_hooks.at_exit(_stop_sampler_at_exit)
_hooks.at_fork_child(_after_fork_child)
_start_from_environment()
