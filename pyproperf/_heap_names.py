"""Which function a tracemalloc frame is in: (file, line) -> ``module.qualname``.

tracemalloc records file and line only.  The function around a line comes
from the module's code objects: its ``.pyc`` (unmarshalling costs a few
percent of compiling, which tracemalloc makes very slow by tracing every
allocation of the compiler), the frozen module, or the compiled source;
else the live functions of loaded modules; else ``module.<nosource>``.
Line tables are read only for the code objects on the way down to each
line, and answers are cached per line (``index``).

A line can hold several functions (a lambda, a generator expression or,
before Python 3.12, a comprehension inside its function): the traceback
around the frame tells which one ran (``_choose``).
"""

from __future__ import annotations

import bisect
import functools
import os
import sys
import threading
import warnings
from collections.abc import Iterable
from types import CodeType, ModuleType
from typing import Any, NamedTuple

from pyproperf import _own, _stacks
from pyproperf._builder import Frame
from pyproperf._stacks import PACKAGE_DIR, TRUNCATED, Resolver

__all__ = ["Site", "Stacks", "allocated_by_profiler", "index", "resolve_stacks"]

# A site: the traceback ((filename, lineno), ...) leaf first for domain 0,
# else (domain, traceback).  Tuples compare by content, so a site from one
# snapshot finds itself in the accumulator.
Site = tuple[Any, ...]

_CO_OPTIMIZED = 0x1
_NO_PYTHON_FRAME = Frame("(no Python frame)", "<unknown>", 0, 0)

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
                # A function's first line belongs to it too (a frame stopped
                # at its entry, before its first statement, is on that line)
                # and to the code defining it (MAKE_FUNCTION): ``find`` gives
                # both, and ``_choose`` tells them apart by the caller.
                self._lines = frozenset(_code_lines(code) | {code.co_firstlineno})
        return self._lines

    def set_children(self, children: list[_Node]) -> None:
        """Set the nested code objects (sorted by first line, for ``find``)."""
        children.sort(key=lambda n: n.first)
        self._children = children
        self._firsts = [n.first for n in children]

    def children(self) -> list[_Node]:
        """The code objects defined directly in this one, by first line."""
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
        """The code's first line (0 for the root of live functions)."""
        return self.code.co_firstlineno if self.code is not None else 0

    def candidate(self) -> _Candidate:
        """This code as an answer for a line: (qualname, first line, names it refers to)."""
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
    """The qualified name of ``child``, a code object in ``parent``'s constants."""
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
    base = os.path.join(_stdlib_dir(), *name.split("."))
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
        """Forget every answer and compiled source (files may have changed)."""
        with self._lock:
            self._answers.clear()
            _compiled.clear()

    def lookup(
        self, wanted: set[tuple[str, int]], resolver: Resolver
    ) -> dict[tuple[str, int], _Candidates]:
        """The candidates of each (filename, line) in ``wanted``, resolving the missing ones."""
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


index = _FunctionIndex()


class Stacks(NamedTuple):
    """Resolved stacks of many sites, sharing their frames."""

    frames: list[Frame]  # distinct frames
    stacks: list[list[int]]  # per site: indexes into frames, leaf first


def resolve_stacks(sites: Iterable[tuple[Site, bool]], resolver: Resolver) -> Stacks:  # noqa: PLR0912 - one pass over every site: the heap writer's hot loop
    """Resolve each site's traceback to frames, leaf first.

    pyproperf's own frames are dropped where they wrap user code
    (decorators, ``do``), as in CPU profiles, and so are ``run``'s launcher
    frames at the root.  (Sites pyproperf itself allocated never get here:
    ``allocated_by_profiler`` filters them out of snapshots.)
    """
    sites = list(sites)
    tbs: list[tuple[tuple[str, int], ...]] = [
        site[1] if type(site[0]) is int else site for site, _ in sites
    ]
    answers = index.lookup({fl for tb in tbs for fl in tb}, resolver)
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
        stripped = _strip_launcher_root(tb)
        if len(stripped) < len(tb):
            # Launcher frames are the outermost ones: what was cut off are more.
            tb, truncated = stripped, False
        stack: list[int] = []
        below_user = False  # a user frame is nearer the leaf
        prev: tuple[str, int] | None = None
        run = 0
        for i, fl in enumerate(tb):
            kind, j = info[fl]
            if kind == _OWN:
                # Hidden where it wraps user code: under a user frame, or a
                # function that only calls the user's callable (``_own``).
                if below_user or _own.is_user_call_line(*fl):
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
    return Stacks(frames, out)


def _strip_launcher_root(tb: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """``tb`` without ``run``'s launcher frames at its root (as ``_stacks`` does for CPU)."""
    n = len(tb)
    while n and _stacks.is_launcher_file(tb[n - 1][0]):
        n -= 1
    return tb[:n] if n else tb


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
_kinds: dict[str, int] = {}  # filename -> _file_kind (a handful of files)


def allocated_by_profiler(tb: tuple[tuple[str, int], ...]) -> bool:
    """Whether a traceback (leaf first) is pyproperf's own allocation, or only the launcher's.

    Own: walking out from the leaf, a pyproperf frame comes before any
    frame of user code (the CPU sampler's handler on top of a user's
    stack, the helper and HTTP threads, pyproperf calling the standard
    library).  Frames of pyproperf functions that only call the user's
    callable (``do``, the decorators' wrappers, the thread hooks: see
    ``_own``) are stepped over: under them, even a builtin's or the
    standard library's allocation is the user's.  Launcher only: under
    ``run``, every frame is runpy's or the runner's.
    """
    kinds = _kinds
    for filename, line in tb:
        kind = kinds.get(filename)
        if kind is None:
            kind = kinds[filename] = _file_kind(filename)
        if kind == _OWN:
            if _own.is_user_call_line(filename, line):
                continue  # ``do``, a decorator's wrapper: what runs under it is the user's
            return True
        if kind == _USER:
            return False
    return bool(tb) and all(_stacks.is_launcher_file(filename) for filename, _ in tb)


@functools.lru_cache(maxsize=1)
def _stdlib_dir() -> str:
    """The standard library's directory, with a trailing separator."""
    stdlib = getattr(sys, "_stdlib_dir", None) or os.path.dirname(os.__file__)
    return os.path.join(os.path.abspath(stdlib), "")


def _file_kind(filename: str) -> int:
    """pyproperf's own file, the standard library (or a ``<...>`` name), or user code."""
    if filename.startswith(PACKAGE_DIR):
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
    """The frame of (file, line) in candidate function ``k`` (``<nosource>`` when none)."""
    filename, line = fl
    if filename == "<unknown>" and line == 0:
        return _NO_PYTHON_FRAME
    module = resolver.module_name(filename)
    if not candidates:
        return Frame(f"{module}.<nosource>", filename, 0, line)
    qual, first, _ = candidates[k]
    return Frame(f"{module}.{qual}", filename, first, line)
