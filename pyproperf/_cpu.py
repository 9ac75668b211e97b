"""CPU profiles for users: Go's start/stop, and ``cpu_profile`` sections.

The sampling itself is ``_sampler``'s; this module holds Go's
one-at-a-time ``start_cpu_profile`` slot, the context-manager and
decorator forms, and writing the results.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import IO, Any, TypeVar, cast

from pyproperf import _hooks, _io, _own
from pyproperf._sampler import CLOCKS, MAX_HZ, Collector, engine

__all__ = [
    "CPUProfile",
    "cpu_profile",
    "flush",
    "start_cpu_profile",
    "start_owned_cpu_profile",
    "stop_cpu_profile",
    "stop_owned_cpu_profile",
]

_F = TypeVar("_F", bound=Callable[..., Any])

# -- Go's API ---------------------------------------------------------------------------


class _Slot:
    """Go's one CPU-profile slot: ``profile``, the running one's collector and writer
    (None when none runs), guarded by ``lock``."""

    __slots__ = ("lock", "profile")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.profile: tuple[Collector, _io.BinaryWriter] | None = None


_go = _Slot()


def _after_fork_in_child() -> None:
    """A forked child profiles nothing until it asks: the parent's profiles stay the parent's."""
    _go.lock = threading.Lock()  # a thread of the parent may have held it
    _go.profile = None


_hooks.at_fork_child(_after_fork_in_child)


def _check_options(hz: object, clock: object) -> tuple[int, str]:
    if isinstance(hz, bool) or not isinstance(hz, int):
        raise TypeError(f"hz must be an int, not {type(hz).__name__}")
    if not 1 <= hz <= MAX_HZ:
        raise ValueError(f"hz must be between 1 and {MAX_HZ}, not {hz}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'cpu' or 'wall', not {clock!r}")
    return hz, str(clock)


def start_cpu_profile(
    w: IO[bytes] | _io.BinaryWriter, *, hz: int = 100, clock: str = "cpu"
) -> None:
    """Start a CPU profile of the whole process, written to ``w`` by ``stop_cpu_profile``.

    Port of Go's ``pprof.StartCPUProfile``.  ``w`` is a writable binary
    file object.  Differences from Go: ``hz`` is an argument (Go fixes 100
    Hz unless ``runtime.SetCPUProfileRate`` is called first), and
    ``clock="wall"`` samples every thread whether it runs or waits.
    Raises ``RuntimeError("cpu profiling already in use")`` while another
    ``start_cpu_profile`` runs (``cpu_profile`` sections may run alongside).
    """
    start_owned_cpu_profile(w, hz=hz, clock=clock)


def start_owned_cpu_profile(
    w: IO[bytes] | _io.BinaryWriter, *, hz: int = 100, clock: str = "cpu"
) -> object:
    """``start_cpu_profile`` that returns a token for ``stop_owned_cpu_profile``.

    For code that takes Go's one CPU-profile slot on someone's behalf (the
    HTTP ``/profile`` endpoint): stopping with the token never stops a
    profile somebody else started in the meantime.
    """
    hz, clock = _check_options(hz, clock)
    _io.check_writer(w)
    with _go.lock:
        if _go.profile is not None:
            raise RuntimeError("cpu profiling already in use")
        collector = Collector(hz, clock)
        engine.add(collector)
        _go.profile = (collector, w)
    return collector


def stop_cpu_profile() -> None:
    """Stop the profile started by ``start_cpu_profile`` and write it; no-op if none runs.

    Port of Go's ``pprof.StopCPUProfile``: returns once the whole profile is
    written and flushed.  ``w`` is left open.  The previous SIGPROF handler
    and interval timer are restored when no other section still samples.
    """
    stop_owned_cpu_profile(None)


def stop_owned_cpu_profile(token: object | None) -> bool:
    """Stop and write the running profile if ``token`` started it (any, for None)."""
    with _go.lock:
        if _go.profile is None or (token is not None and _go.profile[0] is not token):
            return False
        collector, w = _go.profile
        _go.profile = None
        engine.remove(collector)
    _io.write_all(w, collector.build())
    return True


class CPUProfile:
    """A CPU profile of a block (``with``) or of a function's calls (decorator).

    As a context manager it profiles the whole process while the block runs
    and writes ``target`` when the block ends, also when it raises.  As a
    decorator it accumulates the samples of every call (sync, ``async def``,
    generator functions), counting only stacks that run the function while
    a call is in progress; the file is written at interpreter exit and by
    ``write()`` / ``pyproperf.flush()``.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[bytes], hz: int, clock: str) -> None:
        self.hz, self.clock = _check_options(hz, clock)
        self.target = _io.open_target(target, "target")
        self._block: Collector | None = None
        self._function: Collector | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- with ------------------------------------------------------------------

    def __enter__(self) -> CPUProfile:
        with self._lock:
            if self._block is not None:
                raise RuntimeError("this cpu_profile block is already running")
            self._block = Collector(self.hz, self.clock)
        engine.add(self._block)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            collector, self._block = self._block, None
        if collector is not None:
            engine.remove(collector)
            _io.deliver(self.target, collector.build())

    # -- decorator -------------------------------------------------------------------

    def __call__(self, func: _F) -> _F:
        code = getattr(inspect.unwrap(func), "__code__", None)
        if not isinstance(code, CodeType):
            raise TypeError(f"cpu_profile can decorate Python functions, not {func!r}")
        if self._function is not None:
            raise RuntimeError("a cpu_profile object decorates one function; make one per function")
        collector = Collector(self.hz, self.clock, code)
        self._function = collector
        _sections.add(self)

        # The sampler runs only while a call is in progress: the first call
        # joins the engine, later ones resume it when no call was running.
        def enter() -> None:
            with self._lock:
                if engine.sampling:
                    # What this thread used before the call is not the call's.
                    engine.settle_current_thread()
                if collector.call_started():
                    if engine.feeds(collector):
                        engine.activity_changed()
                    else:
                        engine.add(collector)

        def leave() -> None:
            with self._lock:
                engine.settle_current_thread(collector.code)  # the call's last CPU
                if collector.call_ended():
                    engine.activity_changed()

        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(func):

            @_own.calls_user_code
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                enter()
                try:
                    return await func(*args, **kwargs)
                finally:
                    leave()

            wrapper = async_wrapper
        elif inspect.isgeneratorfunction(func):

            @_own.calls_user_code
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                enter()
                try:
                    return (yield from func(*args, **kwargs))
                finally:
                    leave()

            wrapper = gen_wrapper
        else:

            @_own.calls_user_code
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                enter()
                try:
                    return func(*args, **kwargs)
                finally:
                    leave()

            wrapper = sync_wrapper
        functools.update_wrapper(wrapper, func)
        setattr(wrapper, "cpu_profile", self)  # noqa: B010 - for wrapper.cpu_profile.write()
        return cast(_F, wrapper)

    def write(self) -> None:
        """Write what the decorated function's calls accumulated so far to ``target``."""
        collector = self._function
        if collector is None or os.getpid() != self._pid:
            return
        _io.deliver(self.target, collector.build(engine.snapshot(collector)))

    def close(self) -> None:
        """Write the decorator's profile one last time and stop sampling for it."""
        collector = self._function
        if collector is None:
            return
        engine.remove(collector)
        self.write()
        _sections.discard(self)


