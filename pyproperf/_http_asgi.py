"""The ASGI 3 app of ``pyproperf.http`` (asyncio servers: uvicorn, hypercorn, daphne...).

Profiles are rendered and the CPU profiler started and stopped on the
event loop's own thread: that is the thread a Python profiler sees best
(a helper thread can starve while the loop runs), and the goroutine
profile sees the loop's tasks from there.  While a ``/profile`` or delta
request waits, ``receive()`` is watched for ``http.disconnect``: a client
that leaves cancels the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pyproperf import _http_core
from pyproperf._http_core import Job, Response

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
        prefix: str = _http_core.PREFIX,
        max_seconds: int = _http_core.DEFAULT_MAX_SECONDS,
    ) -> None:
        if app is not None and not callable(app):
            raise TypeError(f"app must be an ASGI application, not {type(app).__name__}")
        self.app = app
        self.prefix = _http_core.check_prefix(prefix)
        self.max_seconds = _http_core.check_max_seconds(max_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, mount = _relative_path(scope)
            if self.app is None or path.startswith(self.prefix) or path == self.prefix[:-1]:
                await self._http(scope, path, mount, receive, send)
                return
        if self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(
        self, scope: Scope, path: str, mount: str, receive: Receive, send: Send
    ) -> None:
        method: str = scope.get("method", "GET")
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        try:
            routed = _http_core.route(
                method,
                path,
                query,
                prefix=self.prefix,
                max_seconds=self.max_seconds,
                mount=mount,
            )
            result: Response | None = routed if isinstance(routed, Response) else None
            if not isinstance(routed, Response):
                result = await _run_job(routed, receive)
        except Exception:
            log.exception("pyproperf.http: internal error")
            result = _http_core.error(500, "internal error")
        if result is None:  # the client left
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers]
        headers.append((b"content-length", str(len(result.body)).encode()))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        body = b"" if method == "HEAD" else result.body
        await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (after draining any request body)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def _run_job(job: Job, receive: Receive) -> Response | None:
    early = job.start()
    if early is not None:
        return early
    try:
        sleep = asyncio.ensure_future(asyncio.sleep(job.seconds))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({sleep, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left = gone.done() and not gone.cancelled()
            sleep.cancel()
            gone.cancel()
            await asyncio.gather(sleep, gone, return_exceptions=True)
        if left:  # http.disconnect, or receive() failed: the client is gone
            job.cancel()
            return None
    except BaseException:  # cancelled by the server (shutdown) or failed
        job.cancel()
        raise
    return job.finish()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
