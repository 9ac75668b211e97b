"""Named profiles: Go's ``Lookup``/``NewProfile``/``Profiles`` and ``Profile``.

Built-in profiles are ordinary ``Profile`` objects whose count and output
come from a source module (the sources never import the registry):

* ``goroutine``, ``threadcreate``: ``pyproperf._goroutine``
* ``heap``, ``allocs``: ``pyproperf._heap``
* ``block``, ``mutex``: ``pyproperf._contention``

Each source has ``count(name) -> int`` and ``render(name, debug) -> bytes``.

Custom profiles keep ``value -> stack`` and write a count profile.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from typing import Protocol

# The sources are light (_goroutine never imports asyncio or greenlet) and
# load with pyproperf: _goroutine's threadcreate hook records threads from
# import on.
from pyproperf import _contention, _goroutine, _heap, _io, _text
from pyproperf._builder import Frame
from pyproperf._stacks import Resolver, StackKey, stack_key

__all__ = [
    "CUSTOM_STACK_DEPTH",
    "Profile",
    "lookup",
    "new_profile",
    "profiles",
    "write_heap_profile",
]

# Go's Profile.Add keeps at most 32 frames; a deeper stack keeps its
# innermost 32 and ends in a "(truncated stack)" frame.
CUSTOM_STACK_DEPTH = 32


class _Source(Protocol):
    def count(self, name: str) -> int: ...

    def render(self, name: str, debug: int) -> bytes: ...


def lost_profile_event() -> None:
    """Stands for a stack that ``add`` could not record (``skip`` too large), as in Go."""


_LOST = Frame(
    f"{__name__}.lost_profile_event",
    __file__,
    lost_profile_event.__code__.co_firstlineno,
    lost_profile_event.__code__.co_firstlineno,
)

_CONSTRUCT = object()


class Profile:
    """A named collection of stacks, like Go's ``pprof.Profile``.

    Get one from ``lookup(name)`` or ``new_profile(name)``; do not
    instantiate it yourself.  Thread-safe.
    """

    __slots__ = ("__weakref__", "_lock", "_name", "_source", "_values")

    def __init__(self, name: str, source: _Source | None = None, *, _token: object = None) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("use pyproperf.new_profile(name) or pyproperf.lookup(name)")
        self._name = name
        self._source = source  # module of a built-in profile; None for custom ones
        self._lock = threading.Lock()
        self._values: dict[object, StackKey] = {}

    def __repr__(self) -> str:
        return f"<pyproperf.Profile {self._name!r}>"

    def name(self) -> str:
        """The profile's name (Go's ``Profile.Name``)."""
        return self._name

    def count(self) -> int:
        """Go's ``Profile.Count``: the number of records the profile would write.

        goroutine: live units (threads, greenlets, tasks); threadcreate:
        threads started; heap/allocs: stack buckets; block/mutex: records;
        custom: values currently added.
        """
        if self._source is not None:
            return self._source.count(self._name)
        with self._lock:
            return len(self._values)

    def add(self, value: object, skip: int = 0) -> None:
        """Record the caller's stack under ``value`` (Go's ``Profile.Add``).

        ``skip`` counts frames as Go's does: ``skip=0`` starts the stack with
        the frame of ``add`` itself (Go shows ``(*Profile).Add`` there),
        ``skip=1`` at the function that called ``add``, ``skip=2`` at its
        caller.  At most 32 frames are kept; if ``skip`` passes the root, the
        stack is the single frame ``lost_profile_event``.  ``value`` must be
        hashable and is kept alive until ``remove(value)``; equal values
        (``1 == 1.0``) are the same value.

        Raises ValueError for a built-in profile (``pprof: Add called on
        built-in Profile NAME``) or a value already present (``pprof:
        Profile.Add of duplicate value``), TypeError for an unhashable value.
        """
        if self._source is not None:
            raise ValueError(f"pprof: Add called on built-in Profile {self._name}")
        _check_hashable(value, "add")
        if not isinstance(skip, int):
            raise TypeError(f"skip must be an int, not {type(skip).__name__}")
        if skip < 0:
            raise ValueError(f"skip must be >= 0, not {skip}")
        frame = sys._getframe(0)
        for _ in range(skip):
            if frame is None:
                break
            frame = frame.f_back  # type: ignore[assignment]
        stack = stack_key(frame, CUSTOM_STACK_DEPTH)
        with self._lock:
            if value in self._values:
                raise ValueError("pprof: Profile.Add of duplicate value")
            self._values[value] = stack

    def remove(self, value: object) -> None:
        """Forget ``value`` (Go's ``Profile.Remove``); nothing happens if it is absent.

        A no-op on built-in profiles, as in Go.  TypeError for an unhashable value.
        """
        _check_hashable(value, "remove")
        with self._lock:
            self._values.pop(value, None)

    def write_to(self, w: object, debug: int = 0) -> None:
        """Write the profile to ``w`` (Go's ``Profile.WriteTo``).

        ``w`` is a binary file object (or a path, replaced atomically).
        ``debug=0`` (or below) writes the gzipped profile.proto; ``debug=1``
        Go's legacy text with ``#`` frame comments; ``debug=2`` for goroutine
        one traceback per unit (other profiles print their debug=1 text).
        The whole output is built first and written at once: a closed,
        read-only or text-mode ``w`` raises (TypeError/ValueError) before
        anything is written, and a failing write raises its OSError.
        """
        if isinstance(debug, bool) or not isinstance(debug, int):
            raise TypeError(f"debug must be an int, not {type(debug).__name__}")
        target = _io.open_target(w, "w")
        data = self.render(debug)
        _io.deliver(target, data)

    def render(self, debug: int = 0) -> bytes:
        """The bytes ``write_to(w, debug)`` writes (pyproperf only; not in Go)."""
        if self._source is not None:
            return self._source.render(self._name, debug)
        with self._lock:
            stacks = list(self._values.values())
        resolver = Resolver()
        records = [(_resolve(resolver, key), None, n) for key, n in Counter(stacks).items()]
        return _text.render_count_profile(self._name, records, debug)


def _resolve(resolver: Resolver, key: StackKey) -> list[Frame]:
    """Frames of a custom-profile stack; ``add``'s own frame stays (skip=0, as Go shows Add)."""
    if not key:
        return [_LOST]
    frames = resolver.stack(key)  # leaves out pyproperf's frames...
    if key[0] is _ADD_CODE:  # ...but skip=0 starts with add itself, as in Go
        frames.insert(0, resolver.frame(_ADD_CODE, key[1]))  # type: ignore[arg-type]
    return frames


_ADD_CODE = Profile.add.__code__


def _check_hashable(value: object, what: str) -> None:
    try:
        hash(value)
    except TypeError as exc:
        raise TypeError(
            f"pprof: Profile.{what} value must be hashable (a dict key), not {type(value).__name__}"
        ) from exc


# -- the registry --------------------------------------------------------------------

_registry_lock = threading.Lock()
_profiles: dict[str, Profile] = {
    name: Profile(name, source, _token=_CONSTRUCT)
    for name, source in (
        ("goroutine", _goroutine),
        ("threadcreate", _goroutine),
        ("heap", _heap),
        ("allocs", _heap),
        ("block", _contention),
        ("mutex", _contention),
    )
}


def lookup(name: str) -> Profile | None:
    """The profile called ``name``, or None (Go's ``pprof.Lookup``).

    Built-ins: ``goroutine``, ``threadcreate``, ``heap``, ``allocs``,
    ``block``, ``mutex``; plus every profile made by ``new_profile``.
    """
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a str, not {type(name).__name__}")
    with _registry_lock:
        return _profiles.get(name)


def new_profile(name: str) -> Profile:
    """Create and register a custom profile (Go's ``pprof.NewProfile``).

    By convention the name has no spaces and starts with a package path
    (``"myapp.sockets"``).  Raises ValueError for an empty name (``pprof:
    NewProfile with empty name``) or one in use, built-ins included
    (``pprof: NewProfile name already in use: NAME``).
    """
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a str, not {type(name).__name__}")
    if name == "":
        raise ValueError("pprof: NewProfile with empty name")
    with _registry_lock:
        if name in _profiles:
            raise ValueError(f"pprof: NewProfile name already in use: {name}")
        p = _profiles[name] = Profile(name, _token=_CONSTRUCT)
    return p


def profiles() -> list[Profile]:
    """All profiles, built-in and custom, sorted by name (Go's ``pprof.Profiles``)."""
    with _registry_lock:
        return [_profiles[name] for name in sorted(_profiles)]


def write_heap_profile(w: _io.BinaryWriter | str | os.PathLike[str]) -> None:
    """``lookup("heap").write_to(w, 0)`` (Go's ``pprof.WriteHeapProfile``)."""
    _profiles["heap"].write_to(w, 0)
