"""Label values, and the three places that say which labels are active where.

Values: ``LabelSet`` (immutable sorted pairs; ``labels()`` builds one, with
caches so that ``labeled("k", "v")`` in a loop builds nothing) and
``LabelContext`` (Go's ``context.Context``, labels only).  ``merge`` is
Go's WithLabels merge, cached on the set being added.

Where they are active (the rest of the labels modules read and write these):

* ``current``: the ContextVar holding the running unit's label set (None:
  no labels).  asyncio tasks inherit it through their context copy.
* ``frame_labels``: live frame -> label set in force from that frame inward,
  for the sampler, which cannot read another thread's ContextVar.
* ``unit_labels_by_thread``: thread ident -> labels of the plain greenlet running on
  it, kept by ``_inherit``'s switch tracer.

This module imports no other labels module: ``_inherit`` arms
its installer (``when_first_set``) at import, so that making the first label set installs
its inheritance hooks.
"""

from __future__ import annotations

import contextvars
import itertools
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any, TypeVar

__all__ = ["EMPTY", "LabelContext", "LabelSet", "Pairs", "frame_labels", "labels"]

_T = TypeVar("_T")

Pairs = tuple[tuple[str, str], ...]

# Merges cached per label set (``labeled`` nested in ``labeled``), and
# label sets cached per argument tuple (``labeled("k", "v")`` in a loop).
_MERGE_CACHE_MAX = 64
_ARGS_CACHE_MAX = 4096