def cpu_profile(
    target: str | os.PathLike[str] | IO[bytes], *, hz: int = 100, clock: str = "cpu"
) -> CPUProfile:
    """Profile a block (``with cpu_profile("cpu.pb.gz"):``) or a function (``@cpu_profile(...)``).

    ``target`` is a path (written atomically) or a writable binary file.
    Sections may overlap each other and ``start_cpu_profile``; one sampler
    serves them all.
    """
    return CPUProfile(target, hz, clock)


_sections: weakref.WeakSet[CPUProfile] = weakref.WeakSet()


def flush() -> None:
    """Write every ``@cpu_profile`` function's profile now (they are also written at exit)."""
    for section in list(_sections):
        section.write()


def _at_exit() -> None:
    for section in list(_sections):
        try:
            section.close()
        except Exception as exc:  # at exit, a report beats a traceback
            print(f"pyproperf: could not write {section.target!r}: {exc}", file=sys.stderr)
    stop_cpu_profile_quietly()


_hooks.at_exit(_at_exit)


def stop_cpu_profile_quietly() -> None:
    """At exit: stop a forgotten ``start_cpu_profile`` so the handler is restored."""
    with _go.lock:
        if _go.profile is not None:
            collector, _ = _go.profile
            _go.profile = None
            engine.remove(collector)
