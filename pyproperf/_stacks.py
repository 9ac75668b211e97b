"""Stacks: capture them cheaply from live frames, resolve them when writing.

A stack key is a flat tuple ``(code0, lasti0, code1, lasti1, ...)``, leaf
first, like pprof's ``Sample.location_id``.  Capturing it reads two
attributes per frame and builds one tuple, so the sampler can afford it
on every tick; turning code objects and instruction offsets into names,
files, lines and columns (``Resolver``) happens only when a profile is
written.
"""

from __future__ import annotations

import bisect
import os
import sys
import weakref
from collections.abc import Iterable, Sequence
from types import CodeType, FrameType, ModuleType

from pyproperf import _labels
from pyproperf._builder import Frame, ProfileBuilder

__all__ = [
    "MAX_DEPTH",
    "PACKAGE_DIR",
    "TRUNCATED",
    "UNSEEN",
    "Resolver",
    "StackKey",
    "capture",
    "is_launcher_file",
    "is_own_code",
    "set_launcher_files",
    "stack_key",
    "strip_launcher_root",
]

# A stack key: (code, lasti, code, lasti, ...), innermost frame first.
StackKey = tuple[object, ...]

# Deepest stack kept; deeper stacks keep their innermost frames and gain a
# TRUNCATED root frame, so a runaway recursion cannot eat memory unseen.
MAX_DEPTH = 128

TRUNCATED = Frame("(truncated stack)", "", 0, 0)


class _Unseen:
    """Marks, in a stack key, CPU a thread used where no sample saw it (``_estimate``)."""

    __slots__ = ()
    co_filename = ""

    def __repr__(self) -> str:
        return "UNSEEN"


UNSEEN = _Unseen()
UNSEEN_FRAME = Frame("(ran between samples)", "", 0, 0)

# pyproperf's own directory, with a trailing separator: its files start with it.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# ``python -m pyproperf run`` runs the program under runpy and pyproperf's
# runner, whose frames sit at the root of the main thread's stacks.  The
# runner names their files here; every profile leaves such root frames out,
# so stacks start at the program's ``<module>``, as under ``python script.py``.
_launcher_files: frozenset[str] = frozenset()


def set_launcher_files(files: Iterable[str]) -> None:
    """Name the files of the launcher running the program (pyproperf's own always count)."""
    global _launcher_files  # noqa: PLW0603 - set once by `run`, read on every stack resolved
    _launcher_files = frozenset(files)


def is_launcher_file(filename: str) -> bool:
    """Whether frames of ``filename`` at a stack's root belong to the launcher."""
    files = _launcher_files
    return bool(files) and (filename in files or filename.startswith(PACKAGE_DIR))


def strip_launcher_root(key: StackKey) -> StackKey:
    """``key`` without launcher frames at its root (the key itself outside ``run``)."""
    if not _launcher_files:
        return key
    n = len(key)
    while n >= 2:
        filename = getattr(key[n - 2], "co_filename", "")  # None: a truncated root
        if not filename or not is_launcher_file(filename):
            break
        n -= 2
    return key if n == len(key) else key[:n]


def is_own_code(code: CodeType) -> bool:
    """Whether ``code`` belongs to pyproperf itself (its frames are never sampled)."""
    return code.co_filename.startswith(PACKAGE_DIR)


def stack_key(
    frame: FrameType | None,
    limit: int = MAX_DEPTH,
    *,
    frames: Sequence[FrameType] | None = None,
    skip_own: bool = False,
) -> StackKey:
    """The stack key of ``frame`` and its callers (or of ``frames``), at most ``limit`` frames.

    ``capture`` without labels; pyproperf's frames at the leaf stay unless ``skip_own``.
    """
    return capture(frame, None, limit, frames=frames, skip_own=skip_own)[0]


