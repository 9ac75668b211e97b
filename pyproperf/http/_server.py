"""``pyproperf.http.serve``: the endpoints on a small stdlib HTTP server in a daemon thread.

One thread per connection (``ThreadingHTTPServer``), at most
``max_connections`` at a time: more get a 503 with ``Retry-After`` at
once, from the accepting thread.  The listen backlog is ``BACKLOG`` (256),
not socketserver's 5: with 5, a burst of clients overflows the kernel's
queue and they see resets or SYN retries lasting minutes instead of an
answer.  Every connection is closed after one response (HTTP/1.0), so an
idle client holds nothing; even a malformed request gets a status line
and headers (http.server would answer it HTTP/0.9 style, body only).
Reading a request has a total deadline, writing a response a timeout,
and a ``/profile`` or delta request waits at most ``max_seconds``: one
slow or stalled client cannot hold a thread for longer than that.
``stop()``, and interpreter exit for a server still running, end those
waits early: they answer with what they collected.  The server logs
nothing about requests; it says once on stderr when it listens beyond
loopback.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import ipaddress
import logging
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from pyproperf import _hooks
from pyproperf.http import _core, _wait
from pyproperf.http._core import Response

__all__ = ["Server", "parse_address", "serve"]

log = logging.getLogger("pyproperf.http")

# Total time a client gets to send its request line and headers.
READ_SECONDS = 10.0
# Time a client gets to take one whole response.
WRITE_SECONDS = 60.0
DEFAULT_MAX_CONNECTIONS = 16
# Connections the kernel may queue before we accept them (capped by
# net.core.somaxconn).  Accepting is fast, and beyond max_connections
# answered at once with a 503, so the queue only absorbs bursts.
BACKLOG = min(256, socket.SOMAXCONN)
# A busy answer reads the request bytes already received (at most this many,
# without waiting) before closing: closing a socket with unread input sends
# a reset, which can discard the 503 before the client reads it.
_BUSY_DRAIN_BYTES = 65536
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Content-Length: 20\r\n\r\n"
    b"too many connections"
)


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` / ``"[V6]:PORT"`` / ``":PORT"`` -> (host, port); empty host is loopback."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a str like '127.0.0.1:6060', not {type(address)}")
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address must be HOST:PORT (e.g. 127.0.0.1:6060), got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 addresses go in brackets, e.g. [::1]:6060; got {address!r}")
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r}")
    return host or "127.0.0.1", int(port)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline, so a trickling client cannot stall forever."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _PprofServer
    protocol_version = "HTTP/1.0"
    # http.server's default, "HTTP/0.9", is what a request line it cannot parse
    # (or a two-word "GET /x") is answered in: a body without status line or
    # headers.  Go answers every request with a status line; so do we.
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, READ_SECONDS))

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Every method reaches _serve, which answers 405 for all but GET/HEAD
        # (Go's method-aware mux); http.server would say 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        self.server.mark_serving(self.connection)
        raw_path, _, query = self.path.partition("?")
        if not raw_path.startswith("/"):  # absolute-form request target
            raw_path = urllib.parse.urlsplit(raw_path).path or "/"
        # http.server decoded the request line as latin-1: back to bytes, then UTF-8.
        raw = urllib.parse.unquote_to_bytes(raw_path.encode("latin-1", "replace"))
        path = raw.decode("utf-8", "replace")
        try:
            routed = _core.route(self.command, path, query, max_seconds=self.server.max_seconds)
            result: Response | None = routed if isinstance(routed, Response) else None
            if not isinstance(routed, Response):
                result = _wait.run_job(routed, self.connection, self.server.stopping)
        except Exception:
            log.exception("pyproperf.http: internal error")
            result = _core.error(500, "internal error")
        if result is None:  # the client left
            self.close_connection = True
            return
        self._write(result)

    def _write(self, response: Response) -> None:
        self.connection.settimeout(WRITE_SECONDS)
        self.send_response_only(response.status)
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        for key, value in response.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, header too long, ...):
        # plain text, nothing from the request echoed or logged.
        self.close_connection = True
        phrase = self.responses.get(code, ("Error",))[0]
        with contextlib.suppress(OSError):
            body = f"{code} {phrase}\n".encode()
            self._write(Response(code, [("Content-Type", _core.PLAIN)], body))

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: paths and queries stay out of logs."""


class _PprofServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = BACKLOG

    def __init__(
        self, address: tuple[Any, ...], family: int, max_seconds: int, max_connections: int
    ) -> None:
        self.address_family = family
        self.max_seconds = max_seconds
        self.max_connections = max_connections
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        # connection -> (thread, serving?)
        self._active: dict[socket.socket, tuple[threading.Thread, bool]] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up our own name (getfqdn): DNS, maybe slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            busy = len(self._active) >= self.max_connections or self.stopping.is_set()
            if not busy:
                t = threading.Thread(
                    target=self.process_request_thread,
                    args=(request, client_address),
                    name="pyproperf-http-request",
                    daemon=True,
                )
                self._active[request] = (t, False)
        if busy:
            self._refuse(request)
            return
        try:
            t.start()
        except RuntimeError:  # no thread to be had: a 503, and the slot back
            with self._lock:
                self._active.pop(request, None)
            self._refuse(request)

    def _refuse(self, request: socket.socket) -> None:
        """503 at once, on the accepting thread: non-blocking, never waits on the client."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)  # ~150 bytes: a fresh socket's buffer takes them whole
            request.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < _BUSY_DRAIN_BYTES:
                chunk = request.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
        self.close_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._active.pop(request, None)

    def mark_serving(self, request: socket.socket) -> None:
        with self._lock:
            if request in self._active:
                self._active[request] = (self._active[request][0], True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("pyproperf.http: connection error", exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Unblock readers at once, let running requests answer, then join all threads.

        Requests still running after ``timeout`` have their sockets shut
        down, then all get one more second together.
        """
        with self._lock:
            active = list(self._active.items())
        for sock, (_, serving) in active:
            if not serving:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, (thread, _) in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [(sock, thread) for sock, (thread, _) in active if thread.is_alive()]
        for sock, _ in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 1.0
        for _, thread in late:
            thread.join(max(0.0, deadline - time.monotonic()))


