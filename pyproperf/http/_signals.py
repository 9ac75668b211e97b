"""SIGINT and SIGTERM end the ASGI app's waiting ``/profile`` and delta requests.

uvicorn answers Ctrl-C (SIGINT) or SIGTERM by closing its listening
sockets and then waiting, without a limit by default, for every request
in flight; the ASGI ``lifespan.shutdown`` event comes only after that.
No ASGI event tells an app earlier that the server is stopping, so a
``/profile?seconds=300`` held shutdown for up to five minutes.

So while a wait runs on the main thread's event loop, that thread's
SIGINT and SIGTERM handlers are wrapped: the wrapper ends every wait (each
answers with what it collected) and then calls the handler it wraps, so
the server shuts down as before.  The wrapper is taken off again when the
last wait ends, unless someone replaced it meanwhile.  A handler that is
not a Python function (``SIG_DFL``, ``SIG_IGN``) is never wrapped: the
process then dies or ignores the signal, and no answer would follow
either way.  Loops on other threads cannot see signals; nothing is done
for them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["hold"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Everything below is touched on the main thread only (waits register there;
# signal handlers run there), so no lock: a handler may interrupt hold() or
# its release between two bytecodes, which the order of the steps allows for.
_ends: dict[int, Callable[[], None]] = {}  # id -> how to end that wait
_wrapped: dict[int, Any] = {}  # signal number -> the handler our wrapper calls


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """End every wait, then do what the wrapped handler does."""
    for end in list(_ends.values()):
        try:
            end()
        except Exception:  # a loop already closed: nothing left to end there
            pass
    previous = _wrapped.get(signum)
    if callable(previous):
        previous(signum, frame)


def _wrap() -> None:
    for signum in _SIGNALS:
        if signum in _wrapped:
            continue
        previous = signal.getsignal(signum)
        if previous is _on_signal or not callable(previous):
            continue
        _wrapped[signum] = previous  # first: a signal in between must find it
        try:
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):  # not allowed here (a subinterpreter): leave it be
            del _wrapped[signum]


def _unwrap() -> None:
    for signum, previous in list(_wrapped.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)  # first: a signal in between still reaches it
        del _wrapped[signum]


def hold(end: Callable[[], None]) -> Callable[[], None]:
    """Call ``end()`` (from a signal handler) on SIGINT or SIGTERM until released.

    ``end`` must be safe to call from a signal handler on the main thread
    (``loop.call_soon_threadsafe`` is).  Returns the release function; off
    the main thread, nothing is held and the release does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    key = id(end)
    _ends[key] = end
    _wrap()

    def release() -> None:
        if _ends.pop(key, None) is not None and not _ends:
            _unwrap()

    return release


def _nothing() -> None:
    pass
