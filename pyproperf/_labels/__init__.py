"""Profiler labels: Go's label API, and which labels are active where.

The active label set of the running code lives in a ContextVar (``current``):
asyncio tasks inherit it through their context copy, and ``label(None, k)``
reads it.  The sampler runs in a signal handler or another thread and
cannot read that ContextVar, so the active labels are also published
where a stack walk finds them:

* ``frame_labels`` maps a live frame to the label set in force from that
  frame inward; the innermost registered frame on a stack wins.  ``labeled``
  and ``do`` register the frame running the labelled code; a unit that
  inherited labels has them on its root frame: the thread's bootstrap
  frame, a gevent greenlet's first frame, a task's coroutine.
* ``unit_labels(ident)`` is the fallback for a stack with no registered
  frame: the labels of the plain greenlet running on thread ``ident``
  (kept by a switch tracer).

Invariant: while code runs directly in a registered frame, the frame's
entry equals the ContextVar (``EMPTY`` standing for None).  Every write
keeps it, which is what lets ``set_goroutine_labels`` work by rewriting the
innermost registered frame.

The signal handler that samples the main thread could read the ContextVar
of the code it interrupted, but other threads' samples cannot: samples take
their labels from the stack alone, so the same code gets the same labels on
every thread (a ``with labeled`` held open across a generator's ``yield``
labels the consumer's code for ``label()``, not for the profile).

The package is split by job, one way (``_state`` <- ``_region`` <- ``_tasks``
<- ``_inherit`` <- here); this module is the one the rest of pyproperf
imports.  The modules share public names; nothing reaches into another's
underscore names:

* ``_state``: ``LabelSet``, ``LabelContext``, ``labels()``, the merge,
  and the stores above (the ContextVar, ``frame_labels``, the unit table),
  and the one-shot installer of the inheritance hooks (``when_first_set``);
* ``_region``: ``labeled``, the region context manager and decorator, and
  ``Bound``, a function bound to labels for work run elsewhere;
* ``_tasks``: inheritance into event-loop tasks (asyncio, uvloop, trio,
  anyio) and the worker threads of trio and anyio;
* ``_inherit``: inheritance into threads, ``concurrent.futures`` executors,
  gevent greenlets and plain greenlets (a switch tracer in programs without
  gevent); installs every hook the first time a label set is made, or when
  the module concerned is imported later.  ``import pyproperf`` imports
  none of those modules;
* here: the rest of Go's API (``with_labels``, ``label``, ``for_labels``,
  ``do``, ``set_goroutine_labels``) and the per-unit lookups the sampler
  and the goroutine profile use.
"""

from __future__ import annotations

import contextvars
import sys
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from pyproperf import _hooks, _own
from pyproperf._labels import _state
from pyproperf._labels._inherit import LABELS_ATTR, ensure_tracer, remove_tracer
from pyproperf._labels._region import labeled
from pyproperf._labels._state import (
    EMPTY,
    LabelContext,
    LabelSet,
    check_set,
    context_of,
    current,
    current_get,
    current_set,
    getframe,
    labels,
    labels_of_ctx,
    merge,
)
from pyproperf._labels._tasks import coro_frame, forget_with_task, running_task, task_root

__all__ = [
    "EMPTY",
    "LabelContext",
    "LabelSet",
    "do",
    "ensure_tracer",
    "for_labels",
    "frame_labels",
    "label",
    "labeled",
    "labels",
    "labels_of_greenlet",
    "labels_of_task",
    "remove_tracer",
    "set_goroutine_labels",
    "unit_labels",
    "with_labels",
]

# Not from-imported: see _state.frame_labels.
frame_labels = _state.frame_labels
unit_labels_by_thread = _state.unit_labels_by_thread


_T = TypeVar("_T")


# --- Go's API ------------------------------------------------------------------------------


def with_labels(ctx: LabelContext | contextvars.Context | None, labels: LabelSet) -> LabelContext:
    """Return a new context whose labels are ctx's merged with ``labels`` (Go: ``WithLabels``).

    For a key in both, the value from ``labels`` wins.  ``ctx`` is not
    changed; ``None`` means the current context.
    """
    add = check_set(labels)
    base = labels_of_ctx(ctx)
    return context_of(add if base is None else merge(base, add))