class Server:
    """A running ``serve()``: ``url``, ``host``, ``port``; ``stop()`` it or use ``with``."""

    def __init__(self, httpd: _PprofServer) -> None:
        self._httpd = httpd
        sockname = httpd.socket.getsockname()
        self.host: str = sockname[0]
        self.port: int = sockname[1]
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        #: The index page, e.g. ``http://127.0.0.1:6060/debug/pprof/``.
        self.url: str = f"http://{netloc}:{self.port}{_core.PREFIX}"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="pyproperf-http",
            daemon=True,
        )
        self._stop_lock = threading.Lock()
        self._stopped = False
        with _running_lock:
            _running.add(self)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end running profiles early (answered with what they have),
        close the socket and join every thread.  Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        with _running_lock:
            _running.discard(self)
        httpd = self._httpd
        httpd.stopping.set()
        httpd.shutdown()
        httpd.close_connections(timeout)
        httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<pyproperf.http.Server {self.url} {state}>"


# Servers not yet stopped: held here, so that one whose Server object the
# caller dropped is still stopped at exit.
_running: set[Server] = set()
_running_lock = threading.Lock()
# At exit, how long requests in flight get to answer.
EXIT_SECONDS = 2.0


def _stop_at_exit() -> None:
    """Stop servers still running when the interpreter exits (Ctrl-C, end of script).

    Their request threads are daemons, killed mid-answer at exit: a client
    waiting on ``/profile?seconds=30`` would get a reset.  Stopped here, it
    gets the profile collected so far.
    """
    with _running_lock:
        servers = list(_running)
    for server in servers:
        if server._thread.is_alive():  # else stop() would wait for a loop that is gone
            server.stop(EXIT_SECONDS)


def _forget_in_child() -> None:
    """A forked child has the sockets but none of the threads: nothing of ours runs there."""
    global _running_lock  # noqa: PLW0603 - the parent's lock may be held by a thread gone here
    _running_lock = threading.Lock()
    _running.clear()


_hooks.at_exit(_stop_at_exit)
_hooks.at_fork_child(_forget_in_child)


def _reach(host: str) -> str | None:
    """Who can reach a server bound to ``host`` (an IP): None if only this machine."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # no IPv6 zone
    except ValueError:
        return "an address beyond loopback"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    return "every interface" if ip.is_unspecified else "an address beyond loopback"


def _warn_exposed(server: Server, where: str) -> None:
    """One line on stderr: the endpoints are reachable from the network."""
    text = (
        f"pyproperf: serving {server.url} on {where}: anyone who can reach it reads this "
        "process's profiles (command line, label values, stacks)"
    )
    with contextlib.suppress(OSError, ValueError):  # stderr closed
        print(text, file=sys.stderr, flush=True)


def serve(
    address: str = "127.0.0.1:6060",
    *,
    max_seconds: int = _core.DEFAULT_MAX_SECONDS,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Server:
    """Serve Go's /debug/pprof/ endpoints on ``address`` from a daemon thread.

    ``address`` is ``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6); port 0 picks
    a free port (read it from ``.port``).  An empty host (``":6060"``) means
    127.0.0.1 -- unlike Go, where it means every interface.  Any address that
    is not loopback is an explicit choice with risks: anyone who can reach
    it reads the command line, source paths, function names and label
    values, and can keep profilers running (``max_seconds`` at a time).
    Put it behind authentication or a firewall.  Bound beyond loopback
    (``"0.0.0.0:6060"``, ``"0:6060"``, ``"[::]:6060"``, a LAN address), the
    server says so in one line on stderr.

    ``max_seconds`` caps ``seconds`` for ``/profile`` and delta profiles
    (400 beyond it); ``max_connections`` caps concurrent connections (a 503
    with ``Retry-After: 1`` beyond it).  Returns a ``Server``; ``stop()`` ends
    running profiles early (they answer with what they have), closes the
    socket and joins its threads; a server still running at interpreter exit
    is stopped then.  Port of the ``http.ListenAndServe("localhost:6060", nil)``
    habit.
    """
    host, port = parse_address(address)
    _core.check_max_seconds(max_seconds)
    if (
        not isinstance(max_connections, int)
        or isinstance(max_connections, bool)
        or max_connections < 1
    ):
        raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    httpd = _PprofServer(sockaddr, family, max_seconds, max_connections)
    server = Server(httpd)
    where = _reach(server.host)
    if where is not None:
        _warn_exposed(server, where)
    return server
