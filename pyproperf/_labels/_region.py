"""``labeled``: a labelled region, as a context manager or a decorator (Go: ``pprof.Do``).

Entering merges the region's labels into the running unit's (the ContextVar)
and registers the caller's frame in ``frame_labels`` for the sampler;
leaving restores both exactly, also on exceptions.  A decorated function,
coroutine, generator or async generator gets the same around its body (a
generator: around each step it runs, never the consumer's code between).

Every way into a region goes through one pair, ``_enter`` and ``_leave``;
``labeled.__enter__``/``__exit__``, the hot path, inline the same steps
(``tests/test_labels.py`` holds the two to the same results).  Merges are
cached on the label set being added.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from types import FrameType, TracebackType
from typing import Any, TypeVar

from pyproperf import _own
from pyproperf._labels import _state
from pyproperf._labels._state import (
    LabelSet,
    args_cache,
    current_get,
    current_reset,
    current_set,
    getframe,
    labels_slow,
    merge,
    register,
)

__all__ = ["Bound", "bind", "labeled"]

frame_labels = _state.frame_labels  # not from-imported: see _state

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class _Ready:
    """An awaitable that is already done (``async with labeled(...)``)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover


_MISSING_VALUE = contextvars.Token.MISSING

# One entry of a region: (frame, token, what the frame had registered before).
_Entry = tuple[FrameType, "contextvars.Token[LabelSet | None]", "LabelSet | None"]
_MULTI: Any = ("several entries",)


def _restore(token: contextvars.Token[LabelSet | None]) -> None:
    """Set the ContextVar back by value: the region is left in another context than it was
    entered in (a generator finished by another task), where the token cannot reset it."""
    old = token.old_value
    current_set(None if old is _MISSING_VALUE else old)


def _enter(add: LabelSet, f: FrameType) -> _Entry:
    """Enter a region adding ``add`` whose code runs in frame ``f``: the one implementation.

    Merges ``add`` into the active labels (the ContextVar) and registers
    ``f`` with the result for the sampler, remembering what ``f`` had
    registered before (a region around this one in the same frame).  Every
    way in -- ``async with``, the decorators' wrappers, each generator step,
    ``Bound`` -- goes through here; ``labeled.__enter__``/``__exit__`` inline
    the same steps, because a ``with`` block is the hot path (two calls
    fewer is about 20 % of its cost).
    """
    old = current_get()
    new = add if old is None else merge(old, add)
    token = current_set(new)
    prev: LabelSet | None = register(f, new)
    if prev is new:  # f was not registered (``merge`` never returns old)
        prev = None
    else:
        frame_labels[f] = new
    return (f, token, prev)


def _leave(entry: _Entry) -> None:
    """Leave a region entered with ``_enter``: restore the ContextVar and ``f``'s entry exactly."""
    f, token, prev = entry
    try:
        current_reset(token)
    except ValueError:
        _restore(token)
    if prev is None:
        frame_labels.pop(f, None)
    else:
        frame_labels[f] = prev


