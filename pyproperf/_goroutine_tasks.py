"""Suspended event-loop tasks for the goroutine profile: asyncio's (uvloop's too) and trio's.

A task that runs now is on its thread's stack, which the goroutine profile
lists as the thread; every other task of a running loop is listed here,
with its await chain as its stack and a Go-style state read from the chain:

* asyncio: every not-done task of asyncio's own registries whose loop is
  running (uvloop's tasks are asyncio's ``Task`` and registered there too);
* trio: every task of each run in progress.  trio keeps its runner in a
  thread-local, so runs are found on the threads' stacks: the frame of
  trio's ``unrolled_run`` holds it.  A run in guest mode (on top of another
  loop) is found only while one of its tasks runs.

Neither module is imported here: each is looked at only if the program has
imported it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from types import CodeType, FrameType
from typing import Any, NamedTuple

from pyproperf._stacks import MAX_DEPTH

__all__ = ["TaskView", "asyncio_tasks", "trio_tasks"]


class TaskView(NamedTuple):
    """One suspended task, as the goroutine profile lists it."""

    name: str
    state: str
    frames: list[FrameType]  # leaf first
    obj: Any  # the task


# -- what a waiting task waits for -----------------------------------------------------------
#
# The innermost function of the await chain that this table knows names the
# state, in Go's words: Go shows ``[chan receive]`` for a goroutine blocked
# receiving, ``[sync.Mutex.Lock]`` in a mutex, ``[IO wait]`` on the network
# poller.  Keys: (package, file, qualified name); 3.10 code objects have no
# qualified name, so the class comes from the frame's ``self``.

_WAIT_STATES: dict[tuple[str, str, str], str] = {
    ("asyncio", "tasks", "sleep"): "sleep",
    ("asyncio", "queues", "Queue.get"): "chan receive",
    ("asyncio", "queues", "Queue.put"): "chan send",
    ("asyncio", "locks", "Lock.acquire"): "sync.Mutex.Lock",
    ("asyncio", "locks", "Semaphore.acquire"): "semacquire",
    ("asyncio", "locks", "BoundedSemaphore.acquire"): "semacquire",
    ("asyncio", "locks", "Condition.wait"): "sync.Cond.Wait",
    ("asyncio", "locks", "Event.wait"): "chan receive",
    ("asyncio", "streams", "StreamReader._wait_for_data"): "IO wait",
    ("asyncio", "streams", "StreamWriter.drain"): "IO wait",
    ("trio", "_timeouts", "sleep"): "sleep",
    ("trio", "_timeouts", "sleep_until"): "sleep",
    ("trio", "_timeouts", "sleep_forever"): "sleep",
    ("trio", "_channel", "MemoryReceiveChannel.receive"): "chan receive",
    ("trio", "_channel", "MemorySendChannel.send"): "chan send",
    ("trio", "_sync", "Event.wait"): "chan receive",
    ("trio", "_sync", "_LockImpl.acquire"): "sync.Mutex.Lock",
    ("trio", "_sync", "Semaphore.acquire"): "semacquire",
    ("trio", "_sync", "CapacityLimiter.acquire"): "semacquire",
    ("trio", "_sync", "Condition.wait"): "sync.Cond.Wait",
    # A parent waiting for its children: Go's WaitGroup.Wait.
    ("trio", "_run", "Nursery._nested_child_finished"): "sync.WaitGroup.Wait",
    ("asyncio", "taskgroups", "TaskGroup._aexit"): "sync.WaitGroup.Wait",
    ("asyncio", "taskgroups", "TaskGroup.__aexit__"): "sync.WaitGroup.Wait",
}
# Functions known by name alone, in any module of the package.
_WAIT_NAMES: dict[tuple[str, str], str] = {
    ("trio", "wait_readable"): "IO wait",
    ("trio", "wait_writable"): "IO wait",
    ("asyncio", "sock_recv"): "IO wait",
    ("asyncio", "sock_recv_into"): "IO wait",
    ("asyncio", "sock_recvfrom"): "IO wait",
    ("asyncio", "sock_sendall"): "IO wait",
    ("asyncio", "sock_accept"): "IO wait",
    ("asyncio", "sock_connect"): "IO wait",
}
_places: dict[str, tuple[str, str] | None] = {}  # co_filename -> (package, file) or None


def _place(code: CodeType) -> tuple[str, str] | None:
    """(package, module file name) of asyncio's and trio's code; None for other code."""
    filename = code.co_filename
    try:
        return _places[filename]
    except KeyError:
        pass
    place = None
    for package in ("asyncio", "trio"):
        module = sys.modules.get(package)
        root = os.path.dirname(getattr(module, "__file__", None) or "")
        if root and filename.startswith(root + os.sep):
            place = (package, os.path.splitext(os.path.basename(filename))[0])
            break
    _places[filename] = place
    return place


def _qualname(frame: FrameType) -> str:
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)  # 3.11+
    if isinstance(qualname, str):
        return qualname
    self = frame.f_locals.get("self") if code.co_argcount else None
    if self is None:
        return code.co_name
    for cls in type(self).__mro__:  # the class that defines the method
        fn = cls.__dict__.get(code.co_name)
        if getattr(fn, "__code__", None) is code:
            return f"{cls.__name__}.{code.co_name}"
    return code.co_name


def wait_state(frames: Iterable[FrameType]) -> str:
    """Go's state for a task blocked with these frames (leaf first): "waiting" if none is known."""
    for frame in frames:
        place = _place(frame.f_code)
        if place is None:
            continue
        state = _WAIT_NAMES.get((place[0], frame.f_code.co_name))
        if state is None:
            state = _WAIT_STATES.get((*place, _qualname(frame)))
        if state is not None:
            return state
    return "waiting"