def label(ctx: LabelContext | contextvars.Context | None, key: str) -> tuple[str, bool]:
    """Return ``(value, True)`` for ``key`` in ctx's labels, else ``("", False)``.

    Go: ``pprof.Label``.
    """
    if not isinstance(key, str):
        raise TypeError(f"label key must be str, not {type(key).__name__}")
    ls = labels_of_ctx(ctx)
    if ls is not None:
        for k, v in ls.pairs:
            if k == key:
                return v, True
    return "", False


def for_labels(
    ctx: LabelContext | contextvars.Context | None, f: Callable[[str, str], object]
) -> None:
    """Call ``f(key, value)`` for each label of ctx, in key order (Go: ``ForLabels``).

    Stops when ``f`` returns a false value other than None: Go's callback
    must return a bool, a Python one that returns nothing visits every label.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, not {type(f).__name__}")
    ls = labels_of_ctx(ctx)
    if ls is None:
        return
    for k, v in ls.pairs:
        r = f(k, v)
        if r is not None and not r:
            break


@_own.calls_user_code
def do(
    ctx: LabelContext | contextvars.Context | None,
    labels: LabelSet,
    f: Callable[[LabelContext], _T],
) -> _T:
    """Call ``f(ctx2)`` with ``ctx2 = with_labels(ctx, labels)`` active (Go: ``pprof.Do``).

    Everything ``f`` runs carries ctx2's labels: samples, threads,
    greenlets and tasks it starts.  Returns what ``f`` returns.  Afterwards,
    also on an exception, the current labels are those of ``ctx``, as in Go
    (with ``ctx=None`` that is exactly what was active before).  ``f`` is
    called, not awaited: for coroutines use ``labeled``.
    """
    if type(labels) is not LabelSet:
        check_set(labels)
    old = current_get()
    base = old if ctx is None else labels_of_ctx(ctx)
    new = labels if base is None else merge(base, labels)
    frame = getframe()
    frame_labels[frame] = new
    current_set(new)
    try:
        return f(context_of(new))
    finally:
        frame_labels.pop(frame, None)
        current_set(base)
        if base is not old:
            _publish(base, getframe(1))


def set_goroutine_labels(ctx: LabelContext | contextvars.Context | None = None) -> None:
    """Replace the current unit's labels with ctx's (Go: ``SetGoroutineLabels``).

    The unit is the running task (asyncio, uvloop, trio, anyio), else the running greenlet, else
    the thread.  The change lasts until the innermost enclosing ``labeled``
    region or ``do`` call ends (which restores what was there before it),
    or for the unit's whole life when there is none.
    """
    new = labels_of_ctx(ctx)
    _state.activate()  # no label set made yet: the hooks that end registrations
    current_set(new)
    _publish(new, getframe(1))


# --- per-unit lookups ------------------------------------------------------------------------


def unit_labels(ident: int) -> LabelSet | None:
    """Labels of the unit running on thread ``ident`` when no frame on its stack says.

    Only plain greenlets that inherited labels at their first switch have
    some; threads, gevent greenlets and tasks carry theirs on a root frame.
    """
    return unit_labels_by_thread.get(ident)


def _publish(new: LabelSet | None, frame: FrameType | None) -> None:
    """Make the sampler see ``new`` for the running unit from ``frame`` on.

    Rewrites the innermost registered frame of the unit's stack (the region
    that restores what was there when it ends).  With none, registers the
    unit's root frame: a task's coroutine, a greenlet's first frame, the
    thread's bootstrap frame, or else its outermost frame (``_outermost``).
    """
    value = EMPTY if new is None else new
    task = running_task()
    root = task_root(task) if task is not None else None
    boot_code = _hooks.bootstrap_code
    f = frame
    bottom = boot = None
    while f is not None:
        if f in frame_labels:
            frame_labels[f] = value
            return
        if f is root:
            break
        if f.f_code is boot_code:
            boot = f
        bottom = f
        f = f.f_back
    if task is not None:
        if root is not None:
            forget_with_task(task, root)
            frame_labels[root] = value
        return
    g = _current_greenlet()
    if g is not None and g.parent is not None and bottom is not None:
        frame_labels[bottom] = value  # the greenlet's first frame (its f_back is None)
        _forget_with_greenlet(g, bottom)
        return
    if boot is not None:  # kept by our thread hook until the thread ends
        frame_labels[boot] = value
    elif bottom is not None:
        _register_outermost(bottom, value)


# OS thread ident -> the outermost frame ``_publish`` registered on that thread
# when it had no bootstrap frame of ours: a thread ``threading`` did not start
# (C code calling into Python: embedded servers, native callbacks) or started
# before our hook.  No hook unregisters those when the frame returns, and each
# holds the frame and its locals; so a thread's previous one is dropped when it
# registers another (it has returned: one still on the thread's stack would
# have been found registered), and those of threads running no Python code
# when a thread registers its first.
_outermost: dict[int, FrameType] = {}


def _register_outermost(frame: FrameType, value: LabelSet) -> None:
    ident = _hooks.real_get_ident()
    old = _outermost.get(ident)
    if old is None:
        running = set(sys._current_frames())  # idents only: the frames would make a cycle
        try:
            idents = list(_outermost)
        except RuntimeError:  # another thread changed it meanwhile: prune next time
            idents = []
        for other in idents:
            if other not in running:
                gone = _outermost.pop(other, None)
                if gone is not None:
                    frame_labels.pop(gone, None)
    elif old is not frame:
        frame_labels.pop(old, None)
    _outermost[ident] = frame
    frame_labels[frame] = value


# id(greenlet) -> what keeps its root frame's registration until it ends:
# the gevent greenlet itself (until its rawlink fires), or a weakref to it.
_greenlet_roots: dict[int, Any] = {}


def _forget_with_greenlet(g: Any, frame: FrameType) -> None:
    """Drop ``frame``'s registration when greenlet ``g`` ends (gevent) or goes away."""
    key = id(g)
    if key in _greenlet_roots:
        return
    rawlink = getattr(g, "rawlink", None)
    if rawlink is not None:  # gevent: right when it finishes
        _greenlet_roots[key] = g

        def finished(_g: object) -> None:
            frame_labels.pop(frame, None)
            _greenlet_roots.pop(key, None)

        rawlink(finished)
        return

    def gone(_ref: object) -> None:
        frame_labels.pop(frame, None)
        _greenlet_roots.pop(key, None)

    _greenlet_roots[key] = weakref.ref(g, gone)


