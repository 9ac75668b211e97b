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

tracemalloc records file and line only; each (file, line) is turned into
the enclosing function (``module.Class.method``, first line) through the
module's code objects: from its ``.pyc``, the frozen module or the
compiled source, else from the live functions of loaded modules, else
``module.<nosource>``.
"""

from __future__ import annotations

import _tracemalloc
import atexit
import bisect
import functools
import gc
import os
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from types import CodeType, ModuleType, TracebackType
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

from pyproperf import _io, _text
from pyproperf._builder import Frame, ProfileBuilder
from pyproperf._stacks import TRUNCATED, Resolver

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

_SAMPLE_TYPES = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
_NAMES = ("heap", "allocs")
# tracemalloc domains with a well-known owner (numpy's NPY_TRACE_DOMAIN).
_DOMAIN_NAMES = {0: "python", 389047: "numpy"}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_CO_OPTIMIZED = 0x1
_CO_GENLIKE = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coro, async gen
_NO_PYTHON_FRAME = Frame("(no Python frame)", "<unknown>", 0, 0)

# A site: the traceback ((filename, lineno), ...) leaf first for domain 0,
# else (domain, traceback).  Tuples compare by content, so a site from one
# snapshot finds itself in the accumulator.
Site = tuple[Any, ...]
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
    for key, sizes in groups.items():
        tb = key[1] if type(key[0]) is int else key
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


class _Sampler(threading.Thread):
    """Takes snapshots into the session's accumulator until stopped."""

    def __init__(self, fresh: bool) -> None:
        super().__init__(name="pyproperf-heap", daemon=True)
        self._stop_event = threading.Event()
        self._fresh = fresh  # tracemalloc was started with the session: a small heap
        self.interval = _MIN_INTERVAL
        self.error = ""

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
        while not self._stop_event.wait(wait):
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
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join()


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


class _Data(NamedTuple):
    tracing: bool
    session: _Accumulator | None
    # (site, alloc_objects, alloc_space, inuse_objects, inuse_space, truncated)
    records: list[tuple[Site, int, int, int, int, bool]]
    blocks: int
    limit: int


def _observe(records: bool = True) -> _Data:
    """Take a snapshot, fold it into the session (if any), return the records.

    ``records=False`` (the snapshot thread): only fold, and only in a session.
    """
    with _data_lock:
        acc = _acc
        if not records and acc is None:
            return _Data(False, None, [], 0, 0)
        snap = _snapshot()
        if snap is None:
            return _Data(False, acc, [], 0, 0)
        live, nblocks = snap
        limit = _tracemalloc.get_traceback_limit()
        if acc is None:
            plain = [(s, n, b, n, b, t) for s, (n, b, t) in live.items()]
            return _Data(True, None, plain, nblocks, limit)
        acc.merge(live)
        if not records:
            return _Data(True, acc, [], nblocks, limit)
        trunc = acc.truncated
        out = [(s, e[0], e[1], e[2], e[3], s in trunc) for s, e in acc.sites.items()]
        return _Data(True, acc, out, nblocks, limit)


def _check_nframes(nframes: object) -> int:
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
    global _depth, _owns_tracemalloc, _acc
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
    global _sampler
    sampler = _Sampler(fresh)
    sampler.start()
    _sampler = sampler