class labeled:
    """Run a block or a function with extra labels (Go: ``pprof.Do`` as a context manager).

    ``with labeled("endpoint", "/users"):``, ``async with labeled(...)``, or
    ``@labeled("job", "resize")`` on a function, ``async def`` function,
    generator or async generator.  The labels merge into the current ones
    (the newer value wins) for everything the code runs; leaving restores
    exactly what was active before, also on exceptions.  Takes key/value
    strings (as ``labels``), or one ``LabelSet`` or mapping.

    One object may be entered again while active (nesting, concurrent
    tasks or greenlets), but not by several threads at once: write
    ``with labeled(...)`` where you use it (the arguments are cached, so
    that is cheap).  Decorated generators apply the labels to each step
    they run, never to the consumer's code between steps.
    """

    __slots__ = ("_more", "_set", "_st")

    current_set: LabelSet
    _st: _Entry | None
    _more: list[_Entry]

    def __init__(self, *kv: Any) -> None:
        try:
            self._set = args_cache[kv]
        except (KeyError, TypeError):
            self._set = _labeled_arg(kv)
        self._st = None

    @property
    def labels(self) -> LabelSet:
        """The labels this region adds."""
        return self._set

    def __repr__(self) -> str:
        return f"labeled({self._set!r})"

    def __enter__(self) -> LabelSet:
        old = current_get()
        new: LabelSet | None
        if old is None:
            new = self._set
        else:  # nested: the merge is cached on our set, keyed by the outer set
            cache = self._set._merged
            new = cache.get(old._uid) if cache is not None else None
            if new is None:
                new = merge(old, self._set)
        token = current_set(new)
        f = getframe(1)
        prev: LabelSet | None = register(f, new)
        if prev is new:  # f was not registered (``merge`` never returns old)
            prev = None
        else:  # a region around this one in the same frame
            frame_labels[f] = new
        if self._st is None:
            self._st = (f, token, prev)
        else:
            self._push((f, token, prev))
        return new

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        st = self._st
        if st is _MULTI:
            st = self._pop(getframe(1))
        else:
            self._st = None
        f, token, prev = st  # type: ignore[misc]
        try:
            current_reset(token)
        except ValueError:
            _restore(token)
        if prev is None:
            try:
                del frame_labels[f]
            except KeyError:
                pass
        else:
            frame_labels[f] = prev

    def __aenter__(self) -> _Ready:
        entry = _enter(self._set, getframe(1))
        if self._st is None:
            self._st = entry
        else:
            self._push(entry)
        return _Ready(current_get())

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> _Ready:
        st = self._st
        if st is _MULTI:
            st = self._pop(getframe(1))
        else:
            self._st = None
        _leave(st)  # type: ignore[arg-type]
        return _Ready(None)

    def _push(self, entry: _Entry) -> None:
        if self._st is _MULTI:
            self._more.append(entry)
        else:
            self._more = [self._st, entry]  # type: ignore[list-item]
            self._st = _MULTI

    def _pop(self, f: FrameType) -> _Entry:
        """The newest entry made in frame ``f`` (entries of other frames interleave)."""
        more = self._more
        for i in range(len(more) - 1, -1, -1):
            if more[i][0] is f:
                entry = more.pop(i)
                break
        else:  # pragma: no cover - exit without a matching enter
            raise RuntimeError("labeled region left from a frame that did not enter it")
        if len(more) == 1:
            self._st = more.pop()
        elif not more:  # pragma: no cover - only when misused from several threads at once
            self._st = None
        return entry

    def __call__(self, func: _F) -> _F:
        if not callable(func):
            raise TypeError(f"labeled(...) decorates a callable, not {type(func).__name__}")
        ls = self._set
        if inspect.isasyncgenfunction(func):
            return _wrap_asyncgen(func, ls)  # type: ignore[no-any-return]
        if inspect.isgeneratorfunction(func):
            return _wrap_gen(func, ls)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):
            return _wrap_coro(func, ls)  # type: ignore[return-value]
        return _wrap_sync(func, ls)  # type: ignore[return-value]


class Bound:
    """``fn`` called with a label set merged into the caller's, for a unit run elsewhere.

    What an inheritance hook hands to code that runs ``fn`` later in another
    thread or greenlet (executor jobs, gevent greenlets, worker threads of
    trio and anyio): ``labeled(ls)(fn)`` that can be pickled (process pools)
    and that hooks can recognise, so that work passed through two hooked
    layers is bound once.  Each call registers its own frame for the sampler.
    """

    __slots__ = ("fn", "labels")

    def __init__(self, fn: Callable[..., Any], labels: LabelSet) -> None:
        self.fn = fn
        self.labels = labels

    @_own.calls_user_code
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        entry = _enter(self.labels, getframe())
        try:
            return self.fn(*args, **kwargs)
        finally:
            _leave(entry)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Bound, (self.fn, self.labels))

    def __getattr__(self, name: str) -> Any:
        # Introspection (__name__, __qualname__, __code__, __self__) sees fn.
        if name in ("fn", "labels"):
            raise AttributeError(name)
        return getattr(self.fn, name)

    def __repr__(self) -> str:
        return f"<{self.fn!r} with {self.labels!r}>"


