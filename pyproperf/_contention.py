"""The block and mutex profiles: Go's contention profiles for threads and asyncio.

``block`` records where threads (and asyncio tasks) wait on synchronisation:
the waiter's stack, ending at the user's call, with how often and how long
it waited.  ``mutex`` records, for contended locks, the waiting of others
charged to the stack of the holder where it releases the lock, as Go does.

Turning a profile on (``set_block_profile_rate``,
``set_mutex_profile_fraction``) installs the instrumentation; turning both
off removes it:

* ``threading.Lock`` and the C ``RLock`` behind ``threading.RLock`` make
  instrumented locks (``_contention_locks``) while on; locks made before
  cannot be seen (they are C objects).  Instrumented locks outlive the
  switch and keep working (an uncontended acquire costs one Python call).
* the waits of threading, queue and asyncio are wrapped at class level
  (``_contention_waits``), covering old objects too.  After ``MAX_UNWRAPS``
  on/off cycles the wrappers stay installed, idle, to spare the classes'
  type versions.

The registry reads the profiles through ``count(name)`` and
``render(name, debug)``.
"""

from __future__ import annotations

import _thread
import sys
from types import ModuleType
from typing import Any

from pyproperf import _contention_state as _st
from pyproperf import _hooks, _text
from pyproperf._builder import ProfileBuilder
from pyproperf._stacks import Resolver

__all__ = [
    "count",
    "render",
    "set_block_profile_rate",
    "set_mutex_profile_fraction",
]

NAMES = ("block", "mutex")

_config_lock = _thread.allocate_lock()

# Each wrap and unwrap modifies threading.Condition, threading.Thread and
# asyncio's classes, and Python 3.13 stops specializing code on a class
# modified about a thousand times.  After this many on/off cycles the
# wrappers stay (doing nothing while both profiles are off).
MAX_UNWRAPS = 250


class _Instrumentation:
    """What is installed, and what to undo; changed only under ``_config_lock``."""

    __slots__ = ("asyncio_wrapped", "hook_set", "installed", "saved_lock",
                 "threading_wrapped", "unwraps")

    def __init__(self) -> None:
        self.installed = False
        self.saved_lock: Any = None  # threading.Lock before we replaced it
        self.hook_set = False  # waiting for asyncio's import (_hooks.after_import)
        self.threading_wrapped = False
        self.asyncio_wrapped = False
        self.unwraps = 0  # wrappers taken out so far (at most MAX_UNWRAPS times)


_instr = _Instrumentation()


