"""The ASGI 3 app of ``pyproperf.http`` (asyncio servers: uvicorn, hypercorn, daphne...).

Profiles are rendered and the CPU profiler started and stopped on the
event loop's own thread: that is the thread a Python profiler sees best
(a helper thread can starve while the loop runs), and the goroutine
profile sees the loop's tasks from there.  While a ``/profile`` or delta
request waits, ``receive()`` is watched for ``http.disconnect``: a client
that leaves cancels the job.  A server shutting down ends the wait early,
and the job answers with what it collected: the ``lifespan.shutdown``
event does so, and SIGINT or SIGTERM (``_signals``) where the loop
runs on the main thread -- uvicorn sends ``lifespan.shutdown`` only after
its requests have finished, however long they take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pyproperf import _own
from pyproperf.http import _core, _signals
from pyproperf.http._core import Job, Response

__all__ = ["ASGIApp"]

log = logging.getLogger("pyproperf.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApplication = Callable[[Scope, Receive, Send], Awaitable[None]]


def _relative_path(scope: Scope) -> tuple[str, str]:
    """(path below the mount point, mount point) of an HTTP scope."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path, root


class ASGIApp:
    """Serves ``prefix`` (default ``/debug/pprof/``); everything else goes to ``app`` or 404."""

    def __init__(
        self,
        app: ASGIApplication | None = None,
        *,
        prefix: str = _core.PREFIX,
        max_seconds: int = _core.DEFAULT_MAX_SECONDS,
    ) -> None:
        if app is not None and not callable(app):
            raise TypeError(f"app must be an ASGI application, not {type(app).__name__}")
        self.app = app
        self.prefix = _core.check_prefix(prefix)
        self.max_seconds = _core.check_max_seconds(max_seconds)
        # How to end each wait in flight, on the loop's thread.
        self._ends: set[Callable[[], None]] = set()

    @_own.calls_user_code
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, mount = _relative_path(scope)
            if self.app is None or path.startswith(self.prefix) or path == self.prefix[:-1]:
                await self._http(scope, path, mount, receive, send)
                return
        if scope["type"] == "lifespan":
            receive = self._watch_lifespan(receive)
        if self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    def _watch_lifespan(self, receive: Receive) -> Receive:
        """``receive`` that ends the waits in flight when the server says it shuts down."""

        async def watched() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                for end in list(self._ends):
                    end()
            return message

        return watched

    async def _http(
        self, scope: Scope, path: str, mount: str, receive: Receive, send: Send
    ) -> None:
        method: str = scope.get("method", "GET")
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        try:
            routed = _core.route(
                method,
                path,
                query,
                prefix=self.prefix,
                max_seconds=self.max_seconds,
                mount=mount,
            )
            result: Response | None = routed if isinstance(routed, Response) else None
            if not isinstance(routed, Response):
                result = await self._run_job(routed, receive)
        except Exception:
            log.exception("pyproperf.http: internal error")
            result = _core.error(500, "internal error")
        if result is None:  # the client left
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers]
        headers.append((b"content-length", str(len(result.body)).encode()))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        body = b"" if method == "HEAD" else result.body
        await send({"type": "http.response.body", "body": body})

    async def _run_job(self, job: Job, receive: Receive) -> Response | None:
        """Start, wait ``job.seconds`` (less if the server stops), finish.

        None if the client left (the job is then cancelled).
        """
        early = job.start()
        if early is not None:
            return early
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()

        def end() -> None:
            if not stopped.done():
                stopped.set_result(None)

        def end_from_signal() -> None:
            loop.call_soon_threadsafe(end)

        self._ends.add(end)
        release = _signals.hold(end_from_signal)
        try:
            sleep = asyncio.ensure_future(asyncio.sleep(job.seconds))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait({sleep, gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left = gone.done() and not gone.cancelled()
                sleep.cancel()
                gone.cancel()
                await asyncio.gather(sleep, gone, return_exceptions=True)
            if left:  # http.disconnect, or receive() failed: the client is gone
                job.cancel()
                return None
        except BaseException:  # cancelled by the server (forced shutdown) or failed
            job.cancel()
            raise
        finally:
            release()
            self._ends.discard(end)
        return job.finish()


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (after draining any request body)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
