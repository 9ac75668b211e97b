"""Label inheritance for event-loop tasks: asyncio, uvloop, trio (anyio on either), and
the worker threads they hand blocking calls to.

A task created in a labelled region carries the region's labels for its
life: its context copy has them already (every one of these loops runs a
task's steps in the context it copied at creation, so ``label()`` works
without us).  What the hooks add is for the sampler, which cannot read that
context from a signal handler's or another thread's point of view: the
task's root coroutine frame is registered in ``frame_labels`` until the
task ends, and every sample taken inside the task finds it on the stack.

Where each loop creates its tasks, and what is wrapped there:

* asyncio: ``BaseEventLoop.create_task`` (``create_task``, ``ensure_future``,
  ``gather``, ``TaskGroup``, eager tasks; the task's end is a done-callback,
  its destruction unfinished a weak reference's callback);
* uvloop: its loop class ``uvloop.Loop`` is a Python subclass of the
  compiled loop, so its ``create_task`` is wrapped the same way;
* trio: ``Runner.spawn_impl``, through which every task is spawned (the
  main task, ``start_soon``, ``start``, system tasks; anyio's task groups
  on trio), and ``Runner.task_exited``, which ends the registration;
* worker threads: ``trio.to_thread.run_sync`` and ``anyio.to_thread.run_sync``
  (Starlette's and FastAPI's thread pool) run the function in a pooled
  thread under a copy of the caller's context; the function is bound to
  the labels (``_region.bind``) so that the worker registers them, and the
  pools' threads are listed in ``_state.pool_thread_classes``, so that they
  never inherit labels themselves.  ``asyncio.to_thread`` needs nothing
  here: it goes through an executor's ``submit`` (``_inherit``).

``running_task()`` says which task runs now, for ``set_goroutine_labels``,
and ``forget_with_task`` ends a registration made inside a task.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from pyproperf import _hooks
from pyproperf._labels import _state
from pyproperf._labels._region import bind
from pyproperf._labels._state import LabelSet, current, current_get

__all__ = ["IMPORT_HOOKS", "coro_frame", "forget_with_task", "running_task", "task_root"]

frame_labels = _state.frame_labels  # not from-imported: see _state

# trio task -> the root frame registered for it (trio tasks take no attributes);
# dropped by Runner.task_exited.
_trio_roots: dict[Any, FrameType] = {}
# Weak reference to an asyncio task -> the root frame registered for it.  The
# registration ends with the task: a done-callback drops it.  A task destroyed
# while still pending never runs its callbacks; the weak reference's callback
# drops it then.  (The weak reference alone is not enough: once the coroutine
# has finished, its frame object links to its caller's frame, which can hold
# the task, so a registration kept until the task is freed would keep it alive.)
_asyncio_roots: dict[weakref.ref[Any], FrameType] = {}


# --- frames of tasks --------------------------------------------------------------------


def coro_frame(coro: Any) -> Any:
    """The frame of a coroutine or generator-based coroutine (None once finished)."""
    return getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)


def task_root(task: Any) -> FrameType | None:
    """The frame of an asyncio or trio task's own coroutine: the root of its stack."""
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else getattr(task, "coro", None)
    frame = coro_frame(coro)
    return frame if isinstance(frame, FrameType) else None


def _asyncio_task_gone(ref: weakref.ref[Any]) -> None:
    """The weak reference's callback: the task was destroyed before it ended."""
    root = _asyncio_roots.pop(ref, None)
    if root is not None:
        frame_labels.pop(root, None)


def _asyncio_task_done(ref: weakref.ref[Any] | None, root: FrameType, _task: object) -> None:
    """The task's done-callback: the task ended."""
    if ref is not None:
        _asyncio_roots.pop(ref, None)
    frame_labels.pop(root, None)


def forget_with_task(task: Any, frame: FrameType) -> None:
    """Drop ``frame``'s registration when ``task`` (asyncio or trio) ends.

    Call it before registering: a Ctrl-C between the two must not leak it.
    """
    if hasattr(task, "get_coro"):  # asyncio, uvloop
        _forget_with_asyncio_task(task, frame)
    else:  # trio: Runner.task_exited, wrapped below
        _trio_roots[task] = frame


def _forget_with_asyncio_task(task: Any, frame: FrameType) -> None:
    ref: weakref.ref[Any] | None
    try:
        ref = weakref.ref(task, _asyncio_task_gone)
    except TypeError:  # a task class without weak references: at its end only
        ref = None
    else:
        _asyncio_roots[ref] = frame
    task.add_done_callback(functools.partial(_asyncio_task_done, ref, frame))


def running_task() -> Any:
    """The task running in this thread: trio's, else asyncio's (uvloop's too); None outside."""
    trio = sys.modules.get("trio.lowlevel")
    if trio is not None:
        try:
            return trio.current_task()
        except RuntimeError:  # no trio task runs in this thread
            pass
        except Exception:  # pragma: no cover - a changed trio
            pass
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        loop = asyncio.events._get_running_loop()
        return None if loop is None else asyncio.tasks.current_task(loop)
    except Exception:  # pragma: no cover - an exotic loop
        return None


# --- asyncio and uvloop: create_task ------------------------------------------------------


