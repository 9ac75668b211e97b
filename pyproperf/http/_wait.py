"""Blocking waits for ``pyproperf.http`` jobs that end early when the client leaves.

A ``/profile`` or delta request sleeps for ``seconds`` with a profiler
running.  While it sleeps, the connection's socket is polled: a peer that
closed or reset it ends the wait, and the job is cancelled so that no
profiler keeps running for a reader who is gone.  The owning server's
``stop`` event ends the wait as well (the job then answers with what it
has).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Literal

from pyproperf.http._core import Job, Response

__all__ = ["Outcome", "find_socket", "run_job", "wait"]

Outcome = Literal["done", "gone", "stopped"]

# How often a wait looks at the stop event when no socket can wake it.
POLL_SECONDS = 0.1

# Where WSGI servers expose the client socket: ours, gunicorn, werkzeug.
_SOCKET_KEYS = ("pyproperf.socket", "gunicorn.socket", "werkzeug.socket")


def find_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client socket of a WSGI request, where the server exposes it, else None.

    Known keys first; then ``wsgi.input`` of servers built on the stdlib
    (wsgiref, http.server), which is a buffered reader over the socket.
    """
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            return sock
    raw = getattr(environ.get("wsgi.input"), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _peer_closed(sock: socket.socket) -> bool | None:
    """True if the peer closed or reset ``sock``, False if bytes wait, None if nothing yet."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return True
    return not data


def wait(
    seconds: float,
    sock: socket.socket | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Sleep ``seconds``; return early with "gone" if the peer leaves, "stopped" on ``stop``."""
    deadline = time.monotonic() + seconds
    poller: Any = None
    if sock is not None:
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        except (OSError, ValueError, AttributeError):
            poller = None
    while True:
        if stop is not None and stop.is_set():
            return "stopped"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "done"
        step = min(remaining, POLL_SECONDS)
        if poller is None:
            if stop is not None:
                stop.wait(step)
            else:
                time.sleep(step)
            continue
        try:
            ready = poller.poll(step * 1000)
        except InterruptedError:
            continue
        if not ready:
            continue
        assert sock is not None
        closed = _peer_closed(sock)
        if closed:
            return "gone"
        if closed is False:
            # The client sent more (a pipelined request): the socket stays
            # readable, so it can no longer tell us anything; just sleep.
            poller = None


def run_job(
    job: Job,
    sock: socket.socket | None = None,
    stop: threading.Event | None = None,
) -> Response | None:
    """Start ``job``, wait, finish it; None if the client left (the job is then cancelled)."""
    early = job.start()
    if early is not None:
        return early
    try:
        outcome = wait(job.seconds, sock, stop)
    except BaseException:
        job.cancel()
        raise
    if outcome == "gone":
        job.cancel()
        return None
    return job.finish()
