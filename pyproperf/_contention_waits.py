"""Wrapped waits: the pure-Python primitives of threading, queue and asyncio.

These classes are Python code, so their methods are wrapped at the class
level while a contention profile is on, which also covers objects made
before profiling started; ``uninstall`` puts the original functions back.

threading and queue (``install_threading``): only the two places where
their Python code really blocks are wrapped, ``Condition.wait`` and
``Thread.join``; ``Event.wait``, ``Semaphore``/``BoundedSemaphore.acquire``,
``Barrier.wait`` and ``queue.Queue`` (with Lifo/Priority) ``get``/``put``/
``join`` all wait in a ``Condition.wait``, so their fast paths run none of
our code.  Their methods' code is in ``_st.skip_codes``, so the recorded
stack starts at the user's ``q.get()``, not inside queue.py.  While a
wrapped wait runs, waits nested in it (re-acquiring the Condition's lock)
only report that they waited (``_st.scope``): one ``Condition.wait`` is one
event.

asyncio (``install_asyncio``): ``Lock.acquire``, ``Event.wait``,
``Condition.wait``, ``Semaphore.acquire``, ``Barrier.wait`` (3.11+),
``Queue.get``/``put``/``join``.  A call that cannot block (the lock is free,
the event set, the queue not empty) runs untouched; otherwise the coroutine
is driven through ``_Driver``, which starts the clock when the coroutine
first suspends, so a call that did not suspend records nothing.
``Lock.release`` charges the waiting of registered waiters to the releasing
stack for the mutex profile.  asyncio is never imported here: it is
patched when already imported, or right after its import (``_hooks.after_import``).
"""

from __future__ import annotations

import _thread
import functools
import inspect
import queue
import sys
import threading
from collections.abc import Callable, Coroutine, Generator
from types import FunctionType, ModuleType
from typing import Any

from pyproperf import _contention_state as _st

__all__ = ["install_asyncio", "install_threading", "uninstall"]

_AnyFn = Callable[..., Any]

# (class, attribute, original, wrapper) of everything patched.
_patched: list[tuple[type, str, object, object]] = []


def _own(fn: _AnyFn) -> _AnyFn:
    _st.skip_codes.add(fn.__code__)
    return fn


def _skip_class(cls: type) -> None:
    """Record the code of every function of ``cls`` as the primitive's own."""
    for value in vars(cls).values():
        fn = value.fget if isinstance(value, property) else value
        if isinstance(fn, FunctionType):
            _st.skip_codes.add(fn.__code__)


def _patch(cls: type, name: str, make: Callable[[_AnyFn], _AnyFn]) -> None:
    """Replace the function ``cls.<name>`` by ``make(original)``.

    It is replaced in the class that defines it (gevent's patched
    ``threading.Thread`` inherits ``join``), and left alone if none does.
    """
    owner = next((c for c in cls.__mro__ if isinstance(c.__dict__.get(name), FunctionType)), None)
    if owner is None:
        return
    orig = owner.__dict__[name]
    wrapper = functools.update_wrapper(make(orig), orig)
    setattr(owner, name, wrapper)
    _patched.append((owner, name, orig, wrapper))


def uninstall() -> None:
    """Put every original back (unless someone else has replaced our wrapper since)."""
    while _patched:
        cls, name, orig, wrapper = _patched.pop()
        if cls.__dict__.get(name) is wrapper:
            setattr(cls, name, orig)


# -- threading and queue --------------------------------------------------------------


def _timed(orig: _AnyFn, waits: Callable[[Any, Any], bool]) -> _AnyFn:
    """A wait that blocks whenever ``waits(self, timeout)`` (Condition.wait, Thread.join)."""

    @_own
    def wrapper(self: Any, timeout: Any = None) -> Any:
        if _st.block_rate <= 0:
            return orig(self, timeout)
        try:
            will_wait = waits(self, timeout)
        except Exception:  # a misuse: let the original raise its own error
            will_wait = False
        if not will_wait:
            return orig(self, timeout)
        sc = _st.scope
        if sc.active:
            return orig(self, timeout)
        sc.active = True
        t0 = _st.now()
        try:
            return orig(self, timeout)
        finally:
            sc.active = False
            _st.block_event(_st.now() - t0, sys._getframe(1))

    return wrapper


def _condition_waits(cond: Any, timeout: Any) -> bool:
    # Not owned: the original raises at once.  timeout <= 0: it only polls.
    return bool(cond._is_owned()) and (timeout is None or timeout > 0)


def _join_waits(thread: Any, timeout: Any) -> bool:
    return (
        thread.is_alive()
        and thread is not threading.current_thread()
        and (timeout is None or timeout > 0)
    )


def install_threading() -> None:
    """Wrap the waits of threading and queue."""
    for cls in (threading.Condition, threading.Semaphore, threading.BoundedSemaphore,
                threading.Event, threading.Barrier, queue.Queue):
        _skip_class(cls)
    for name in ("join", "_wait_for_tstate_lock"):
        fn = getattr(threading.Thread, name, None)
        if isinstance(fn, FunctionType):
            _st.skip_codes.add(fn.__code__)

    _patch(threading.Condition, "wait", lambda f: _timed(f, _condition_waits))
    _patch(threading.Thread, "join", lambda f: _timed(f, _join_waits))