def _create_task_with_labels(create_task: Callable[..., Any]) -> Callable[..., Any]:
    """``create_task`` that registers a labelled task's root frame."""

    def create_task_with_labels(self: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        ls = current_get() if context is None else context.get(current)
        task = create_task(self, coro, *args, **kwargs)
        if ls is not None:
            _register_task(task, ls)
        return task

    return create_task_with_labels


def _register_task(task: Any, ls: LabelSet) -> None:
    """Register an asyncio ``task``'s root frame with ``ls`` until the task ends."""
    if task.done():
        return
    root = task_root(task)
    if root is None or root in frame_labels:
        return
    _forget_with_asyncio_task(task, root)
    frame_labels[root] = ls


def _hook_asyncio(module: ModuleType) -> None:
    # An eager task's first step runs inside create_task: user code.
    _hooks.wrap_attribute(
        module.BaseEventLoop, "create_task", _create_task_with_labels, calls_user_code=True
    )


def _hook_uvloop(module: ModuleType) -> None:
    _hooks.wrap_attribute(module.Loop, "create_task", _create_task_with_labels,
                          calls_user_code=True)


# --- trio: Runner.spawn_impl and Runner.task_exited ---------------------------------------


def _spawn_impl_with_labels(spawn_impl: Callable[..., Any]) -> Callable[..., Any]:
    """``Runner.spawn_impl`` that registers a labelled task's root frame until it exits."""
    roots = _trio_roots
    registry = frame_labels

    def spawn_impl_with_labels(self: Any, *args: Any, **kwargs: Any) -> Any:
        task = spawn_impl(self, *args, **kwargs)
        ls = task.context.get(current)
        if ls is not None:
            root = coro_frame(task.coro)
            if isinstance(root, FrameType) and root not in registry:
                roots[task] = root  # first: what ends the registration (Ctrl-C may land between)
                registry[root] = ls
        return task

    return spawn_impl_with_labels


def _task_exited_forgetting_labels(task_exited: Callable[..., Any]) -> Callable[..., Any]:
    """``Runner.task_exited`` that first drops the task's registration."""
    roots = _trio_roots
    registry = frame_labels

    def task_exited_forgetting_labels(self: Any, task: Any, outcome: Any) -> Any:
        root = roots.pop(task, None)
        if root is not None:
            registry.pop(root, None)
        return task_exited(self, task, outcome)

    return task_exited_forgetting_labels


def _hook_trio(module: ModuleType) -> None:
    # spawn_impl creates the task's coroutine: the user's async function is called there.
    _hooks.wrap_attribute(module.Runner, "spawn_impl", _spawn_impl_with_labels,
                          calls_user_code=True)
    _hooks.wrap_attribute(module.Runner, "task_exited", _task_exited_forgetting_labels,
                          calls_user_code=False)


# --- worker threads: trio's thread cache, anyio's workers on asyncio -----------------------
#
# Both run a job in a pooled thread under a copy of the caller's context; the
# hooks bind the job to the caller's labels, and the pools' threads are listed
# in ``_state.pool_thread_classes`` so that a thread started for one job does
# not inherit its labels for life.  The wrapped methods are the ones every
# path reaches at each call: trio's ``ThreadCache.start_thread_soon`` (behind
# ``trio.to_thread.run_sync``, ``trio.lowlevel.start_thread_soon``, guest
# mode's I/O thread, and anyio on trio), anyio's asyncio backend's
# ``run_sync_in_worker_thread`` (behind ``anyio.to_thread.run_sync``); so
# references taken before the hooks went in are covered too.


def _start_thread_soon_with_labels(start: Callable[..., Any]) -> Callable[..., Any]:
    """trio's ``ThreadCache.start_thread_soon(fn, ...)``, ``fn`` bound to the caller's labels."""

    def start_thread_soon_with_labels(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        ls = current_get()
        return start(self, fn if ls is None else bind(fn, ls), *args, **kwargs)

    return start_thread_soon_with_labels


def _run_in_worker_with_labels(run: Callable[..., Any]) -> Callable[..., Any]:
    """anyio's ``run_sync_in_worker_thread(func, ...)`` with ``func`` bound to the labels."""

    async def run_sync_in_worker_thread_with_labels(
        cls: Any, func: Any, /, *args: Any, **kwargs: Any
    ) -> Any:
        ls = current_get()
        return await run(cls, func if ls is None else bind(func, ls), *args, **kwargs)

    return run_sync_in_worker_thread_with_labels


def _hook_trio_threads(module: ModuleType) -> None:
    _state.pool_thread_classes.add(module.WorkerThread)  # the owner of its threads' target
    _hooks.wrap_attribute(module.ThreadCache, "start_thread_soon",
                          _start_thread_soon_with_labels, calls_user_code=True)


def _hook_anyio_asyncio(module: ModuleType) -> None:
    _state.pool_thread_classes.add(module.WorkerThread)
    _hooks.wrap_attribute(module.AsyncIOBackend, "run_sync_in_worker_thread",
                          _run_in_worker_with_labels, calls_user_code=True)


IMPORT_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "asyncio.base_events": _hook_asyncio,
    "uvloop": _hook_uvloop,
    "trio._core._run": _hook_trio,
    "trio._core._thread_cache": _hook_trio_threads,
    "anyio._backends._asyncio": _hook_anyio_asyncio,
}