def bind(fn: Callable[..., Any], ls: LabelSet) -> Callable[..., Any]:
    """``fn`` bound to ``ls`` (``fn`` itself when a hook further out already bound it to ``ls``)."""
    if type(fn) is Bound and fn.labels is ls:
        return fn
    return Bound(fn, ls)


def _labeled_arg(kv: tuple[Any, ...]) -> LabelSet:
    """The label set ``labeled(*kv)`` adds: one LabelSet or mapping, or key/value strings."""
    if len(kv) == 1:
        (arg,) = kv
        if isinstance(arg, LabelSet):
            return arg
        if isinstance(arg, Mapping):
            return LabelSet(arg)
    return labels_slow(kv)


def _wrap_sync(func: Callable[..., _T], ls: LabelSet) -> Callable[..., _T]:
    """``func`` called with ``ls`` merged into the caller's labels."""
    @functools.wraps(func)
    @_own.calls_user_code
    def labeled_call(*args: Any, **kwargs: Any) -> _T:
        entry = _enter(ls, getframe())
        try:
            return func(*args, **kwargs)
        finally:
            _leave(entry)

    return labeled_call


def _wrap_coro(func: Callable[..., Any], ls: LabelSet) -> Callable[..., Any]:
    """``async def`` ``func`` awaited with ``ls`` merged into the awaiting task's labels."""
    @functools.wraps(func)
    @_own.calls_user_code
    async def labeled_coro(*args: Any, **kwargs: Any) -> Any:
        entry = _enter(ls, getframe())
        try:
            return await func(*args, **kwargs)
        finally:
            _leave(entry)

    return labeled_coro


def _wrap_gen(func: Callable[..., Generator[Any, Any, Any]], ls: LabelSet) -> Callable[..., Any]:
    """Generator ``func`` with ``ls`` merged into the labels of whoever resumes each step."""
    @functools.wraps(func)
    @_own.calls_user_code
    def labeled_gen(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        gen = func(*args, **kwargs)
        frame = getframe()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            entry = _enter(ls, frame)
            try:
                value = gen.send(sent) if thrown is None else gen.throw(thrown)
            except StopIteration as stop:
                return stop.value
            finally:
                _leave(entry)
                thrown = None
            try:
                sent = yield value
            except GeneratorExit:
                entry = _enter(ls, frame)  # close() runs as one more labelled step
                try:
                    gen.close()
                finally:
                    _leave(entry)
                raise
            except BaseException as exc:  # forwarded into the generator
                thrown = exc

    return labeled_gen


def _wrap_asyncgen(func: Callable[..., AsyncGenerator[Any, Any]], ls: LabelSet) -> Any:
    """Async generator ``func`` with ``ls`` merged into the labels of each step's awaiter."""
    @functools.wraps(func)
    @_own.calls_user_code
    async def labeled_asyncgen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        agen = func(*args, **kwargs)
        frame = getframe()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            entry = _enter(ls, frame)
            try:
                if thrown is None:
                    value = await agen.asend(sent)
                else:
                    value = await agen.athrow(thrown)
            except StopAsyncIteration:
                return
            finally:
                _leave(entry)
                thrown = None
            try:
                sent = yield value
            except GeneratorExit:
                entry = _enter(ls, frame)  # aclose() runs as one more labelled step
                try:
                    await agen.aclose()
                finally:
                    _leave(entry)
                raise
            except BaseException as exc:  # forwarded into the generator
                thrown = exc

    return labeled_asyncgen