def _check_rate(rate: object, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise TypeError(f"{what} must be an int, not {type(rate).__name__}")
    return rate


def set_block_profile_rate(rate: int) -> None:
    """Control the block profile (Go's ``runtime.SetBlockProfileRate``).

    ``rate <= 0`` turns it off (the default); ``1`` records every blocking
    event; a larger ``rate`` (nanoseconds) records every wait at least that
    long and samples shorter ones with probability ``delay/rate``, counting
    each kept one ``rate/delay`` times with delay ``rate`` so totals stay
    unbiased.  Records are kept when the profile is turned off, as in Go.

    Covered: ``threading.Lock``/``RLock`` made while block or mutex profiling
    is on; ``Condition.wait``, ``Event.wait``, ``Semaphore``/
    ``BoundedSemaphore`` acquire, ``Barrier.wait``, ``Thread.join``,
    ``queue.Queue`` (and Lifo/Priority) ``get``/``put``/``join`` of any age;
    asyncio ``Lock``, ``Event``, ``Condition``, ``Semaphore``, ``Barrier``,
    ``Queue``.

    Differs from Go: Python has no CPU tick counter, so the rate is in
    nanoseconds and the profile says ``cycles/second=1000000000``; a stack
    ends at the caller's line (``q.get()``), not in the primitive (Go shows
    ``sync.(*Mutex).Lock``); C locks made before profiling was turned on,
    and C-level locks in general, are not seen.
    """
    rate = _check_rate(rate, "rate")
    with _config_lock:
        _st.block_rate = max(rate, 0)
        _reconfigure()


def set_mutex_profile_fraction(rate: int) -> int:
    """Control the mutex profile (Go's ``runtime.SetMutexProfileFraction``).

    ``0`` turns it off (the default); ``n`` records on average one in ``n``
    contended releases, scaled by ``n``; a negative ``rate`` only reads the
    current value.  Returns the previous value.

    A contended release is one of a ``threading.Lock``/``RLock`` (made while
    block or mutex profiling is on) or an ``asyncio.Lock`` that others were
    waiting for: their waiting since the previous release is charged to the
    releasing stack, which ends at the caller's ``release()`` or the end of
    its ``with`` block (Go shows ``sync.(*Mutex).Unlock``).  Differs from Go:
    C locks made before profiling was turned on are not seen.
    """
    rate = _check_rate(rate, "rate")
    with _config_lock:
        old = _st.mutex_rate
        if rate >= 0:
            _st.mutex_rate = rate
            _reconfigure()
        return old


def _reconfigure() -> None:
    on = _st.block_rate > 0 or _st.mutex_rate > 0
    if on and not _instr.installed:
        _install()
    elif not on and _instr.installed:
        _uninstall()


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    try:
        return monkey is not None and bool(monkey.is_module_patched("threading"))
    except Exception:  # pragma: no cover - an odd gevent
        return True


def _install() -> None:
    import threading

    # Loaded on first use, so that ``import pyproperf`` stays light.
    from pyproperf import _contention_locks as _locks
    from pyproperf import _contention_waits as _waits

    if not _gevent_patched():
        # Under gevent, threading's locks are gevent's: leave them alone.
        if threading.Lock in (_thread.allocate_lock, getattr(_thread, "LockType", None)):
            _instr.saved_lock = threading.Lock
            threading.Lock = _locks.Lock  # type: ignore[assignment]
        if getattr(threading, "_CRLock", None) is _thread.RLock:
            threading._CRLock = _locks.RLock  # type: ignore[attr-defined]
    if not _instr.threading_wrapped:
        _waits.install_threading()
        _instr.threading_wrapped = True
    if not _instr.asyncio_wrapped:
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and hasattr(asyncio, "queues") and hasattr(asyncio, "locks"):
            _wrap_asyncio(asyncio)
        elif asyncio is None and not _instr.hook_set:
            _instr.hook_set = True
            _hooks.after_import("asyncio", _asyncio_loaded)
    _instr.installed = True


def _wrap_asyncio(asyncio: ModuleType) -> None:
    from pyproperf import _contention_waits as _waits

    _waits.install_asyncio(asyncio)
    _instr.asyncio_wrapped = True


def _asyncio_loaded(asyncio: ModuleType) -> None:
    with _config_lock:
        _remove_hook()
        if _instr.installed and not _instr.asyncio_wrapped:
            _wrap_asyncio(asyncio)


def _remove_hook() -> None:
    if _instr.hook_set:
        _hooks.cancel_import_hook("asyncio", _asyncio_loaded)
        _instr.hook_set = False


def _uninstall() -> None:
    import threading

    from pyproperf import _contention_locks as _locks
    from pyproperf import _contention_waits as _waits

    if _instr.saved_lock is not None and threading.Lock is _locks.Lock:  # type: ignore[comparison-overlap]
        threading.Lock = _instr.saved_lock
    _instr.saved_lock = None
    if getattr(threading, "_CRLock", None) is _locks.RLock:
        threading._CRLock = _thread.RLock  # type: ignore[attr-defined]
    _remove_hook()
    if _instr.unwraps < MAX_UNWRAPS:
        _instr.unwraps += 1
        _waits.uninstall()
        _instr.threading_wrapped = _instr.asyncio_wrapped = False
    _instr.installed = False


# -- what the registry reads --------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"not a contention profile: {name!r}")


def count(name: str) -> int:
    """Go's ``Profile.Count`` for block/mutex: the number of records."""
    _check_name(name)
    return len(_st.block_records if name == "block" else _st.mutex_records)


def render(name: str, debug: int) -> bytes:
    """The whole ``block`` or ``mutex`` profile: gzipped proto, or Go's text for ``debug >= 1``.

    Records are sorted by delay, largest first, as Go sorts them.
    """
    _check_name(name)
    records = sorted(_st.snapshot(name), key=lambda r: -r[2])
    resolver = Resolver()
    if debug <= 0:
        b = ProfileBuilder(
            [("contentions", "count"), ("delay", "nanoseconds")],
            period_type=("contentions", "count"),
            period=1,
        )
        for key, n, delay in records:
            b.add(resolver.stack(key), [n, delay])
        return b.to_gzip()
    lines = ["--- contention:" if name == "block" else "--- mutex:", "cycles/second=1000000000"]
    if name == "mutex":
        lines.append(f"sampling period={_st.mutex_rate}")
    for key, n, delay in records:
        stack = resolver.stack(key)
        lines.append(f"{delay} {n} {_text.at_line(stack)}")
        lines.extend(_text.format_frames(stack))
        lines.append("")
    return _text.tabwrite(lines).encode("utf-8", "surrogateescape")
