"""The ``goroutine`` and ``threadcreate`` profiles: what every unit is doing now.

A "goroutine" here is any unit of execution with its own stack:

* every thread (``sys._current_frames()``), with the stack it runs now —
  which is the stack of whatever greenlet or task runs on it;
* every suspended greenlet (gevent hubs and workers, plain greenlets, the
  main greenlet of a thread that switched away), with its saved stack;
* every suspended task of every running asyncio, uvloop or trio loop, with
  its whole await chain (``_goroutine_tasks``).

A running greenlet or task is on its thread's stack, so no unit is listed
twice.  ``asyncio`` and ``greenlet`` are looked at only if something else
has imported them.

Finding greenlets without scanning the heap each time: the first goroutine
profile taken while ``greenlet`` is imported scans ``gc.get_objects()`` once
and adds a ``gc.callbacks`` hook.  Every object leaves the young generations
(0 and 1) only at a collection of generation 1 or 2, so the hook scans the
young generations at the start of those collections, and each profile scans
them once more: every greenlet is seen without another full scan, whatever
thread it lives in.  The scan costs the young objects' type lookups, once
per generation-1 collection (measured in ``tests/benchmarks/bench_goroutine``).

``threadcreate``: ``threading.Thread.start`` is wrapped when pyproperf is
imported; each start records the stack that called it (grouped by stack,
so memory stays bounded) and who started whom, for debug=2's ``created by``.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any, NamedTuple

from pyproperf import _goroutine_tasks, _hooks, _labels, _stacks, _text
from pyproperf._builder import Frame
from pyproperf._labels import LabelSet
from pyproperf._stacks import Resolver, StackKey

__all__ = ["count", "render", "snapshot"]


_get_ident = _hooks.real_get_ident
# The main thread's OS ident (gevent's monkey-patching renumbers threading's idents).
_MAIN_IDENT = (
    _get_ident() if threading.current_thread() is threading.main_thread() else 0
) or threading.main_thread().ident

# -- unit ids ---------------------------------------------------------------------
#
# Go numbers goroutines; we number units on first sight and keep the number
# for the unit's life, so two dumps can be compared.  The main thread is 1.

_next_uid = itertools.count(2).__next__
_thread_uids: weakref.WeakKeyDictionary[threading.Thread, int] = weakref.WeakKeyDictionary()
_thread_uids[threading.main_thread()] = 1
_ident_uids: dict[int, int] = {}  # threads with no Thread object
_object_uids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


_uid_lock = threading.Lock()


def _thread_uid(thread: threading.Thread | None, ident: int) -> int:
    with _uid_lock:
        if thread is None:
            uid = _ident_uids.get(ident)
            if uid is None:
                uid = _ident_uids[ident] = _next_uid()
            return uid
        uid = _thread_uids.get(thread)
        if uid is None:
            uid = _thread_uids[thread] = _next_uid()
        return uid


def _object_uid(obj: Any) -> int:
    with _uid_lock:
        try:
            uid = _object_uids.get(obj)
            if uid is None:
                uid = _object_uids[obj] = _next_uid()
        except TypeError:  # not weak-referenceable
            return 0
        return uid


# -- threadcreate ---------------------------------------------------------------------

_tc_lock = threading.Lock()
# Stacks that called Thread.start, keyed by (id(code), lasti, ...): hashing
# ints is cheap, hashing code objects is not (10 µs a stack on 3.13).  The
# value holds the real stack key, which keeps the codes (and their ids) alive.
_tc_stacks: dict[tuple[tuple[int, ...], StackKey], list[Any]] = {}  # -> [stack key, starts]
_tc_total = 0
# Thread -> (stack that started it, uid of the starting thread).
_creators: weakref.WeakKeyDictionary[threading.Thread, tuple[StackKey, int]] = (
    weakref.WeakKeyDictionary()
)

def _current_thread_uid() -> int:
    # Not threading.current_thread(): in a thread threading did not start it
    # would create and register a _DummyThread.
    ident = threading.get_ident()
    return _thread_uid(getattr(threading, "_active", {}).get(ident), ident)


def _started(thread: threading.Thread, caller: FrameType | None) -> None:
    """Record the stack that started ``thread`` (pyproperf's threadcreate)."""
    key = _stacks.stack_key(caller, skip_own=True)  # past other pyproperf wrappers of start
    global _tc_total  # noqa: PLW0603 - a counter updated under _tc_lock, read by count()
    parent = _current_thread_uid()
    ikey = (tuple(map(id, key[::2])), key[1::2])
    with _tc_lock:
        _tc_total += 1
        entry = _tc_stacks.get(ikey)
        if entry is None:
            entry = _tc_stacks[ikey] = [key, 0]
        entry[1] += 1
        _creators[thread] = (entry[0], parent)


_hooks.on_thread_start(after=_started)


def _render_threadcreate(debug: int) -> bytes:
    with _tc_lock:
        stacks = [(key, n) for key, n in _tc_stacks.values()]
        total = _tc_total
    resolver = Resolver()
    records = [(resolver.stack(key), None, n) for key, n in stacks]
    return _text.render_count_profile("threadcreate", records, debug, total)


# -- finding greenlets -----------------------------------------------------------------

# Collections promote young objects into generation 2 only from generation
# 1 up; Python 3.14's incremental collector works differently, so there the
# tracker falls back to a full scan per profile.
_GENERATIONAL = sys.version_info < (3, 14)


class _GreenletTracker:
    """Weak references to every greenlet object, found as described in the module doc."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._is_greenlet: dict[type, bool] = {}
        self._base: type | None = None
        self._started = False
        self._lock = threading.Lock()  # only serializes start(); never taken by the gc hook

    def live(self) -> list[Any]:
        """Every greenlet object still alive (running, suspended, dead or not started)."""
        base = getattr(sys.modules.get("greenlet"), "greenlet", None)
        if not isinstance(base, type):
            return []
        self._base = base
        if not _GENERATIONAL:
            self._scan(None)
        else:
            with self._lock:
                if not self._started or self._on_gc not in gc.callbacks:
                    # First use, or someone cleared gc.callbacks: hook, then
                    # scan everything once so nothing in generation 2 is missed.
                    if self._on_gc not in gc.callbacks:
                        gc.callbacks.append(self._on_gc)
                    self._started = True
                    self._scan(None)
            self._scan_young()
        out = []
        for ref in list(self._refs.values()):
            g = ref()
            if g is not None:
                out.append(g)
        return out

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info.get("generation", 0) >= 1:
            try:
                self._scan_young()
            except Exception:  # never disturb a collection
                pass

    def _scan_young(self) -> None:
        self._scan(0)
        self._scan(1)

    def _scan(self, generation: int | None) -> None:
        """Register the greenlets among the objects gc tracks (in one generation)."""
        objs = gc.get_objects() if generation is None else gc.get_objects(generation=generation)
        found = self._pick(objs)
        # Drop the big list before allocating weakrefs: every collection those
        # trigger would otherwise traverse it (0.3 s for 5M objects).
        del objs
        refs = self._refs
        for o in found:
            k = id(o)
            r = refs.get(k)
            if r is None or r() is not o:
                refs[k] = weakref.ref(o, self._forget(k))

    def _pick(self, objs: list[Any]) -> list[Any]:
        base = self._base
        if base is None:
            return []
        # C-speed filtering: a type per object, the greenlet types among the
        # distinct ones, then compress() picks their instances.
        known = self._is_greenlet
        hits = set()
        for t in set(map(type, objs)):
            flag = known.get(t)
            if flag is None:
                flag = known[t] = issubclass(t, base)
            if flag:
                hits.add(t)
        if not hits:
            return []
        return list(itertools.compress(objs, map(hits.__contains__, map(type, objs))))

    def _forget(self, k: int) -> Callable[[weakref.ref[Any]], None]:
        refs = self._refs

        def forget(r: weakref.ref[Any]) -> None:
            if refs.get(k) is r:
                del refs[k]

        return forget


_greenlets = _GreenletTracker()


# -- units ------------------------------------------------------------------------


class Unit(NamedTuple):
    """One goroutine-like unit in a snapshot."""

    kind: str  # "thread", "greenlet" or "task"
    name: str
    state: str
    key: StackKey  # leaf first
    labels: LabelSet | None
    obj: Any  # the Thread, greenlet or Task (None for a bare thread ident)
    ident: int  # thread ident for threads, else 0
    current: bool  # the thread taking the snapshot


def _no_set(ls: LabelSet | None) -> LabelSet | None:
    """None for the labels module's "no label set" marker."""
    return None if ls is None or ls is _labels.EMPTY else ls


# Leaf functions that mean a thread is blocked waiting (a C call below them).
_WAITS = {
    ("threading", "wait"): "waiting",
    ("threading", "acquire"): "waiting",
    ("threading", "join"): "waiting",
    ("threading", "_wait_for_tstate_lock"): "waiting",
    ("queue", "get"): "waiting",
    ("queue", "put"): "waiting",
    ("selectors", "select"): "IO wait",
    ("socket", "accept"): "IO wait",
    ("socketserver", "serve_forever"): "IO wait",
}


def _thread_state(key: StackKey) -> str:
    if not key or key[0] is None:
        return "runnable"
    code: CodeType = key[0]  # type: ignore[assignment]
    module = os.path.splitext(os.path.basename(code.co_filename))[0]
    return _WAITS.get((module, code.co_name), "runnable")


def _is_own_thread(thread: threading.Thread | None) -> bool:
    """Threads pyproperf started for itself (sampler, server) are not listed, as Go hides
    its system goroutines."""
    if thread is None:
        return False
    target = getattr(thread, "_target", None)
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    if code is None:
        run = type(thread).run
        code = getattr(run, "__code__", None) if run is not threading.Thread.run else None
    return isinstance(code, CodeType) and _stacks.is_own_code(code)


def _thread_of(ident: int) -> threading.Thread | None:
    """The Thread object of OS thread ``ident``, if threading knows it."""
    active: dict[int, threading.Thread] = getattr(threading, "_active", {})
    thread = active.get(ident)
    if thread is None:
        if ident == _MAIN_IDENT:
            return threading.main_thread()
        thread = next((t for t in list(active.values()) if t.ident == ident), None)
    return thread


def _threads(units: list[Unit], frames: dict[int, FrameType]) -> None:
    me = _get_ident()
    active: dict[int, threading.Thread] = dict(getattr(threading, "_active", {}))
    by_ident = {t.ident: t for t in active.values()}  # differs under gevent's monkey-patching
    by_ident.setdefault(_MAIN_IDENT, threading.main_thread())
    for ident, frame in frames.items():
        thread = active.get(ident) or by_ident.get(ident)
        if ident != me and _is_own_thread(thread):
            continue
        key, labels = _stacks.capture(frame, ident)
        if not key and ident != me:
            continue  # every frame pyproperf's: its own raw threads (CPU helper, heap snapshots)
        labels = _no_set(labels)
        state = "running" if ident == me else _thread_state(key)
        name = thread.name if thread is not None else f"Thread {ident}"
        units.append(Unit("thread", name, state, key, labels, thread, ident, ident == me))
    with _uid_lock:
        for ident in [i for i in _ident_uids if i not in frames]:
            del _ident_uids[ident]


def _greenlet_name(g: Any) -> str:
    gevent_name = getattr(g, "__dict__", {}).get("name")
    if isinstance(gevent_name, str):
        return gevent_name
    if getattr(g, "parent", 0) is None:
        return "main greenlet"
    kind = type(g).__name__
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    qual = getattr(run, "__qualname__", None)
    if not isinstance(qual, str) or qual.startswith(kind + "."):
        return kind  # "greenlet", "Hub": the class says it all
    return f"{kind} {qual}"


_BOOTSTRAP = threading.Thread._bootstrap.__code__  # type: ignore[attr-defined]


def _greenlets_units(units: list[Unit]) -> None:
    for g in _greenlets.live():
        frame = g.gr_frame
        state = "suspended"
        if frame is None:
            # Running (it is on its thread's stack), dead, or not started.
            # A gevent greenlet scheduled but not started is runnable: show its function.
            if g or getattr(g, "dead", True) or not getattr(g, "started", False):
                continue
            code = _entry_code(getattr(g, "_run", None))
            if code is None:
                continue
            key: StackKey = (code, -1)
            labels = _no_set(_labels.labels_of_greenlet(g))
            state = "runnable"
        else:
            key = _stacks.stack_key(frame)
            if key and not _stacks.strip_launcher_root(key):
                continue  # ``run``'s launcher, waiting for the program's greenlet
            labels = _no_set(_labels.labels_of_greenlet(g))
            root = frame
            while root.f_back is not None:
                root = root.f_back
            if root.f_code is _BOOTSTRAP:  # a monkey-patched "thread"
                thread = root.f_locals.get("self")
                if isinstance(thread, threading.Thread):
                    units.append(Unit("greenlet", thread.name, state, key, labels, g, 0, False))
                    continue
        units.append(Unit("greenlet", _greenlet_name(g), state, key, labels, g, 0, False))


def _entry_code(fn: Any) -> CodeType | None:
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)  # bound method
    code = getattr(fn, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _tasks_units(units: list[Unit], views: Iterator[_goroutine_tasks.TaskView]) -> None:
    for view in views:
        labels = _no_set(_labels.labels_of_task(view.obj))
        key = _stacks.stack_key(None, frames=view.frames)
        units.append(Unit("task", view.name, view.state, key, labels, view.obj, 0, False))


def snapshot() -> list[Unit]:
    """Every unit now: threads, then suspended greenlets, then pending tasks."""
    units: list[Unit] = []
    frames = sys._current_frames()
    _threads(units, frames)
    if "greenlet" in sys.modules:
        _greenlets_units(units)
    if "asyncio.tasks" in sys.modules:
        _tasks_units(units, _goroutine_tasks.asyncio_tasks())
    if "trio" in sys.modules:
        _tasks_units(units, _goroutine_tasks.trio_tasks(frames.values()))
    # The dict holds this frame, which holds the dict: without this, a cycle keeping every
    # thread's frame and locals for the garbage collector (see _sampler.helper_tick).
    frames.clear()
    return units


# -- output ---------------------------------------------------------------------------


def count(name: str) -> int:
    """Go's ``Count()``: live units for goroutine, thread starts for threadcreate."""
    if name == "goroutine":
        return len(snapshot())
    if name == "threadcreate":
        with _tc_lock:
            return _tc_total
    raise ValueError(f"pyproperf._goroutine has no profile {name!r}")


def render(name: str, debug: int) -> bytes:
    """The whole profile: proto for debug <= 0, Go's text for debug >= 1 (dump for >= 2)."""
    if name == "threadcreate":
        return _render_threadcreate(debug)
    if name != "goroutine":
        raise ValueError(f"pyproperf._goroutine has no profile {name!r}")
    units = snapshot()
    if debug >= 2:
        return _render_dump(units).encode("utf-8", "surrogateescape")
    groups = Counter((u.key, u.labels) for u in units)
    resolver = Resolver()
    records = [
        (resolver.stack(key), None if labels is None else tuple(labels), n)
        for (key, labels), n in groups.items()
    ]
    return _text.render_count_profile("goroutine", records, debug, len(units))


def _uid(u: Unit) -> int:
    if u.kind == "thread":
        return _thread_uid(u.obj, u.ident)
    return _object_uid(u.obj)


def _created_by(u: Unit, resolver: Resolver) -> list[str]:
    if u.kind == "thread":
        entry = _creators.get(u.obj) if u.obj is not None else None
        if entry is None or not entry[0] or entry[0][0] is None:
            return []
        key, parent = entry
        return _text.traceback_created_by(resolver.frame(key[0], key[1]), parent)  # type: ignore[arg-type]
    if u.kind == "greenlet":
        spawner = getattr(u.obj, "spawning_stack", None)  # gevent, track_greenlet_tree
        # Step out of gevent's and threading's own spawning code (monkey-patched threads).
        outer = spawner
        while outer is not None and _is_spawn_machinery(getattr(outer, "f_code", None)):
            outer = getattr(outer, "f_back", None)
        spawner = outer or spawner
        code = getattr(spawner, "f_code", None)
        if not isinstance(code, CodeType):
            return []
        fname, filename, start = resolver.function(code)
        frame = Frame(fname, filename, start, int(getattr(spawner, "f_lineno", start)))
        ref = getattr(u.obj, "spawning_greenlet", None)
        parent_obj = ref() if callable(ref) else None
        return _text.traceback_created_by(frame, _spawner_uid(u.obj, parent_obj))
    tb = getattr(u.obj, "_source_traceback", None)  # asyncio debug mode
    if tb:
        last = tb[-1]
        module = resolver.module_name(last.filename)
        line = last.lineno or 0
        return _text.traceback_created_by(
            Frame(f"{module}.{last.name}", last.filename, line, line), None
        )
    return []


_THREADING_FILE = threading.__file__.removesuffix("c")
_GEVENT_DIR = None


def _is_spawn_machinery(code: Any) -> bool:
    global _GEVENT_DIR  # noqa: PLW0603 - found once, when gevent is imported
    if not isinstance(code, CodeType):
        return False
    if _GEVENT_DIR is None:
        gevent_file = getattr(sys.modules.get("gevent"), "__file__", None)
        _GEVENT_DIR = os.path.dirname(gevent_file) + os.sep if gevent_file else ""
    name = code.co_filename
    if name == _THREADING_FILE or _stacks.is_own_code(code):
        return True
    return bool(_GEVENT_DIR) and name.startswith(_GEVENT_DIR)


def _spawner_uid(g: Any, spawner: Any) -> int:
    """The unit that spawned gevent greenlet ``g``: the spawner's own number while it is
    suspended; while it runs, the number of the thread it runs on (found via the hub)."""
    if spawner is None:
        return 0
    if spawner.gr_frame is None and spawner:  # running: shown as its thread
        ident = getattr(getattr(g, "parent", None), "thread_ident", None)
        if isinstance(ident, int):
            return _thread_uid(_thread_of(ident), ident)
    return _object_uid(spawner)


def _render_dump(units: list[Unit]) -> str:
    """Go's ``debug=2`` dump: one traceback per unit, the current thread first."""
    resolver = Resolver()
    numbered = [(_uid(u), u) for u in units]
    numbered.sort(key=lambda x: (not x[1].current, x[0]))
    blocks = []
    for uid, u in numbered:
        state = f"{u.state}, {u.kind} {_text.go_quote(u.name)}"
        lines = [_text.traceback_header(uid, state, u.labels)]
        lines += _text.traceback_frames(resolver.stack(u.key))
        lines += _created_by(u, resolver)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""