# -- asyncio ------------------------------------------------------------------------


class _Depth(_thread._local):
    """Per thread: > 0 while a ``_Driver`` is stepping its coroutine."""

    depth = 0


_driving = _Depth()

_WAITERS = "_pyproperf_waiters"  # asyncio.Lock instance attribute: set of _st.Waiter


class _Driver:
    """Awaitable that steps a primitive's coroutine and times its suspension.

    ``record``: report a block event (False when nested in another driver's
    wait).  ``lock``: an asyncio.Lock to register with as a waiter (mutex).
    """

    __slots__ = ("_coro", "_lock", "_record")

    def __init__(self, coro: Coroutine[Any, Any, Any], lock: Any, record: bool) -> None:
        self._coro = coro
        self._lock = lock
        self._record = record

    # One function: a trampoline whose send/throw, timing and clean-up share its locals;
    # helpers would add calls to every step of every profiled asyncio wait.
    def __await__(self) -> Generator[Any, Any, Any]:  # noqa: PLR0912 - a trampoline
        coro = self._coro
        driving = _driving
        t0 = 0
        waiters: set[_st.Waiter] | None = None
        w = None
        value: Any = None
        exc: BaseException | None = None
        finished = False
        try:
            while True:
                driving.depth += 1
                try:
                    if exc is None:
                        y = coro.send(value)
                    else:
                        e, exc = exc, None
                        y = coro.throw(e)
                except StopIteration as stop:
                    finished = True
                    return stop.value
                except BaseException:
                    finished = True
                    raise
                finally:
                    driving.depth -= 1
                if not t0:
                    t0 = _st.now()
                    lock = self._lock
                    if lock is not None and _st.mutex_rate > 0:
                        waiters = lock.__dict__.setdefault(_WAITERS, set())
                        w = _st.Waiter(t0)
                        waiters.add(w)
                try:
                    value = yield y
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as e:  # thrown in (cancellation): pass it on
                    exc = e
                    value = None
        finally:
            if w is not None and waiters is not None:
                waiters.discard(w)
            if finished and t0 and self._record:
                _st.block_event(_st.now() - t0, sys._getframe(1))


_st.skip_codes.add(_Driver.__await__.__code__)


@_own
async def _drive(coro: Coroutine[Any, Any, Any], lock: Any, record: bool) -> Any:
    return await _Driver(coro, lock, record)


def _async_wait(orig: _AnyFn, cannot_block: Callable[[Any], bool], lock: bool = False) -> _AnyFn:
    """Wrap an ``async def`` wait; ``lock``: also register waiters for the mutex profile."""

    @_own
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        record = _st.block_rate > 0
        register = lock and _st.mutex_rate > 0
        if not (record or register):
            return orig(self, *args, **kwargs)
        try:
            fast = cannot_block(self)
        except AttributeError:  # a Python whose internals differ: drive it
            fast = False
        if fast:
            return orig(self, *args, **kwargs)
        if _driving.depth:  # nested in a driven wait, which records the time
            record = False
            if not register:
                return orig(self, *args, **kwargs)
        return _drive(orig(self, *args, **kwargs), self if register else None, record)

    mark = getattr(inspect, "markcoroutinefunction", None)
    return mark(wrapper) if mark is not None else wrapper


def _lock_release(orig: _AnyFn) -> _AnyFn:
    @_own
    def release(self: Any) -> None:
        orig(self)
        if _st.mutex_rate <= 0:
            return
        waiters = self.__dict__.get(_WAITERS)
        if waiters:
            delay = _st.charge(waiters)
            if delay:
                _st.mutex_event(delay, sys._getframe(1))

    return release


def _never(_: Any) -> bool:
    return False


def install_asyncio(asyncio: ModuleType) -> None:
    """Wrap the waits of an imported asyncio package."""
    locks = asyncio.locks
    queues = asyncio.queues
    for value in vars(locks).values():
        if isinstance(value, type) and value.__module__ == locks.__name__:
            _skip_class(value)
    _skip_class(queues.Queue)

    _patch(locks.Lock, "acquire",
           lambda f: _async_wait(f, lambda s: not s._locked and not s._waiters, lock=True))
    _patch(locks.Lock, "release", _lock_release)
    _patch(locks.Event, "wait", lambda f: _async_wait(f, lambda s: bool(s._value)))
    _patch(locks.Condition, "wait", lambda f: _async_wait(f, _never))
    _patch(locks.Semaphore, "acquire",
           lambda f: _async_wait(f, lambda s: s._value > 0 and not s._waiters))
    if hasattr(locks, "Barrier"):
        _patch(locks.Barrier, "wait", lambda f: _async_wait(f, _never))
    _patch(queues.Queue, "get", lambda f: _async_wait(f, lambda s: not s.empty()))
    _patch(queues.Queue, "put", lambda f: _async_wait(f, lambda s: not s.full()))
    _patch(queues.Queue, "join",
           lambda f: _async_wait(f, lambda s: s._unfinished_tasks == 0))