# -- await chains -----------------------------------------------------------------------------


def await_chain(coro: Any) -> tuple[list[FrameType], Any]:
    """Frames of a suspended coroutine's await chain, outermost first; and the leaf awaitable."""
    frames: list[FrameType] = []
    obj = coro
    while obj is not None and len(frames) <= MAX_DEPTH:
        frame = (
            getattr(obj, "cr_frame", None)
            or getattr(obj, "gi_frame", None)
            or getattr(obj, "ag_frame", None)
        )
        if frame is None:
            break
        frames.append(frame)
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            nxt = getattr(obj, "ag_await", None)
        obj = nxt
    return frames, obj


def _running(coro: Any) -> bool:
    return bool(getattr(coro, "cr_running", False) or getattr(coro, "gi_running", False))


def _not_started(coro: Any, frame: FrameType) -> bool:
    suspended = getattr(coro, "cr_suspended", None)  # 3.11+
    if suspended is None:
        suspended = getattr(coro, "gi_suspended", None)
    if suspended is not None:
        return not suspended
    return frame.f_lasti < 0  # 3.10


def _safe_done(fut: Any) -> bool:
    try:
        return bool(fut.done())
    except Exception:
        return False


def _copy(items: Iterable[Any]) -> list[Any]:
    """``list(items)`` of a collection other threads may change; [] if it never settles."""
    for _ in range(1000):
        try:
            return list(items)
        except RuntimeError:  # changed size while copying: another thread added one
            continue
    return []


# -- asyncio ----------------------------------------------------------------------------------


def _pending_asyncio() -> list[Any]:
    """Every not-done task of a running loop, from asyncio's own task registries."""
    mod = sys.modules.get("asyncio.tasks")
    if mod is None:
        return []
    found: dict[int, Any] = {}
    for attr in ("_all_tasks", "_scheduled_tasks"):  # WeakSets (3.10-3.11 / 3.12+)
        ws = getattr(mod, attr, None)
        data = getattr(ws, "data", None)
        if data is None:
            continue
        for r in _copy(data):
            t = r()
            if t is not None:
                found[id(t)] = t
    eager = getattr(mod, "_eager_tasks", None)  # 3.12+: tasks running eagerly
    if isinstance(eager, set):
        found.update((id(t), t) for t in _copy(eager))
    out = []
    for t in found.values():
        try:
            if not t.done() and t.get_loop().is_running():
                out.append(t)
        except Exception:  # a foreign task type without these methods
            continue
    return out


def asyncio_tasks() -> Iterator[TaskView]:
    """Every suspended task of every running asyncio (or uvloop) loop."""
    for t in _pending_asyncio():
        coro = t.get_coro()
        if coro is None or _running(coro):
            continue  # running now: it is on its thread's stack
        chain, leaf = await_chain(coro)
        frames = chain[::-1]
        if not chain or _not_started(coro, chain[0]):
            state = "runnable"
        elif leaf is None or _safe_done(leaf):
            state = "runnable"  # yielded to the loop, or what it awaits is done
        else:
            state = wait_state(frames)
        try:
            name = t.get_name()
        except Exception:
            name = type(t).__name__
        yield TaskView(name, state, frames, t)


# -- trio -------------------------------------------------------------------------------------


# trio's functions that hold the run's ``Runner`` in their local ``runner``:
# ``run`` (on the stack for the whole run, also while it waits for I/O) and the
# ``unrolled_run`` generator it drives (on the stack while a task runs; the one
# there in guest mode).
_RUNNER_HOLDERS = ("run", "unrolled_run")


def _trio_runners(stacks: Iterable[FrameType]) -> list[Any]:
    """The runner of each trio run on these threads' stacks (leaf frames)."""
    run = sys.modules.get("trio._core._run")
    if run is None:
        return []
    run_file = getattr(run, "__file__", None)
    runners: dict[int, Any] = {}
    for frame in stacks:
        f: FrameType | None = frame
        # isinstance: walking another thread's frames, ``f_back`` has been seen to give
        # an object that is no frame (``_stacks.capture``).
        while isinstance(f, FrameType):
            code = f.f_code
            if code.co_name in _RUNNER_HOLDERS and code.co_filename == run_file:
                runner = f.f_locals.get("runner")
                if runner is not None and hasattr(runner, "tasks"):
                    runners[id(runner)] = runner
                    break
            f = f.f_back
    return list(runners.values())


def trio_tasks(stacks: Iterable[FrameType]) -> Iterator[TaskView]:
    """Every suspended task of each trio run found on these threads' stacks."""
    for runner in _trio_runners(stacks):
        for t in _copy(runner.tasks):
            coro = getattr(t, "coro", None)
            if coro is None or _running(coro):
                continue
            chain, _leaf = await_chain(coro)
            frames = chain[::-1]
            # Scheduled to run (trio set what to send it), or never run yet.
            if getattr(t, "_next_send_fn", None) is not None or not chain:
                state = "runnable"
            else:
                state = wait_state(frames)
            name = getattr(t, "name", None)
            yield TaskView(name if isinstance(name, str) else type(t).__name__, state, frames, t)
