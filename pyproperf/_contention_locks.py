"""Instrumented ``threading.Lock`` and ``RLock``.

``threading.Lock`` is a C lock that cannot be subclassed or patched, so
while a contention profile is on, ``threading.Lock`` (and the C RLock behind
``threading.RLock``) make these instead: a small object around a real lock.

* ``acquire``/``__enter__`` try the real lock without blocking; only when
  that fails (contention) is the wait timed and reported to the block
  profile, and the waiter registered for the mutex profile.
* ``release``/``__exit__`` release the real lock, then, if waiters are
  registered, charge their waiting to the releasing stack.

So the uncontended path is a Python call around each C call, whatever the
rates; with both profiles off the slow path is the real blocking acquire.
The classes never change after import, so enabling and disabling cost
nothing here (modifying a class again and again costs it its type version,
and with it specialization on Python 3.13, for the rest of the process).
"""

from __future__ import annotations

import _thread
import sys
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from pyproperf import _contention_state as _st

__all__ = ["Lock", "RLock"]

_get_ident = _thread.get_ident
_fresh_lock = _thread.allocate_lock


def _check_args(blocking: bool, timeout: float) -> None:
    """Raise what the real ``acquire(blocking, timeout)`` raises for bad arguments.

    A fresh lock is free, so the call returns at once when they are fine.
    """
    _fresh_lock().acquire(blocking, timeout)


class _Instrumented:
    """What Lock and RLock share: the real lock and bound methods to call."""

    __slots__ = ("__weakref__", "_free", "_raw", "_try", "_waiters")

    _raw_factory: Callable[[], Any] = _thread.allocate_lock

    def __init__(self) -> None:
        raw = self._raw_factory()
        self._raw = raw
        self._try = raw.acquire
        self._free = raw.release
        self._waiters: set[_st.Waiter] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout == -1:
            if self._try(False):
                return True
            if not blocking:
                return False
        else:
            _check_args(blocking, timeout)
            if self._try(False):
                return True
        return self._wait(timeout, sys._getframe(1), None)

    def __enter__(self) -> bool:
        if self._try(False):
            return True
        return self._wait(-1, sys._getframe(1), None)

    def release(self) -> None:
        self._free()
        if self._waiters:
            self._released(sys._getframe(1))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._free()
        if self._waiters:
            self._released(sys._getframe(1))

    def _wait(self, timeout: float, caller: FrameType, restore: Any) -> bool:
        """Block for the real lock, timing it; ``restore``: an RLock state to restore."""
        raw = self._raw
        brate = _st.block_rate
        mrate = _st.mutex_rate
        if brate <= 0 and mrate <= 0:
            if restore is not None:
                raw._acquire_restore(restore)
                return True
            return bool(self._try(True, timeout))
        t0 = _st.now()
        w = None
        ws = self._waiters
        if mrate > 0:
            w = _st.Waiter(t0)
            if ws is None:
                ws = self._waiters = set()
            ws.add(w)
        try:
            if restore is not None:
                raw._acquire_restore(restore)
                ok = True
            else:
                ok = self._try(True, timeout)
        finally:
            if w is not None and ws is not None:
                ws.discard(w)
        if brate > 0 and not _st.scope.active:
            _st.block_event(_st.now() - t0, caller)
        return bool(ok)

    def _released(self, caller: FrameType) -> None:
        """After a real release: charge the registered waiters' waiting to ``caller``."""
        ws = self._waiters
        if ws and _st.mutex_rate > 0:
            delay = _st.charge(ws)
            if delay:
                _st.mutex_event(delay, caller)

    # -- the rest of the lock API ---------------------------------------------

    def _at_fork_reinit(self) -> None:
        self._raw._at_fork_reinit()
        self._waiters = None

    def __repr__(self) -> str:
        return repr(self._raw)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle {type(self._raw).__name__!r} object")


class Lock(_Instrumented):
    """``threading.Lock`` while block or mutex profiling is on."""

    __slots__ = ()

    def locked(self) -> bool:
        return bool(self._raw.locked())

    def acquire_lock(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self.acquire(blocking, timeout))

    def release_lock(self) -> None:
        self.release()

    def locked_lock(self) -> bool:
        return bool(self._raw.locked())


class RLock(_Instrumented):
    """The C ``threading.RLock`` while block or mutex profiling is on.

    ``Condition`` uses ``_release_save``/``_acquire_restore``/``_is_owned``;
    they are here too, instrumented, so a Condition's wait and re-acquire are
    seen.  Waiters are charged only by the release that really frees the lock.
    """

    __slots__ = ()

    _raw_factory: Callable[[], Any] = _thread.RLock

    def release(self) -> None:
        self._free()
        if self._waiters and not self._raw._is_owned():
            self._released(sys._getframe(1))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._free()
        if self._waiters and not self._raw._is_owned():
            self._released(sys._getframe(1))

    def _release_save(self) -> Any:
        state = self._raw._release_save()
        if self._waiters:
            self._released(sys._getframe(1))
        return state

    def _acquire_restore(self, state: Any) -> None:
        raw = self._raw
        if _st.block_rate <= 0 and _st.mutex_rate <= 0:
            raw._acquire_restore(state)
            return
        count, owner = state
        if owner == _get_ident() and raw.acquire(False):
            for _ in range(count - 1):  # re-enter to the saved level: never blocks
                raw.acquire()
            return
        self._wait(-1, sys._getframe(1), state)

    def _is_owned(self) -> bool:
        return bool(self._raw._is_owned())

    if hasattr(_thread.RLock, "_recursion_count"):

        def _recursion_count(self) -> int:
            return int(self._raw._recursion_count())


_st.skip_codes.update(
    f.__code__
    for cls in (_Instrumented, Lock, RLock)
    for f in vars(cls).values()
    if hasattr(f, "__code__")
)