def capture(
    frame: FrameType | None,
    ident: int | None,
    limit: int = MAX_DEPTH,
    *,
    frames: Sequence[FrameType] | None = None,
    skip_own: bool = True,
) -> tuple[StackKey, _labels.LabelSet | None]:
    """Return the stack key of ``frame`` and its callers, and the labels active there.

    The one stack walker (the CPU sampler's hot path).  A stack cut at
    ``limit`` frames, or at a link that is no frame (below), ends with
    ``None`` in place of the root code.
    ``frames``: the stack given as frames, leaf first, instead of ``frame``
    and its ``f_back`` chain (an await chain has no such chain).
    ``skip_own``: profiler frames at the leaf are skipped.

    Labels, unless ``ident`` is None (then None): from the innermost frame
    registered in ``_labels.frame_labels`` on the way to the root; if none
    is, from ``_labels.unit_labels(ident)``, the labels of whatever unit
    (thread, greenlet) runs on thread ``ident``.
    """
    registry = _labels.frame_labels if ident is not None else None
    labels = None
    following = None
    if frames is not None:
        following = iter(frames)
        frame = next(following, None)
    out: list[object] = []
    append = out.append  # out.append: 5 % faster on 3.13, 5-10 % slower on 3.10
    try:
        while (skip_own and frame is not None
               and frame.f_code.co_filename.startswith(PACKAGE_DIR)):
            if registry and labels is None:  # a labels wrapper (do, labeled) is the leaf
                labels = registry.get(frame)
            frame = frame.f_back if following is None else next(following, None)
        for _ in range(limit):  # cheaper than counting the depth by hand
            if frame is None:
                break
            append(frame.f_code)
            append(frame.f_lasti)
            if registry and labels is None:
                labels = registry.get(frame)
            frame = frame.f_back if following is None else next(following, None)
        else:
            if frame is not None:  # cut: a None root, and labels from the frames left out
                append(None)
                append(0)
                while registry and labels is None and frame is not None:
                    labels = registry.get(frame)
                    frame = frame.f_back if following is None else next(following, None)
    except AttributeError:
        # Walking another thread's frames, ``f_back`` has been seen to give an object
        # that is no frame (CPython 3.11, once in a CI run; other profilers report it
        # too): keep the frames walked, as a stack cut short.
        del out[len(out) - len(out) % 2:]
        if len(out) < 2 or out[-2] is not None:
            out += [None, 0]
    if labels is None and ident is not None:
        labels = _labels.unit_labels(ident)
    return tuple(out), labels


class Resolver:
    """Turns code objects and offsets into ``Frame`` tuples, with caches.

    Make one per profile written: module names are read from ``sys.modules``
    when it is created.
    """

    def __init__(self, *, hide_own: bool = True) -> None:
        # pyproperf's own frames (decorator wrappers, ``do``) are left out of
        # resolved stacks, so users see their code calling their code.
        self._hide_own = hide_own
        self._modules: dict[str, str] | None = None
        self._functions: dict[CodeType, tuple[str, str, int]] = {}
        self._lines: dict[CodeType, tuple[list[int], list[tuple[int, int]]]] = {}
        self._frames: dict[tuple[CodeType, int], Frame] = {}
        self._ids: dict[int, int] = {}
        self._ids_builder: ProfileBuilder | None = None

    def stack(self, key: StackKey) -> list[Frame]:
        """Resolve a whole stack key, leaf first."""
        out = []
        hide = self._hide_own
        key = strip_launcher_root(key)
        for i in range(0, len(key), 2):
            code = key[i]
            if code is None:
                out.append(TRUNCATED)
            elif code is UNSEEN:
                out.append(UNSEEN_FRAME)
            elif not (hide and is_own_code(code)):  # type: ignore[arg-type]
                out.append(self.frame(code, key[i + 1]))  # type: ignore[arg-type]
        return out

    def location_ids(self, key: StackKey, builder: ProfileBuilder) -> list[int]:
        """The builder's location ids for a stack key, leaf first (cached per code and offset).

        The fast path for writing large profiles: one int-keyed dict lookup
        per frame instead of resolving and hashing a ``Frame``.
        """
        cache = self._ids
        if self._ids_builder is not builder:
            cache.clear()
            self._ids_builder = builder
        out = []
        get = cache.get
        key = strip_launcher_root(key)
        # Codes stay alive while their keys exist, so id() is unique here.
        for code, lasti in zip(key[::2], key[1::2], strict=False):
            k = (id(code) << 24) + lasti  # type: ignore[operator]
            lid = get(k)
            if lid is None:
                lid = cache[k] = self._location_id(code, lasti, builder)  # type: ignore[arg-type]
            if lid:
                out.append(lid)
        return out

    def _location_id(
        self, code: CodeType | _Unseen | None, lasti: int, builder: ProfileBuilder
    ) -> int:
        if code is None:
            return builder.location_id(TRUNCATED)
        if isinstance(code, _Unseen):
            return builder.location_id(UNSEEN_FRAME)
        if self._hide_own and is_own_code(code):
            return 0
        return builder.location_id(self.frame(code, lasti))

    def frame(self, code: CodeType, lasti: int) -> Frame:
        """Resolve one (code, lasti) pair."""
        k = (code, lasti)
        f = self._frames.get(k)
        if f is None:
            name, filename, start = self.function(code)
            line, column = self.position(code, lasti)
            f = self._frames[k] = Frame(name, filename, start, line, column)
        return f

    def function(self, code: CodeType) -> tuple[str, str, int]:
        """Return (qualified name, filename, first line) of a code object."""
        fn = self._functions.get(code)
        if fn is None:
            module = self.module_name(code.co_filename)
            qual = getattr(code, "co_qualname", None) or self._qualname_310(code)
            fn = self._functions[code] = (
                f"{module}.{qual}",
                code.co_filename,
                code.co_firstlineno,
            )
        return fn

    def position(self, code: CodeType, lasti: int) -> tuple[int, int]:
        """Return (line, 1-based column or 0) of the instruction at byte offset ``lasti``."""
        if lasti < 0:
            return code.co_firstlineno, 0
        table = self._lines.get(code)
        if table is None:
            table = self._lines[code] = _line_table(code)
        starts, positions = table
        i = bisect.bisect_right(starts, lasti) - 1
        if i < 0:
            return code.co_firstlineno, 0
        return positions[i]

    # -- module names -------------------------------------------------------

    def module_name(self, filename: str) -> str:
        """The module a file belongs to, from ``sys.modules``; else a name made from the path."""
        if self._modules is None:
            self._modules = _module_files()
        name = self._modules.get(filename)
        if name is None:
            name = self._modules.get(os.path.abspath(filename)) if filename else None
        if name is None:
            base = os.path.basename(filename)
            if base.startswith("<frozen ") and base.endswith(">"):
                name = base[len("<frozen ") : -1]  # "<frozen importlib._bootstrap>"
            elif base.startswith("<") or not base:
                name = base or "_"  # "<string>.<module>": pprof leaves ".<" alone
            else:
                name = os.path.splitext(base)[0]
            self._modules[filename] = name
        return name

    def _qualname_310(self, code: CodeType) -> str:
        """Python 3.10 has no ``co_qualname``: find it through the modules' functions.

        The map is shared by every profile written and rebuilt only when
        modules were imported since; it holds code objects weakly.
        """
        global _qualnames_modules  # noqa: PLW0603 - the map is shared by every profile written
        qual = _qualnames_310.get(code)
        if qual is None and len(sys.modules) != _qualnames_modules:
            _qualnames_modules = len(sys.modules)
            _qualnames_310.update(_collect_qualnames())
            qual = _qualnames_310.get(code)
        return qual or code.co_name