def _current_greenlet() -> Any:
    """The running greenlet of this thread, or None (greenlet not imported)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None or not hasattr(greenlet, "getcurrent"):
        return None
    return greenlet.getcurrent()


def labels_of_greenlet(g: Any) -> LabelSet | None:
    """The labels of greenlet ``g`` (None: no label set), for the goroutine profile."""
    try:
        if g is _current_greenlet():
            return current_get()
        ctx = g.gr_context
    except (ValueError, AttributeError):  # running in another thread
        ctx = None
        frame = getattr(g, "gr_frame", None)
        while frame is not None:
            ls = frame_labels.get(frame)
            if ls is not None:
                return None if ls is EMPTY else ls
            frame = frame.f_back
    if ctx is not None:
        return ctx.get(current)  # type: ignore[no-any-return]
    ls = getattr(g, LABELS_ATTR, None)
    return ls if isinstance(ls, LabelSet) else None


def labels_of_task(task: Any) -> LabelSet | None:
    """The labels of an asyncio or trio ``task`` (None: no label set), for the goroutine profile."""
    if task is running_task():
        return current_get()
    context = getattr(task, "context", None)  # trio
    if isinstance(context, contextvars.Context):
        return context.get(current)
    get_context = getattr(task, "get_context", None)
    if get_context is not None:  # asyncio, Python 3.12+
        return get_context().get(current)  # type: ignore[no-any-return]
    # Older Pythons: the innermost registered frame along the await chain.
    found: LabelSet | None = None
    coro: Any = task.get_coro()
    seen = 0
    while coro is not None and seen < 1000:
        frame = coro_frame(coro)
        if frame is not None:
            ls = frame_labels.get(frame)
            if ls is not None:
                found = ls
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    return None if found is None or found is EMPTY else found
