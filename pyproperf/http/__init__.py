"""Go's net/http/pprof for Python: ``/debug/pprof/`` as WSGI, ASGI or a tiny server.

Point ``go tool pprof`` (or Grafana Alloy's ``pyroscope.scrape``) at a live
Python process::

    import pyproperf.http
    server = pyproperf.http.serve("127.0.0.1:6060")   # daemon thread; server.stop()
    # go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=30

or mount the endpoints in a web application::

    app.wsgi_app = pyproperf.http.make_wsgi_app(app.wsgi_app)   # Flask
    app = pyproperf.http.make_asgi_app(app)                      # FastAPI / Starlette

Endpoints, status codes, headers and error texts are Go 1.27's:
``/debug/pprof/`` (index), ``cmdline``, ``profile?seconds=N`` (plus
``clock=wall`` and ``hz=N``), ``symbol``, ``trace`` and ``NAME`` for every
registered profile with ``debug=N``, ``gc=1`` (heap) and ``seconds=N``
(delta profiles).  Python has no program counters to symbolize
(``symbol`` answers ``num_symbols: 0``) and no Go execution trace
(``trace`` answers 500 with a message).

Safety: these endpoints reveal the command line, source paths, function
names and label values, and let a caller run profilers: ``serve`` binds
to loopback unless given another address, and says so on stderr when it
listens beyond loopback.  ``seconds`` is capped at
``max_seconds`` (default 300); a client that disconnects during a
``/profile`` stops the profiler.  Nothing from a request is logged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pyproperf import _own
from pyproperf.http import _core, _wait
from pyproperf.http._core import DEFAULT_MAX_SECONDS, PREFIX, Response
from pyproperf.http._server import Server, serve

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from pyproperf.http._asgi import ASGIApp, ASGIApplication, Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "PREFIX",
    "Server",
    "asgi_app",
    "make_asgi_app",
    "make_wsgi_app",
    "serve",
    "wsgi_app",
]

_REASONS = {
    200: "OK",
    307: "Temporary Redirect",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    500: "Internal Server Error",
}


class WSGIApp:
    """Serves ``prefix`` (default ``/debug/pprof/``); everything else goes to ``app`` or 404.

    Paths are matched against ``PATH_INFO``: mounted below a prefix that
    the framework strips (e.g. werkzeug's ``DispatcherMiddleware`` at
    ``/debug/pprof``), pass ``prefix="/"``.  A ``/profile`` request holds
    its worker for ``seconds``; disconnects are noticed where the server
    exposes the client socket (the stdlib servers, gunicorn, werkzeug).
    """

    def __init__(
        self,
        app: WSGIApplication | None = None,
        *,
        prefix: str = PREFIX,
        max_seconds: int = DEFAULT_MAX_SECONDS,
    ) -> None:
        if app is not None and not callable(app):
            raise TypeError(f"app must be a WSGI application, not {type(app).__name__}")
        self.app = app
        self.prefix = _core.check_prefix(prefix)
        self.max_seconds = _core.check_max_seconds(max_seconds)
        #: Set to end waiting ``/profile`` and delta requests early.
        self.stopping = threading.Event()

    @_own.calls_user_code
    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # PEP 3333: PATH_INFO holds the raw bytes as latin-1; URLs are UTF-8.
        raw = environ.get("PATH_INFO", "") or ""
        path = raw.encode("latin-1", "replace").decode("utf-8", "replace")
        if self.app is not None and not (path.startswith(self.prefix) or path == self.prefix[:-1]):
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        mount = str(environ.get("SCRIPT_NAME", "") or "")
        try:
            routed = _core.route(
                method,
                path,
                str(environ.get("QUERY_STRING", "") or ""),
                prefix=self.prefix,
                max_seconds=self.max_seconds,
                mount=mount,
            )
            if isinstance(routed, Response):
                result = routed
            else:
                done = _wait.run_job(routed, _wait.find_socket(environ), self.stopping)
                # None: the client left; WSGI must still answer (nobody reads it).
                result = done or _core.error(500, "context canceled")
        except Exception:
            _core.log.exception("pyproperf.http: internal error")
            result = _core.error(500, "internal error")
        status = f"{result.status} {_REASONS.get(result.status, 'Error')}"
        headers = [*result.headers, ("Content-Length", str(len(result.body)))]
        start_response(status, headers)
        return [b"" if method == "HEAD" else result.body]


def make_wsgi_app(
    app: WSGIApplication | None = None,
    *,
    prefix: str = PREFIX,
    max_seconds: int = DEFAULT_MAX_SECONDS,
) -> WSGIApp:
    """A WSGI app serving net/http/pprof's endpoints under ``prefix``.

    With ``app``, a middleware: other paths go to ``app`` (e.g. Flask's
    ``app.wsgi_app = make_wsgi_app(app.wsgi_app)``, Django's
    ``application = make_wsgi_app(get_wsgi_application())``); without,
    other paths get Go's ``404 page not found``.  ``max_seconds`` caps
    ``seconds`` for ``/profile`` and delta profiles (400 beyond it).
    """
    return WSGIApp(app, prefix=prefix, max_seconds=max_seconds)


def make_asgi_app(
    app: ASGIApplication | None = None,
    *,
    prefix: str = PREFIX,
    max_seconds: int = DEFAULT_MAX_SECONDS,
) -> ASGIApp:
    """An ASGI 3 app serving net/http/pprof's endpoints under ``prefix`` (asyncio servers).

    With ``app``, a middleware (``app = make_asgi_app(app)`` for FastAPI or
    Starlette); or mount it: ``Mount("/debug/pprof", make_asgi_app(prefix="/"))``.
    A client that disconnects during ``/profile`` stops the profiler.  A
    server shutting down ends ``/profile`` and delta requests early, answered
    with what they collected: on ``lifespan.shutdown``, and on SIGINT or
    SIGTERM when the event loop runs on the main thread (uvicorn, for one,
    sends ``lifespan.shutdown`` only once its requests have finished).
    """
    from pyproperf.http._asgi import ASGIApp  # imports asyncio: only when used

    return ASGIApp(app, prefix=prefix, max_seconds=max_seconds)


#: The endpoints under /debug/pprof/ with default settings, as a WSGI app.
wsgi_app = make_wsgi_app()

_default_asgi: list[ASGIApp] = []


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoints under /debug/pprof/ with default settings, as an ASGI 3 app."""
    if not _default_asgi:
        _default_asgi.append(make_asgi_app())
    await _default_asgi[0](scope, receive, send)