# Python 3.10: code -> qualified name, for every code reachable from loaded
# modules; rescanned when the number of loaded modules changes.
_qualnames_310: weakref.WeakKeyDictionary[CodeType, str] = weakref.WeakKeyDictionary()
_qualnames_modules = -1


def _line_table(code: CodeType) -> tuple[list[int], list[tuple[int, int]]]:
    """Byte offsets where positions change, and the (line, column) from each on."""
    starts: list[int] = []
    positions: list[tuple[int, int]] = []
    last_line = code.co_firstlineno
    if sys.version_info >= (3, 11):
        prev: tuple[int, int] | None = None
        for unit, (line, _end, col, _endcol) in enumerate(code.co_positions()):
            if line is None:
                line = last_line
            last_line = line
            pos = (line, col + 1 if col is not None else 0)
            if pos != prev:
                starts.append(unit * 2)
                positions.append(pos)
                prev = pos
    else:
        for start, _end, line in code.co_lines():
            if line is None:
                line = last_line
            last_line = line
            starts.append(start)
            positions.append((line, 0))
    return starts, positions


def _module_files() -> dict[str, str]:
    """Map each loaded module's source file to the module's name."""
    out: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path is None and name == "__main__":
            # At interpreter exit (atexit writers) __main__.__file__ is gone
            # already; its loader still knows the script.
            path = getattr(getattr(module, "__loader__", None), "path", None)
        if not isinstance(path, str):
            continue
        if path.endswith((".pyc", ".pyo")):
            path = path[:-1]
        # The first name wins over aliases; __main__ wins for the script.
        if path not in out or name == "__main__":
            out[path] = name
            out.setdefault(os.path.abspath(path), name)
    return out


def _collect_qualnames() -> dict[CodeType, str]:
    """Qualified names of all code reachable from loaded modules (Python 3.10 only)."""
    out: dict[CodeType, str] = {}

    def visit_code(code: CodeType, qual: str) -> None:
        if code in out:
            return
        out[code] = qual
        for const in code.co_consts:
            if isinstance(const, CodeType):
                visit_code(const, f"{qual}.<locals>.{const.co_name}")

    def visit_namespace(ns: dict[str, object], depth: int) -> None:
        for obj in list(ns.values()):
            try:  # module globals include proxies whose attributes raise
                func = getattr(obj, "__func__", obj)
                code = getattr(func, "__code__", None)
                qual = getattr(func, "__qualname__", None)
                if isinstance(code, CodeType) and isinstance(qual, str):
                    visit_code(code, qual)
                elif isinstance(obj, type) and depth < 4:
                    visit_namespace(dict(vars(obj)), depth + 1)
            except Exception:
                continue

    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType):
            try:
                visit_namespace(dict(vars(module)), 0)
            except TypeError:
                continue
    return out
