"""Label inheritance: a new thread, task or greenlet starts with its creator's labels.

Go's goroutines inherit their creator's labels; here, hooks do it for each
way Python starts a unit of work:

* ``threading.Thread``: the labels active at ``start()``, for the thread's life;
* ``concurrent.futures`` executors: the labels active at ``submit()``;
* event-loop tasks (asyncio, uvloop, trio, anyio) and the worker threads
  of trio and anyio: see ``_tasks``;
* gevent's spawn callbacks: the labels active at ``start()``/``spawn()``;
* a greenlet switch tracer, in programs without gevent: a fresh plain
  greenlet takes the labels of the greenlet that first switches into it.

A unit that inherited labels has them registered on its root frame in
``frame_labels`` (a plain greenlet: in ``unit_labels_by_thread`` instead).  The hooks
go in the first time a label set is made (``_state.when_first_set``),
or when the module concerned is imported later (``_hooks.after_import``):
``import pyproperf`` imports none of these modules.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from pyproperf import _hooks
from pyproperf._labels import _state, _tasks
from pyproperf._labels._region import bind
from pyproperf._labels._state import (
    LabelSet,
    current,
    current_get,
    current_set,
    getframe,
)

__all__: list[str] = []

# Not from-imported: see _state.frame_labels.
frame_labels = _state.frame_labels
unit_labels_by_thread = _state.unit_labels_by_thread

_HOOK_MARK = "__pyproperf_hook__"
# Where a Thread (in its __dict__) or a greenlet keeps the labels it started with.
LABELS_ATTR = "_pyproperf_labels"
_MISSING: Any = object()


_get_ident = _hooks.real_get_ident


# --- activation ---------------------------------------------------------------------------


def _activate() -> None:
    """Install the inheritance hooks: now for loaded modules, at import for the others.

    Run once, by ``_state`` (``when_first_set``).
    """
    _hooks.on_thread_start(before=_thread_starting)
    _hooks.on_thread_run(_thread_running, _thread_done)
    for name, hook in _IMPORT_HOOKS.items():
        _hooks.after_import(name, functools.partial(_run_hook, hook))
    _hooks.at_fork_child(_after_fork_in_child)


def _run_hook(hook: Callable[[ModuleType], None], module: ModuleType) -> None:
    """Run one import hook; a module we cannot patch costs inheritance, never the import."""
    try:
        hook(module)
    except Exception as exc:  # pragma: no cover - a changed third-party module
        warnings.warn(
            f"pyproperf: label inheritance unavailable for {module.__name__}: {exc!r}",
            RuntimeWarning,
            stacklevel=2,
        )


def _after_fork_in_child() -> None:
    """Forget the per-thread state of threads that do not exist in the child."""
    me = _get_ident()
    for d in (unit_labels_by_thread, _traced):
        for ident in [i for i in d if i != me]:
            d.pop(ident, None)


# --- threading.Thread: the thread carries the labels active at start() for its life,
# registered on the bootstrap frame at the root of its stack.

def _thread_starting(thread: threading.Thread) -> None:
    """``Thread.start``: remember the labels active now (not for a pool's worker thread)."""
    ls = current_get()
    if ls is not None and not _is_pool_thread(thread):
        thread.__dict__[LABELS_ATTR] = ls


def _is_pool_thread(thread: threading.Thread) -> bool:
    pools = _state.pool_thread_classes
    if not pools:
        return False
    if type(thread) in pools:
        return True
    owner = getattr(thread.__dict__.get("_target"), "__self__", None)
    return owner is not None and type(owner) in pools


def _thread_running(thread: threading.Thread, frame: FrameType) -> bool:
    """In the new thread: apply them, registered on its root frame."""
    ls = thread.__dict__.get(LABELS_ATTR)
    if ls is not None:
        current_set(ls)
        frame_labels[frame] = ls
    return _greenlet_hooked and ensure_tracer()


def _thread_done(thread: threading.Thread, frame: FrameType, traced: bool) -> None:
    frame_labels.pop(frame, None)
    if traced:
        ident = _get_ident()
        _traced.pop(ident, None)
        unit_labels_by_thread.pop(ident, None)


# --- concurrent.futures: submitted work runs with the labels active at submit().


def _submit_with_labels(submit: Callable[..., Any]) -> Callable[..., Any]:
    """An executor's ``submit`` that binds the submitted callable to the active labels."""

    def submit_with_labels(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        ls = current_get()
        if ls is None:
            return submit(self, fn, *args, **kwargs)
        # The pool's own workers, started here, must not inherit the labels.
        current_set(None)
        try:
            return submit(self, bind(fn, ls), *args, **kwargs)
        finally:
            current_set(ls)

    return submit_with_labels


def _patch_submit(cls: type) -> None:
    _hooks.wrap_attribute(cls, "submit", _submit_with_labels, calls_user_code=True)


def _hook_thread_pool(module: ModuleType) -> None:
    _patch_submit(module.ThreadPoolExecutor)


def _hook_process_pool(module: ModuleType) -> None:
    _patch_submit(module.ProcessPoolExecutor)


# --- greenlet.  gevent (a spawn callback): a greenlet carries the labels active at
# start()/spawn(), registered on its first frame.  Plain greenlets have no
# creation hook: a per-thread switch tracer gives a fresh greenlet the labels
# of the greenlet that first switches into it, and publishes the running
# greenlet's as ``unit_labels_by_thread``.  A Python tracer costs every switch (even a
# no-op one slows gevent.sleep(0) by a third), so it runs only in programs
# without gevent, where plain greenlets are what there is.

_greenlet_hooked = False
_traced: dict[int, Any] = {}  # thread ident -> the tracer ours replaced


def _hook_greenlet(module: ModuleType) -> None:
    """greenlet was imported: the switch tracer goes into this thread and new threads."""
    global _greenlet_hooked  # noqa: PLW0603 - a one-shot flag, read at every thread start
    if not hasattr(module, "settrace"):  # pragma: no cover
        return
    _greenlet_hooked = True
    ensure_tracer()


def ensure_tracer(force: bool = False) -> bool:
    """Install the switch tracer in this thread (once); whether it is installed."""
    ident = _get_ident()
    if ident in _traced:
        return True
    greenlet = sys.modules.get("greenlet")
    if greenlet is None or not hasattr(greenlet, "settrace"):
        return False
    if "gevent" in sys.modules and not force:
        return False
    main = greenlet.getcurrent()
    while main.parent is not None:
        main = main.parent
    prev = greenlet.gettrace()
    _traced[ident] = prev
    greenlet.settrace(_make_tracer(prev, ident, main))
    return True


def remove_tracer() -> None:
    """Take our tracer out of this thread, if it is the one in place."""
    ident = _get_ident()
    greenlet = sys.modules.get("greenlet")
    if ident not in _traced or greenlet is None:
        return
    current = greenlet.gettrace()
    if getattr(current, _HOOK_MARK, False):
        greenlet.settrace(_traced.pop(ident))
        unit_labels_by_thread.pop(ident, None)


def _make_tracer(prev: Any, ident: int, main: Any) -> Callable[[str, Any], Any]:
    """Thread ``ident``'s switch tracer: publish the target's labels, then chain ``prev``."""
    unit = unit_labels_by_thread
    attr = LABELS_ATTR
    missing = _MISSING

    def on_switch(event: str, args: Any) -> Any:
        target = args[1]
        if target is main:
            unit.pop(ident, None)
        else:
            ls = target.__dict__.get(attr, missing)
            if ls is missing:
                ls = _first_switch(args[0], target)
            if ls is None:
                unit.pop(ident, None)
            else:
                unit[ident] = ls
        if prev is not None:
            return prev(event, args)
        return None

    setattr(on_switch, _HOOK_MARK, True)
    return on_switch


def _first_switch(origin: Any, target: Any) -> LabelSet | None:
    """Labels of a greenlet seen for the first time: inherited if it is just starting."""
    ls = None
    try:
        # On its very first switch a greenlet has no Python frame yet: the
        # tracer's caller frame is then None.
        if getframe(1).f_back is None and not _is_hub(target):
            ctx = origin.gr_context
            ls = ctx.get(current) if ctx is not None else None
            if ls is not None:
                current_set(ls)  # the tracer runs in the target greenlet's context
        target.__dict__[LABELS_ATTR] = ls
    except Exception:  # pragma: no cover - a greenlet we cannot inspect
        return None
    return ls


def _is_hub(g: Any) -> bool:
    """Whether ``g`` is a gevent hub (it never inherits labels)."""
    hub = sys.modules.get("gevent.hub")
    return hub is not None and isinstance(g, hub.Hub)


def _hook_gevent(module: ModuleType) -> None:
    """gevent was imported: label spawned greenlets; take this thread's tracer out."""
    module.Greenlet.add_spawn_callback(_on_gevent_spawn)
    remove_tracer()


def _on_gevent_spawn(g: Any) -> None:
    """At ``start()``, in the spawning greenlet: wrap the function with the active labels."""
    ls = current_get()
    g.__dict__[LABELS_ATTR] = ls
    if ls is not None:
        g._run = bind(g._run, ls)


_IMPORT_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    **_tasks.IMPORT_HOOKS,
    "concurrent.futures.thread": _hook_thread_pool,
    "concurrent.futures.process": _hook_process_pool,
    "greenlet": _hook_greenlet,
    "gevent.greenlet": _hook_gevent,
}

# The first label set made after this (EMPTY exists already) installs the hooks.
_state.when_first_set(_activate)