class LabelSet:
    """An immutable set of (key, value) string pairs, sorted by key (Go: ``pprof.LabelSet``).

    Build one with ``labels("k", "v", ...)``.  ``LabelSet(pairs)`` accepts
    any iterable of pairs (or a mapping) and normalises it the same way:
    sorted by key, the last value winning for a repeated key.  Equal sets
    compare and hash equal; iterating yields ``(key, value)`` pairs.
    """

    __slots__ = ("_ctx", "_hash", "_merged", "_uid", "pairs")

    pairs: Pairs
    _hash: int
    _uid: int  # never reused: keys the merge cache
    _merged: dict[int, LabelSet] | None  # base._uid -> base merged with self
    _ctx: LabelContext | None

    def __init__(self, pairs: Pairs | Mapping[str, str] | Any = ()) -> None:
        items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
        flat: list[object] = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"LabelSet pairs must be (key, value) tuples, got {item!r} at {i}")
            flat.extend(item)
        _init(self, _normalize(_check_strings(flat)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LabelSet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("LabelSet is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, LabelSet) and self.pairs == other.pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)

    def get(self, key: str, default: _T | None = None) -> str | _T | None:
        """The value for ``key``, or ``default``."""
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict[str, str]:
        """The pairs as a new dict, in key order."""
        return dict(self.pairs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self.pairs)
        return f"LabelSet({{{inner}}})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_from_pairs, (self.pairs,))

    def __copy__(self) -> LabelSet:
        return self

    def __deepcopy__(self, memo: object) -> LabelSet:
        return self


_uids = itertools.count()

# The inheritance hooks' installer, until it has run (``when_first_set``).
_on_first_set: Callable[[], None] | None = None
_first_set_lock = threading.Lock()


def when_first_set(install: Callable[[], None]) -> None:
    """Have ``install()`` run once, when the first label set is made after this call.

    ``_inherit`` hands over its hook installer at import (``EMPTY`` exists
    already): a program that never makes a label set gets no hooks.
    """
    global _on_first_set  # noqa: PLW0603 - a one-shot handoff; _init reads it per label set
    _on_first_set = install


def activate() -> None:
    """Run the installer now if it has not run (``set_goroutine_labels`` needs its hooks)."""
    # No noqa here: ruff's PLW0603 flags a ``global`` name given a plain (or augmented)
    # assignment, as in when_first_set, not one rebound by unpacking as below.
    global _on_first_set
    with _first_set_lock:
        install, _on_first_set = _on_first_set, None
    if install is not None:
        install()


def _init(ls: LabelSet, pairs: Pairs) -> None:
    """Fill in a new LabelSet (its slots are read-only once set); may install the hooks."""
    setter = object.__setattr__
    setter(ls, "pairs", pairs)
    setter(ls, "_hash", hash(pairs))
    setter(ls, "_merged", None)
    setter(ls, "_uid", next(_uids))
    setter(ls, "_ctx", None)
    if _on_first_set is not None:
        activate()


def _from_pairs(pairs: Pairs) -> LabelSet:
    """A LabelSet from pairs already normalised (sorted, unique keys, all str)."""
    ls = object.__new__(LabelSet)
    _init(ls, pairs)
    return ls


def _check_strings(kv: tuple[object, ...] | list[object]) -> list[str]:
    """The keys and values as plain str; TypeError naming the first that is not a str."""
    out: list[str] = []
    for i, x in enumerate(kv):
        if type(x) is not str:
            if not isinstance(x, str):
                what = "key" if i % 2 == 0 else "value"
                raise TypeError(
                    f"label {what} must be str, not {type(x).__name__} (argument {i}: {x!r})"
                )
            x = str.__str__(x)  # a str subclass (StrEnum...): keep the plain text
        out.append(x)
    return out


def _normalize(kv: list[str]) -> Pairs:
    """Go 1.27's Labels: sorted by key, the last value winning for a repeated key."""
    d: dict[str, str] = {}
    for i in range(0, len(kv), 2):
        d[kv[i]] = kv[i + 1]
    return tuple(sorted(d.items()))


# The empty set: a frame entry meaning "no labels from here inward".
EMPTY = _from_pairs(())

args_cache: dict[tuple[object, ...], LabelSet] = {}


def labels(*kv: str) -> LabelSet:
    """Return the label set of key/value pairs ``k1, v1, k2, v2, ...`` (Go: ``pprof.Labels``).

    Sorted by key; for a repeated key the last value wins (Go 1.27).  An odd
    number of arguments raises ``ValueError`` with Go's panic text; a key
    or value that is not a ``str`` raises ``TypeError``.
    """
    try:
        return args_cache[kv]
    except (KeyError, TypeError):  # TypeError: unhashable arguments, rejected below
        return labels_slow(kv)


def labels_slow(kv: tuple[object, ...]) -> LabelSet:
    """``labels(*kv)`` on a cache miss: check, build, and cache exact-str argument tuples."""
    if len(kv) % 2:
        raise ValueError("uneven number of arguments to pprof.Labels")
    ls = _from_pairs(_normalize(_check_strings(kv)))
    if len(args_cache) >= _ARGS_CACHE_MAX:
        args_cache.clear()
    # Only exact str arguments are cached, so a hit is always valid input.
    if all(type(x) is str for x in kv):
        args_cache[kv] = ls
    return ls


def merge(base: LabelSet, add: LabelSet) -> LabelSet:
    """Go's WithLabels merge: ``base`` updated with ``add``; the newer value wins.

    Never returns ``base`` itself (an equal copy instead): a region whose
    labels change nothing still registers a set of its own, which is how
    ``labeled`` tells "registered by me" from "registered before me".
    """
    cache = add._merged
    if cache is None:
        cache = {}
        object.__setattr__(add, "_merged", cache)
    else:
        hit = cache.get(base._uid)
        if hit is not None:
            return hit
    if not base.pairs and add is not base:
        out = add
    else:
        d = dict(base.pairs)
        d.update(add.pairs)
        out = _from_pairs(tuple(sorted(d.items())))
    if len(cache) >= _MERGE_CACHE_MAX:
        cache.clear()
    cache[base._uid] = out
    return out


# --- contexts -------------------------------------------------------------------------

# The label set of the running unit (thread, greenlet, task); None = no labels.
current: contextvars.ContextVar[LabelSet | None] = contextvars.ContextVar(
    "pyproperf_labels", default=None
)
current_get = current.get
current_set = current.set
current_reset = current.reset


class LabelContext:
    """An immutable context carrying a label set, or none (Go: ``context.Context``, labels only).

    ``LabelContext()`` is the empty background context.  Every ``ctx``
    parameter also takes ``None`` (the current context) or a
    ``contextvars.Context`` (the labels active in it).
    """

    __slots__ = ("_labels",)

    _labels: LabelSet | None

    def __init__(self, labels: LabelSet | None = None) -> None:
        if labels is not None and not isinstance(labels, LabelSet):
            raise TypeError(f"labels must be a LabelSet or None, not {type(labels).__name__}")
        object.__setattr__(self, "_labels", labels)

    @classmethod
    def current(cls) -> LabelContext:
        """The context of the running code: its active labels."""
        return context_of(current_get())

    @property
    def labels(self) -> LabelSet | None:
        """The label set, or None if this context has none."""
        return self._labels

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LabelContext is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelContext) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash((LabelContext, self._labels))

    def __repr__(self) -> str:
        if self._labels is None:
            return "LabelContext()"
        return f"LabelContext({self._labels!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (LabelContext, (self._labels,))


_BACKGROUND = LabelContext()


def context_of(ls: LabelSet | None) -> LabelContext:
    """The (cached) LabelContext of a label set."""
    if ls is None:
        return _BACKGROUND
    ctx = ls._ctx
    if ctx is None:
        ctx = object.__new__(LabelContext)
        object.__setattr__(ctx, "_labels", ls)
        object.__setattr__(ls, "_ctx", ctx)
    return ctx


def labels_of_ctx(ctx: LabelContext | contextvars.Context | None) -> LabelSet | None:
    """The labels of a ``ctx`` argument (None: the running code's); TypeError for other types."""
    if ctx is None:
        return current_get()
    if type(ctx) is LabelContext:
        return ctx._labels
    if isinstance(ctx, contextvars.Context):
        return ctx.get(current)
    if isinstance(ctx, LabelContext):
        return ctx._labels
    raise TypeError(
        f"ctx must be None, a LabelContext or a contextvars.Context, not {type(ctx).__name__}"
    )


def check_set(ls: object) -> LabelSet:
    """``ls`` itself if it is a LabelSet, else TypeError."""
    if not isinstance(ls, LabelSet):
        raise TypeError(f"labels must be a LabelSet (see labels()), not {type(ls).__name__}")
    return ls


# --- where the sampler looks ---------------------------------------------------------------

getframe = sys._getframe
# Live frame -> labels in force from that frame inward; the innermost registered
# frame on a stack wins.  Entries: ``labeled``/``do`` regions, and the root frame
# of a unit that inherited labels (thread bootstrap, greenlet, task coroutine).
# EMPTY as a value: "no labels", overriding frames further out.
#
# The other labels modules bind this and ``unit_labels_by_thread`` by assignment
# (``frame_labels = _state.frame_labels``), never ``from``-import
# them: CPython compiles ``name.pop(...)`` on a ``from``-imported name as an
# attribute load plus call (it assumes a module), not LOAD_METHOD, which
# costs a bound-method object per call on the hot paths.
frame_labels: dict[FrameType, LabelSet] = {}
register = frame_labels.setdefault

# Thread ident -> labels of the plain greenlet running on it (see _inherit).
unit_labels_by_thread: dict[int, LabelSet] = {}

# Classes of worker-pool threads (a ``Thread`` subclass, or the class whose
# bound method is the thread's target): such a thread serves every later job
# of its pool, so it never inherits the labels active when it was started; each
# job brings its own (``_region.bind``).  ``_tasks`` adds the pools it hooks.
pool_thread_classes: set[type] = set()