def stop_heap_profile() -> None:
    """End the heap profiling started by the matching ``start_heap_profile``.

    Stops the snapshot thread, forgets the ``alloc_*`` data and stops
    tracemalloc if pyproperf started it.  Without an active session it does
    nothing, as Go's ``StopCPUProfile``.
    """
    global _depth, _owns_tracemalloc, _acc, _sampler, _sampler_error
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
        if code is not None and code.co_flags & 0x80:  # CO_COROUTINE: `async def`
            afunc = cast(Callable[_P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with self:
                    return await afunc(*args, **kwargs)

            return cast(Callable[_P, _R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self:
                return func(*args, **kwargs)

        return wrapper


# -- (file, line) -> function ------------------------------------------------------------
#
# tracemalloc gives (file, line).  The function around a line comes from the
# module's code objects: its .pyc (unmarshalling costs a few percent of
# compiling, which tracemalloc makes very slow by tracing every allocation
# of the compiler), the frozen module, or the compiled source; else the live
# functions of loaded modules.  Line tables are read only for the code
# objects on the way down to each line, and answers are cached per line.

# One candidate function for a line: (qualified name, first line, names the
# code refers to -- to tell which function a caller called).
_Candidate = tuple[str, int, tuple[str, ...]]
_Candidates = tuple[_Candidate, ...]


class _Node:
    """One code object in a module's tree, with its line set and children made on demand."""

    __slots__ = ("_candidate", "_children", "_firsts", "_lines", "code", "depth", "qual")

    def __init__(self, code: CodeType | None, qual: str, depth: int) -> None:
        self.code = code  # None: the root of live functions (no module code known)
        self.qual = qual
        self.depth = depth
        self._lines: frozenset[int] | None = None
        self._children: list[_Node] | None = None
        self._firsts: list[int] = []
        self._candidate: _Candidate | None = None

    def lines(self) -> frozenset[int]:
        """Lines with instructions of this code (not of nested code)."""
        if self._lines is None:
            code = self.code
            if code is None:
                self._lines = frozenset()
            else:
                lines = _code_lines(code)
                if self.depth and len(lines) > 1 and not code.co_flags & _CO_GENLIKE:
                    # A function's first line also belongs to the code defining
                    # it (MAKE_FUNCTION there): leave it to the definer.
                    # Generators and coroutines keep it: their objects are
                    # created on that line, in their own frame.
                    lines.discard(code.co_firstlineno)
                self._lines = frozenset(lines)
        return self._lines

    def set_children(self, children: list[_Node]) -> None:
        children.sort(key=lambda n: n.first)
        self._children = children
        self._firsts = [n.first for n in children]

    def children(self) -> list[_Node]:
        if self._children is None:
            kids: list[_Node] = []
            code = self.code
            if code is not None:
                for const in code.co_consts:
                    if isinstance(const, CodeType):
                        qual = _child_qualname(code, self.qual, self.depth, const)
                        kids.append(_Node(const, qual, self.depth + 1))
            self.set_children(kids)
        assert self._children is not None
        return self._children

    @property
    def first(self) -> int:
        return self.code.co_firstlineno if self.code is not None else 0

    def candidate(self) -> _Candidate:
        if self._candidate is None:
            code = self.code
            assert code is not None
            names = code.co_names + code.co_varnames + code.co_cellvars + code.co_freevars
            self._candidate = (self.qual, code.co_firstlineno, names)
        return self._candidate

    def find(self, line: int, root: bool = False) -> list[_Node]:
        """The code objects of this subtree with instructions on ``line``, innermost first.

        Code objects nest and do not interleave in the source, so at each
        level only the child that starts last at or before ``line`` (or the
        children sharing that first line) can contain it.  Line tables cost
        (tracemalloc traces every object they are made of), so a parent's is
        read only where it can share the line with a child: a lambda,
        comprehension or generator expression, or the child's first line.
        A root (module) holds every line no child holds.
        """
        kids = self.children()
        found: list[_Node] = []
        j = bisect.bisect_right(self._firsts, line) - 1
        if j >= 0:
            first = self._firsts[j]
            while j >= 0 and self._firsts[j] == first and not found:
                found = kids[j].find(line)
                j -= 1
        if found:
            top = found[-1]
            shared = top.code is not None and (
                top.code.co_name.startswith("<") or line == top.first
            )
            if shared and line in self.lines():
                found.append(self)
        elif root or line in self.lines():
            found.append(self)
        return found


def _code_lines(code: CodeType) -> set[int]:
    """The line numbers of ``code``'s instructions."""
    if sys.version_info[:2] != (3, 11):
        return {line for _, _, line in code.co_lines() if line}
    # Python 3.11's co_lines() yields an entry per source position, columns
    # included: several times the objects (each one traced by tracemalloc)
    # of its line-only co_lnotab, which gives the same lines.
    table = code.co_lnotab
    line = code.co_firstlineno
    out: set[int] = set()
    for addr_incr, line_incr in zip(table[0::2], table[1::2], strict=True):
        if addr_incr:
            out.add(line)
        if line_incr:
            line += line_incr - 0x100 if line_incr >= 0x80 else line_incr
    if sum(table[0::2]) < len(code.co_code):
        out.add(line)
    out.discard(0)
    return out


def _child_qualname(parent: CodeType, parent_qual: str, depth: int, child: CodeType) -> str:
    qual = getattr(child, "co_qualname", None)
    if isinstance(qual, str):
        return qual
    # Python 3.10: rebuild the qualified name as the compiler does.
    if depth == 0:
        return child.co_name
    if parent.co_flags & _CO_OPTIMIZED:  # a function (a class body is not optimized)
        return f"{parent_qual}.<locals>.{child.co_name}"
    return f"{parent_qual}.{child.co_name}"


def _pyc_code(path: str) -> CodeType | None:
    """The code in ``path``'s cached bytecode, if it is there and matches the source."""
    import importlib.util
    import marshal

    try:
        cache = importlib.util.cache_from_source(path)
        with open(cache, "rb") as f:
            data = f.read()
    except (OSError, ValueError, NotImplementedError):
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(data[4:8], "little")
    try:
        if flags == 0:  # timestamp-based: the source must be unchanged since
            st = os.stat(path)
            if (
                int.from_bytes(data[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(data[12:16], "little") != st.st_size & 0xFFFFFFFF
            ):
                return None
        elif flags & 0b10:  # hash-based, checked
            with open(path, "rb") as f:
                if importlib.util.source_hash(f.read()) != data[8:16]:
                    return None
        code = marshal.loads(memoryview(data)[16:])
    except FileNotFoundError:
        code = marshal.loads(memoryview(data)[16:])  # source gone: the pyc is what ran
    except Exception:
        return None
    return code if isinstance(code, CodeType) and code.co_filename == path else None


def _source_text(filename: str, resolver: Resolver) -> str | None:
    """The source of ``filename``: linecache, the file, or its module's loader."""
    import linecache

    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[2]:
        return "".join(entry[2])
    if filename.startswith("<"):
        return None
    if os.path.isfile(filename):
        import tokenize

        try:
            with tokenize.open(filename) as f:
                return f.read()
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
    module = sys.modules.get(resolver.module_name(filename))
    module_globals = vars(module) if isinstance(module, ModuleType) else None
    try:
        lines = linecache.getlines(filename, module_globals)
    except Exception:
        return None
    return "".join(lines) or None


# Frozen modules whose code is frozen under another name.
_FROZEN_ALIASES = {
    "importlib._bootstrap": "_frozen_importlib",
    "importlib._bootstrap_external": "_frozen_importlib_external",
}


def _frozen_code(name: str) -> CodeType | None:
    """The code of frozen module ``name`` (``<frozen NAME>``), or of the file it was made from."""
    import _imp

    for frozen in (name, _FROZEN_ALIASES.get(name)):
        if frozen is None:
            continue
        try:
            code = _imp.get_frozen_object(frozen)
        except Exception:
            continue
        if isinstance(code, CodeType):
            return code
    path = _frozen_source_path(name)
    return _pyc_code(path) if path is not None else None


def _frozen_source_path(name: str) -> str | None:
    """The stdlib file a frozen module was made from (same source, same lines)."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if isinstance(path, str) and path.endswith(".py"):
        return path
    stdlib = getattr(sys, "_stdlib_dir", None) or os.path.dirname(os.__file__)
    base = os.path.join(stdlib, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


# Compiled sources (files without a usable .pyc: scripts, code from loaders),
# kept for a few files: compiling again under tracemalloc is slow.
_compiled: dict[str, CodeType] = {}
_MAX_COMPILED = 16


def _module_code(filename: str, resolver: Resolver) -> CodeType | None:
    """The module-level code object of ``filename``, or None when nothing has it."""
    if filename.startswith("<frozen ") and filename.endswith(">"):
        return _frozen_code(filename[len("<frozen ") : -1])
    if not filename.startswith("<"):
        code = _pyc_code(filename)
        if code is not None:
            return code
    code = _compiled.get(filename)
    if code is not None:
        return code
    source = _source_text(filename, resolver)
    if source is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(source, filename, "exec", dont_inherit=True)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError...
        return None
    if len(_compiled) >= _MAX_COMPILED:
        del _compiled[next(iter(_compiled))]
    _compiled[filename] = code
    return code


def _live_roots(files: set[str]) -> dict[str, _Node]:
    """Pseudo roots holding the functions of loaded modules defined in ``files``."""
    roots: dict[str, list[_Node]] = {}
    seen_objects: set[int] = set()
    seen_codes: set[CodeType] = set()

    def add_function(obj: object) -> None:
        for _ in range(8):  # follow __wrapped__ a few steps
            code = getattr(obj, "__code__", None)
            qual = getattr(obj, "__qualname__", None)
            if (
                isinstance(code, CodeType)
                and isinstance(qual, str)
                and code.co_filename in files
                and code not in seen_codes
            ):
                seen_codes.add(code)
                roots.setdefault(code.co_filename, []).append(_Node(code, qual, 1))
            obj = getattr(obj, "__wrapped__", None)
            if obj is None:
                return

    def visit(namespace: Iterable[object], depth: int) -> None:
        for obj in namespace:
            if id(obj) in seen_objects:
                continue
            seen_objects.add(id(obj))
            if isinstance(obj, (staticmethod, classmethod)):
                obj = obj.__func__
            if isinstance(obj, property):
                for f in (obj.fget, obj.fset, obj.fdel):
                    if f is not None:
                        add_function(f)
            elif isinstance(obj, type):
                if depth < 4:
                    try:
                        visit(list(vars(obj).values()), depth + 1)
                    except TypeError:
                        pass
            else:
                add_function(obj)

    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType):
            try:
                visit(list(vars(module).values()), 0)
            except TypeError:
                continue
    out: dict[str, _Node] = {}
    for filename, nodes in roots.items():
        root = out[filename] = _Node(None, "", 0)
        root.set_children(nodes)
    return out


class _FunctionIndex:
    """(filename, line) -> candidates, innermost first (empty: unknown); cached."""

    _MAX_ANSWERS = 200_000

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int], _Candidates] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            _compiled.clear()

    def lookup(
        self, wanted: set[tuple[str, int]], resolver: Resolver
    ) -> dict[tuple[str, int], _Candidates]:
        with self._lock:
            answers = self._answers
            if len(answers) > self._MAX_ANSWERS:
                answers.clear()
            missing: dict[str, list[int]] = {}
            for fl in wanted:
                if fl not in answers:
                    missing.setdefault(fl[0], []).append(fl[1])
            no_code: dict[str, list[int]] = {}
            for filename, lines in missing.items():
                code = _module_code(filename, resolver) if filename != "<unknown>" else None
                if code is None:
                    no_code[filename] = lines
                    continue
                root = _Node(code, "<module>", 0)
                for line in lines:
                    nodes = root.find(line, root=True)
                    answers[(filename, line)] = tuple(n.candidate() for n in nodes)
            # Live functions, for real files only: "<string>" and friends name
            # many unrelated code objects that cannot be told apart.
            real = {f for f in no_code if not f.startswith("<")}
            live = _live_roots(real) if real else {}
            for filename, lines in no_code.items():
                live_root = live.get(filename)
                for line in lines:
                    nodes = live_root.find(line) if live_root is not None else []
                    answers[(filename, line)] = tuple(n.candidate() for n in nodes)
            return {fl: answers[fl] for fl in wanted}


_index = _FunctionIndex()


class _Stacks(NamedTuple):
    frames: list[Frame]  # distinct frames
    stacks: list[list[int]]  # per site: indexes into frames, leaf first


def _resolve_stacks(sites: Iterable[tuple[Site, bool]], resolver: Resolver) -> _Stacks:
    """Resolve each site's traceback to frames, leaf first.

    pyproperf's own frames are dropped where they wrap user code
    (decorators, ``do``), as in CPU profiles, and kept where pyproperf
    itself allocated, so the profiler's own memory stays visible.
    """
    sites = list(sites)
    tbs: list[tuple[tuple[str, int], ...]] = [
        site[1] if type(site[0]) is int else site for site, _ in sites
    ]
    answers = _index.lookup({fl for tb in tbs for fl in tb}, resolver)
    frames: list[Frame] = []
    # Per (file, line): its file's kind and its frame index, or -1 when
    # several functions have code on the line (chosen per occurrence).
    info: dict[tuple[str, int], tuple[int, int]] = {}
    kinds: dict[str, int] = {}
    for fl, candidates in answers.items():
        kind = kinds.get(fl[0])
        if kind is None:
            kind = kinds[fl[0]] = _file_kind(fl[0])
        j = -1
        if len(candidates) <= 1:
            j = len(frames)
            frames.append(_frame(fl, candidates, 0, resolver))
        info[fl] = (kind, j)
    chosen: dict[tuple[tuple[str, int], int], int] = {}  # (fl, k) -> frame index
    truncated_index = -1
    out: list[list[int]] = []
    for tb, (_, truncated) in zip(tbs, sites, strict=True):
        stack: list[int] = []
        below_user = False  # a user frame is nearer the leaf
        prev: tuple[str, int] | None = None
        run = 0
        for i, fl in enumerate(tb):
            kind, j = info[fl]
            if kind == _OWN:
                if below_user:
                    prev = fl
                    continue
            elif kind == _USER:
                below_user = True
            if j < 0:
                run = run + 1 if fl == prev else 0
                k = _choose(tb, i, run, answers[fl], truncated, answers)
                j = chosen.get((fl, k), -1)
                if j < 0:
                    j = chosen[(fl, k)] = len(frames)
                    frames.append(_frame(fl, answers[fl], k, resolver))
            prev = fl
            stack.append(j)
        if truncated:
            if truncated_index < 0:
                truncated_index = len(frames)
                frames.append(TRUNCATED)
            stack.append(truncated_index)
        out.append(stack)
    return _Stacks(frames, out)


def _choose(
    tb: tuple[tuple[str, int], ...],
    i: int,
    run: int,
    candidates: _Candidates,
    truncated: bool,
    answers: dict[tuple[str, int], _Candidates],
) -> int:
    """Which of several functions with code on frame ``i``'s line was running there.

    A line can belong to nested code objects: a lambda, a generator
    expression or (before Python 3.12) a comprehension and the function
    around it.  The inner code is usually called from the outer one on the
    same line, so within a run of equal (file, line) frames the leaf-most
    frame is the innermost code, the next one out, and so on.  A frame
    alone on its line is the outer function when its caller's code refers
    to that function's name (for ``<module>``: the caller is the import
    system or runs ``exec``), or when it is the root of a whole traceback;
    otherwise the inner code (a lambda or generator called from elsewhere).
    """
    last = len(candidates) - 1
    if run:
        return min(run, last)
    if i + 1 == len(tb):
        return 0 if truncated else last
    caller = tb[i + 1]
    if caller == tb[i]:
        return 0  # the leaf-most frame of a run
    caller_names = [c[2] for c in answers[caller]]
    for k in range(last, 0, -1):
        name = candidates[k][0].rpartition(".")[2]
        if name == "<module>":
            name = "exec"
            if "importlib" in caller[0] or "runpy" in caller[0]:
                return k
        if any(name in names for names in caller_names):
            return k
    return 0


_OWN, _STDLIB, _USER = 0, 1, 2


@functools.lru_cache(maxsize=1)
def _stdlib_dir() -> str:
    stdlib = getattr(sys, "_stdlib_dir", None) or os.path.dirname(os.__file__)
    return os.path.join(os.path.abspath(stdlib), "")


def _file_kind(filename: str) -> int:
    """pyproperf's own file, the standard library (or a ``<...>`` name), or user code."""
    if filename.startswith(_PACKAGE_DIR):
        return _OWN
    if filename.startswith("<"):
        return _STDLIB
    stdlib = _stdlib_dir()
    if filename.startswith(stdlib):
        rest = filename[len(stdlib) :]
        if not rest.startswith(("site-packages", "dist-packages")):
            return _STDLIB
    return _USER


def _frame(fl: tuple[str, int], candidates: _Candidates, k: int, resolver: Resolver) -> Frame:
    filename, line = fl
    if filename == "<unknown>" and line == 0:
        return _NO_PYTHON_FRAME
    module = resolver.module_name(filename)
    if not candidates:
        return Frame(f"{module}.<nosource>", filename, 0, line)
    qual, first, _ = candidates[k]
    return Frame(f"{module}.{qual}", filename, first, line)


# -- output -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in _NAMES:
        raise ValueError(f"not a heap profile name: {name!r} (want 'heap' or 'allocs')")


def count(name: str) -> int:
    """Number of sites (Go: memory-profile buckets) a ``name`` profile would have now."""
    _check_name(name)
    _ensure_sampler()
    return len(_observe().records)


def render(name: str, debug: int) -> bytes:
    """The whole ``heap`` or ``allocs`` profile: gzipped proto (debug <= 0) or Go's text.

    Never raises for a missing tracemalloc: without tracing, the profile is
    empty, its comment says how to turn heap profiling on, and a
    RuntimeWarning points at the caller.
    """
    _check_name(name)
    _ensure_sampler()
    with _data_lock:
        data = _observe()
        if not data.tracing:
            _warn(
                f"pyproperf: the {name} profile is empty because tracemalloc is not tracing; "
                "turn heap profiling on with pyproperf.start_heap_profile() or "
                f"pyproperf.heap_profile(), or set {ENV_FILE}=FILE"
            )
        stacks = _resolve_stacks(((r[0], r[5]) for r in data.records), Resolver())
        if debug > 0:
            return _text_profile(data, stacks).encode("utf-8", "surrogateescape")
        return _proto_profile(name, data, stacks)


def _comments(data: _Data) -> list[str]:
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


def _domain(site: Site) -> int:
    first = site[0]
    return first if type(first) is int else 0


def _proto_profile(name: str, data: _Data, stacks: _Stacks) -> bytes:
    b = ProfileBuilder(
        _SAMPLE_TYPES,
        period_type=("space", "bytes"),
        period=1,  # every block is traced: nothing to scale
        default_sample_type="alloc_space" if name == "allocs" else "",
        comments=_comments(data),
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
            labels = domain_labels[domain] = [("domain", _DOMAIN_NAMES.get(domain, str(domain)))]
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


def _text_profile(data: _Data, stacks: _Stacks) -> str:
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
            label = _DOMAIN_NAMES.get(domain, str(domain))
            lines.append(f"# labels: {_text.labels_text([('domain', label)])}")
        lines.extend(_text.format_frames(stack))
        lines.append("")
    lines.append("")
    lines.extend(_trailer(data))
    return _text.tabwrite(lines)


def _trailer(data: _Data) -> list[str]:
    current, peak = _tracemalloc.get_traced_memory()
    out = ["# pyproperf heap profile"]
    out.extend(f"# {c}" for c in _comments(data))
    out.append("# tracemalloc")
    out.append(f"# Tracing = {str(data.tracing).lower()}")
    out.append(f"# TracebackLimit = {data.limit}")
    out.append(f"# TracedBlocks = {data.blocks}")
    out.append(f"# TracedMemory = {current}")
    out.append(f"# PeakTracedMemory = {peak}")
    out.append(f"# TracemallocMemory = {_tracemalloc.get_tracemalloc_memory()}")
    acc = data.session
    out.append(f"# Snapshots = {acc.snapshots if acc is not None else 0}")
    sampler = _sampler
    interval = sampler.interval if sampler is not None and acc is not None else 0.0
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


# -- helpers: warnings, environment, exit, fork -------------------------------------------------


def _warn(message: str) -> None:
    """Warn at the first caller outside pyproperf."""
    frame = sys._getframe()
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)


def _ensure_sampler() -> None:
    """Restart the snapshot thread in a forked child (fork keeps only the calling thread)."""
    if _depth and (_sampler is None or not _sampler.is_alive()) and not _sampler_error:
        with _state_lock:
            if _depth and _sampler is None:
                _start_sampler()


def _write_at_exit(path: str) -> None:
    try:
        target = path.replace("%p", str(os.getpid()))
        _io.write_file_atomic(target, render("heap", 0))
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
    atexit.register(_write_at_exit, os.path.abspath(target))


def _stop_sampler_at_exit() -> None:
    """Do not leave the snapshot thread running into interpreter finalization."""
    global _sampler, _sampler_error
    with _state_lock:
        sampler, _sampler = _sampler, None
        if sampler is not None:
            _sampler_error = "at interpreter exit"
            sampler.stop()


def _after_fork_child() -> None:
    global _state_lock, _data_lock, _sampler
    _state_lock = threading.RLock()
    _data_lock = threading.RLock()
    _sampler = None  # restarted by the next count/render in the child


atexit.register(_stop_sampler_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)
_start_from_environment()
