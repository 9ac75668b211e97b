"""pyproperf.http: Go's net/http/pprof endpoints over WSGI, ASGI and the stdlib server.

Expected statuses, headers and bodies were captured from Go 1.27.3's
net/http/pprof (httptest server, pprof-reference §6).  End-to-end tests run
a Python process serving on a free loopback port and read it with the real
``go tool pprof``.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pyproperf
import pyproperf.http
from pyproperf import _builder, _registry
from pyproperf._builder import Frame, ProfileBuilder
from pyproperf.http import _core as _http_core
from pyproperf.http import _server as _http_server
from pyproperf.http import _wait as _http_wait
from tests.pprof_tool import check_valid, load, pprof, stacks

Reply = tuple[int, dict[str, str], bytes]

# The heap source warns when tracemalloc is off (most tests here); that is its business.
pytestmark = pytest.mark.filterwarnings("ignore:pyproperf. the .* profile is empty:RuntimeWarning")


# -- helpers -------------------------------------------------------------------------------


def cpu_busy() -> bool:
    """True while some ``start_cpu_profile`` holds Go's one CPU-profile slot.

    Read, not probed: starting and stopping a profile here would take the
    slot for a moment, and a server starting its own then would be refused.
    """
    from pyproperf import _cpu

    return _cpu._go.profile is not None


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def assert_disconnect_stops_profiler(port: int) -> None:
    """Ask for a 60 s profile, hang up once it runs: the profiler must stop within seconds."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(cpu_busy), "the profile did not start"
    finally:
        sock.close()
    assert wait_until(lambda: not cpu_busy(), 5), "profiler still running after the client left"


def split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return urllib.parse.unquote(path), query


def call_wsgi(app: Any, method: str, target: str, **environ: Any) -> Reply:
    path, query = split_target(target)
    env = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **environ,
    }
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        got["status"], got["headers"] = status, headers
        return lambda data: None

    body = b"".join(app(env, start_response))
    return int(got["status"].split()[0]), dict(got["headers"]), body


def call_asgi(
    app: Any, method: str, target: str, disconnect_after: float | None = None, root_path: str = ""
) -> Reply:
    path, query = split_target(target)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode("latin-1"),
        "root_path": root_path,
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            if disconnect_after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(disconnect_after or 0)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(run())
    if not sent:
        return 0, {}, b""
    start = sent[0]
    headers = {k.decode().title(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, body


def call_server(port: int, method: str, target: str, timeout: float = 60) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.title(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


RAW_RESPONSE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) [^\r\n]*\r\n((?:[^\r\n]+\r\n)*)\r\n")


def raw_exchange(port: int, request: bytes, timeout: float = 60) -> bytes:
    """Send ``request`` on a fresh connection; everything the server sends until it closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply
    finally:
        sock.close()


def parse_raw(reply: bytes) -> Reply:
    """A whole HTTP/1.x response, strictly: status line, headers, a body of Content-Length."""
    m = RAW_RESPONSE.match(reply)
    assert m, f"not an HTTP/1.x response: {reply[:200]!r}"
    headers = {}
    for line in m.group(2).decode("latin-1").split("\r\n")[:-1]:
        key, sep, value = line.partition(":")
        assert sep, f"bad header line {line!r}"
        headers[key.title()] = value.strip()
    body = reply[m.end() :]
    assert int(headers["Content-Length"]) == len(body), (headers, len(body))
    return int(m.group(1)), headers, body


def call_in_thread(port: int, target: str) -> tuple[threading.Thread, list[Reply | Exception]]:
    """GET ``target`` from a started thread; the list gets its reply or its exception."""
    out: list[Reply | Exception] = []

    def fetch() -> None:
        try:
            out.append(call_server(port, "GET", target))
        except Exception as exc:  # the assertion is the test's
            out.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, out


@pytest.fixture
def server() -> Iterator[pyproperf.http.Server]:
    srv = pyproperf.http.serve("127.0.0.1:0")
    try:
        yield srv
    finally:
        srv.stop()


Transport = Callable[[str, str], Reply]


@pytest.fixture(params=["wsgi", "asgi", "server"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """The same request through each way of serving, mounted at the root."""
    if request.param == "wsgi":
        app = pyproperf.http.make_wsgi_app()
        yield lambda m, t: call_wsgi(app, m, t)
    elif request.param == "asgi":
        aapp = pyproperf.http.make_asgi_app()
        yield lambda m, t: call_asgi(aapp, m, t)
    else:
        srv = pyproperf.http.serve("127.0.0.1:0")
        try:
            yield lambda m, t: call_server(srv.port, m, t)
        finally:
            srv.stop()


# -- Go's query and number syntax ----------------------------------------------------------


def test_parse_query_like_go() -> None:
    q = _http_core.parse_query
    assert q("seconds=5&debug=1") == {"seconds": "5", "debug": "1"}
    assert q("seconds=5&seconds=7") == {"seconds": "5"}  # FormValue: first value
    assert q("seconds=1;x=2") == {}  # Go drops pairs with ';'
    assert q("seconds=%zz&debug=2") == {"debug": "2"}  # bad escape dropped
    assert q("seconds=+1") == {"seconds": " 1"}  # '+' is a space
    assert q("a%3Db=c%26d") == {"a=b": "c&d"}
    assert q("&&flag&=x") == {"flag": "", "": "x"}


def test_parse_int_and_atoi_like_go() -> None:
    assert _http_core.parse_int("30") == 30
    assert _http_core.parse_int("+7") == 7
    assert _http_core.parse_int("-3") == -3
    for bad in ("", " 1", "1 ", "1_000", "0x10", "1.5", "\u0661", "99999999999999999999"):
        assert _http_core.parse_int(bad) is None, bad
    assert _http_core.atoi("x") == 0
    assert _http_core.atoi("2") == 2
    assert _http_core.atoi("99999999999999999999") == 2**63 - 1


def test_url_path_like_go() -> None:
    assert _http_core.url_path("heap") == "heap"
    assert _http_core.url_path("example.com/my'<prof>") == "example.com/my%27%3Cprof%3E"
    assert _http_core.url_path("a:b/c") == "./a:b/c"
    assert _http_core.url_path("sp ace/é") == "sp%20ace/%C3%A9"


# -- the index page --------------------------------------------------------------------------

# Go 1.27.3's page for a process with one custom profile, minus goroutineleak
# (which Python has not got); counts replaced by COUNT.
GO_INDEX = """<html>
<head>
<title>/debug/pprof/</title>
<style>
.profile-name{
\tdisplay:inline-block;
\twidth:6rem;
}
</style>
</head>
<body>
/debug/pprof/
<br>
<p>Set debug=1 as a query parameter to export in legacy text format</p>
<br>
Types of profiles available:
<table>
<thead><td>Count</td><td>Profile</td></thead>
<tr><td>COUNT</td><td><a href='allocs?debug=1'>allocs</a></td></tr>
<tr><td>COUNT</td><td><a href='block?debug=1'>block</a></td></tr>
<tr><td>0</td><td><a href='cmdline?debug=1'>cmdline</a></td></tr>
<tr><td>COUNT</td><td><a href='example.com/my%27%3Cprof%3E?debug=1'>example.com/my&#39;&lt;prof&gt;</a></td></tr>
<tr><td>COUNT</td><td><a href='goroutine?debug=1'>goroutine</a></td></tr>
<tr><td>COUNT</td><td><a href='heap?debug=1'>heap</a></td></tr>
<tr><td>COUNT</td><td><a href='mutex?debug=1'>mutex</a></td></tr>
<tr><td>0</td><td><a href='profile?debug=1'>profile</a></td></tr>
<tr><td>0</td><td><a href='symbol?debug=1'>symbol</a></td></tr>
<tr><td>COUNT</td><td><a href='threadcreate?debug=1'>threadcreate</a></td></tr>
<tr><td>0</td><td><a href='trace?debug=1'>trace</a></td></tr>
</table>
<a href="goroutine?debug=2">full goroutine stack dump</a>
<br>
<p>
Profile Descriptions:
<ul>
<li><div class=profile-name>allocs: </div> A sampling of all past memory allocations</li>
<li><div class=profile-name>block: </div> Stack traces that led to blocking on synchronization primitives</li>
<li><div class=profile-name>cmdline: </div> The command line invocation of the current program</li>
<li><div class=profile-name>example.com/my&#39;&lt;prof&gt;: </div> </li>
<li><div class=profile-name>goroutine: </div> Stack traces of all current goroutines. Use debug=2 as a query parameter to export in the same format as an unrecovered panic.</li>
<li><div class=profile-name>heap: </div> A sampling of memory allocations of live objects. You can specify the gc GET parameter to run GC before taking the heap sample.</li>
<li><div class=profile-name>mutex: </div> Stack traces of holders of contended mutexes</li>
<li><div class=profile-name>profile: </div> CPU profile. You can specify the duration in the seconds GET parameter. After you get the profile file, use the go tool pprof command to investigate the profile.</li>
<li><div class=profile-name>symbol: </div> Maps given program counters to function names. Counters can be specified in a GET raw query or POST body, multiple counters are separated by &#39;+&#39;.</li>
<li><div class=profile-name>threadcreate: </div> Stack traces that led to the creation of new OS threads</li>
<li><div class=profile-name>trace: </div> A trace of execution of the current program. You can specify the duration in the seconds GET parameter. After you get the trace file, use the go tool trace command to investigate the trace.</li>
</ul>
</p>
</body>
</html>"""  # noqa: E501

CUSTOM_NAME = "example.com/my'<prof>"


@pytest.fixture(scope="module")
def custom_profile() -> Iterator[pyproperf.Profile]:
    """A custom profile with two values, unregistered again after this module."""
    p = pyproperf.lookup(CUSTOM_NAME) or pyproperf.new_profile(CUSTOM_NAME)
    for v in ("http-test-1", "http-test-2"):
        p.remove(v)
        p.add(v)
    yield p
    with _registry._registry_lock:  # no public unregister (Go has none either)
        _registry._profiles.pop(CUSTOM_NAME, None)


def test_index_page_is_gos(transport: Transport, custom_profile: pyproperf.Profile) -> None:
    status, headers, body = transport("GET", "/debug/pprof/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = body.decode()
    counts = {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"<tr><td>(\d+)</td><td><a href='[^']*'>([^<]*)</a>", page)
    }
    assert counts[CUSTOM_NAME.replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")] == 2
    # Every registered profile is listed, sorted, beside Go's four handlers.
    html_name = re.compile(r"<tr><td>\d+</td><td><a href='[^']*'>([^<]*)</a></td></tr>")
    listed = [m.group(1) for m in html_name.finditer(page)]
    unescape = {"&#39;": "'", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&#34;": '"'}
    plain = [
        re.sub("&#39;|&lt;|&gt;|&amp;|&#34;", lambda m: unescape[m.group()], n) for n in listed
    ]
    registered = [p.name() for p in pyproperf.profiles()]
    assert plain == sorted([*registered, "cmdline", "profile", "symbol", "trace"])
    # Byte for byte Go's page, once the rows of profiles other test modules
    # may have registered in this process are set aside (custom profiles: no
    # description).
    known = {
        "allocs",
        "block",
        "goroutine",
        "heap",
        "mutex",
        "threadcreate",
        CUSTOM_NAME,
        "cmdline",
        "profile",
        "symbol",
        "trace",
    }
    kept = []
    for line in page.split("\n"):
        m = html_name.fullmatch(line) or re.fullmatch(
            r"<li><div class=profile-name>([^<]*): </div> </li>", line
        )
        if m and plain[listed.index(m.group(1))] not in known:
            continue
        kept.append(line)
    normalized = re.sub(
        r"<tr><td>\d+</td>(<td><a href='(?!cmdline|profile|symbol|trace))",
        r"<tr><td>COUNT</td>\1",
        "\n".join(kept),
    )
    assert normalized == GO_INDEX


def test_index_counts_match_registry(custom_profile: pyproperf.Profile) -> None:
    _, _, body = call_wsgi(pyproperf.http.wsgi_app, "GET", "/debug/pprof/")
    page = body.decode()
    for name in ("allocs", "block", "mutex", "threadcreate"):
        m = re.search(rf"<tr><td>(\d+)</td><td><a href='{name}\?debug=1'>", page)
        assert m is not None
        assert int(m.group(1)) == pyproperf.lookup(name).count()  # type: ignore[union-attr]


# -- every endpoint's headers ----------------------------------------------------------------


def test_cmdline(transport: Transport) -> None:
    status, headers, body = transport("GET", "/debug/pprof/cmdline")
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == b"\x00".join(os.fsencode(a) for a in sys.orig_argv)
    assert not body.endswith(b"\x00")


def test_symbol_says_no_symbols(transport: Transport) -> None:
    for target in ("/debug/pprof/symbol", "/debug/pprof/symbol?0x4e68f6+0x1"):
        status, headers, body = transport("GET", target)
        assert (status, body) == (200, b"num_symbols: 0\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_trace_is_refused_like_a_failed_trace_start(transport: Transport) -> None:
    status, headers, body = transport("GET", "/debug/pprof/trace?seconds=0.5")
    assert status == 500
    assert body.startswith(b"Could not enable tracing: ") and body.endswith(b"\n")
    assert headers["X-Go-Pprof"] == "1"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Disposition" not in headers


@pytest.mark.parametrize("name", ["heap", "allocs", "goroutine", "threadcreate", "block", "mutex"])
def test_named_profile_proto_and_text(transport: Transport, name: str) -> None:
    status, headers, body = transport("GET", f"/debug/pprof/{name}")
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body[:2] == b"\x1f\x8b"
    check_valid(load(body))
    for debug in ("1", "2", "-1"):
        status, headers, text = transport("GET", f"/debug/pprof/{name}?debug={debug}")
        assert status == 200
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "Content-Disposition" not in headers
        assert text[:2] != b"\x1f\x8b"
        text.decode()
    # Go ignores a malformed debug (Atoi error -> 0): proto again.
    status, headers, body = transport("GET", f"/debug/pprof/{name}?debug=1x")
    assert (status, headers["Content-Type"]) == (200, "application/octet-stream")


def test_custom_profile_served(custom_profile: pyproperf.Profile) -> None:
    quoted = urllib.parse.quote(CUSTOM_NAME)
    status, headers, body = call_wsgi(pyproperf.http.wsgi_app, "GET", f"/debug/pprof/{quoted}")
    assert status == 200
    assert headers["Content-Disposition"] == 'attachment; filename="example.com/my\'<prof>"'
    values = [s[1] for s in stacks(load(body))]
    assert sum(v[0] for v in values) == 2
    _, _, text = call_wsgi(pyproperf.http.wsgi_app, "GET", f"/debug/pprof/{quoted}?debug=1")
    assert text.startswith(f"{CUSTOM_NAME} profile: total 2\n".encode())


def test_head_has_headers_and_no_body(transport: Transport) -> None:
    status, headers, body = transport("HEAD", "/debug/pprof/cmdline")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == len(b"\x00".join(map(os.fsencode, sys.orig_argv)))


def test_heap_gc_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_http_core.gc, "collect", lambda *a: calls.append(1) or 0)
    app = pyproperf.http.wsgi_app
    call_wsgi(app, "GET", "/debug/pprof/heap?gc=1")
    assert len(calls) == 1
    for target in ("heap?gc=0", "heap?gc=x", "heap", "allocs?gc=1", "heap?gc=1&seconds=x"):
        call_wsgi(app, "GET", "/debug/pprof/" + target)
    assert len(calls) == 1


# -- every error case (statuses, headers and bodies captured from Go 1.27.3) ---------------

PPROF_ERROR = {
    "X-Go-Pprof": "1",
    "Content-Type": "text/plain; charset=utf-8",
    "X-Content-Type-Options": "nosniff",
}
MUX_ERROR = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
SECONDS_400 = b'invalid value for "seconds" - must be a positive integer\n'

ERRORS = [
    ("GET", "/debug/pprof/nosuch", 404, b"Unknown profile\n", PPROF_ERROR),
    ("GET", "/debug/pprof/nosuch?seconds=abc", 404, b"Unknown profile\n", PPROF_ERROR),
    ("GET", "/debug/pprof/heap/", 404, b"Unknown profile\n", PPROF_ERROR),
    ("GET", "/debug/pprof/profile/", 404, b"Unknown profile\n", PPROF_ERROR),
    ("GET", "/debug/pprof/heap?seconds=abc", 400, SECONDS_400, PPROF_ERROR),
    ("GET", "/debug/pprof/heap?seconds=0", 400, SECONDS_400, PPROF_ERROR),
    ("GET", "/debug/pprof/heap?seconds=-1", 400, SECONDS_400, PPROF_ERROR),
    ("GET", "/debug/pprof/heap?seconds=+1", 400, SECONDS_400, PPROF_ERROR),
    ("GET", "/debug/pprof/heap?seconds=99999999999999999999", 400, SECONDS_400, PPROF_ERROR),
    (
        "GET",
        "/debug/pprof/heap?seconds=1&debug=1",
        400,
        b"seconds and debug params are incompatible\n",
        PPROF_ERROR,
    ),
    (
        "GET",
        f"/debug/pprof/{urllib.parse.quote(CUSTOM_NAME)}?seconds=1",
        400,
        b'"seconds" parameter is not supported for this profile type\n',
        PPROF_ERROR,
    ),
    (
        "GET",
        "/debug/pprof/profile?seconds=301",
        400,
        b"profile duration exceeds server's limit of 300 seconds\n",
        PPROF_ERROR,
    ),
    (
        "GET",
        "/debug/pprof/heap?seconds=301",
        400,
        b"profile duration exceeds server's limit of 300 seconds\n",
        PPROF_ERROR,
    ),
    (
        "GET",
        "/debug/pprof/profile?hz=0",
        400,
        b'invalid value for "hz" - must be an integer from 1 to 1000\n',
        PPROF_ERROR,
    ),
    (
        "GET",
        "/debug/pprof/profile?hz=abc",
        400,
        b'invalid value for "hz" - must be an integer from 1 to 1000\n',
        PPROF_ERROR,
    ),
    (
        "GET",
        "/debug/pprof/profile?clock=gpu",
        400,
        b'invalid value for "clock" - must be "cpu" or "wall"\n',
        PPROF_ERROR,
    ),
    (
        "POST",
        "/debug/pprof/symbol",
        405,
        b"Method Not Allowed\n",
        {**MUX_ERROR, "Allow": "GET, HEAD"},
    ),
    (
        "POST",
        "/debug/pprof/heap",
        405,
        b"Method Not Allowed\n",
        {**MUX_ERROR, "Allow": "GET, HEAD"},
    ),
    ("DELETE", "/debug/pprof/", 405, b"Method Not Allowed\n", {**MUX_ERROR, "Allow": "GET, HEAD"}),
    (
        "PUT",
        "/debug/pprof/profile",
        405,
        b"Method Not Allowed\n",
        {**MUX_ERROR, "Allow": "GET, HEAD"},
    ),
    (
        "OPTIONS",
        "/debug/pprof/heap",
        405,
        b"Method Not Allowed\n",
        {**MUX_ERROR, "Allow": "GET, HEAD"},
    ),
    ("GET", "/other", 404, b"404 page not found\n", MUX_ERROR),
]


@pytest.mark.parametrize(
    ("method", "target", "status", "body", "must"), ERRORS, ids=[f"{m} {t}" for m, t, *_ in ERRORS]
)
def test_errors_as_go(
    transport: Transport,
    custom_profile: pyproperf.Profile,
    method: str,
    target: str,
    status: int,
    body: bytes,
    must: dict[str, str],
) -> None:
    got_status, headers, got_body = transport(method, target)
    assert (got_status, got_body) == (status, body)
    for key, value in must.items():
        assert headers.get(key) == value, key
    if "X-Go-Pprof" not in must:
        assert "X-Go-Pprof" not in headers
    assert "Content-Disposition" not in headers


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/debug/pprof", "/debug/pprof/"),
        ("/debug/pprof?x=1", "/debug/pprof/?x=1"),
        ("/debug/pprof//heap", "/debug/pprof/heap"),
        ("/debug/pprof/a/../heap?debug=1", "/debug/pprof/heap?debug=1"),
    ],
)
def test_redirects_as_go(transport: Transport, target: str, location: str) -> None:
    status, headers, body = transport("GET", target)
    assert status == 307
    assert headers["Location"] == location
    assert body == f'<a href="{location}">Temporary Redirect</a>.\n\n'.encode()


def test_profile_in_use_is_500(transport: Transport) -> None:
    pyproperf.start_cpu_profile(io.BytesIO())
    try:
        status, headers, body = transport("GET", "/debug/pprof/profile?seconds=1")
    finally:
        pyproperf.stop_cpu_profile()
    assert status == 500
    assert body == b"Could not enable CPU profiling: cpu profiling already in use\n"
    assert headers["X-Go-Pprof"] == "1"
    assert "Content-Disposition" not in headers


# -- /profile and delta profiles -------------------------------------------------------------


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_profile_over_server(server: pyproperf.http.Server) -> None:
    worker = threading.Thread(target=spin, args=(1.5,))
    worker.start()
    try:
        status, headers, body = call_server(server.port, "GET", "/debug/pprof/profile?seconds=1")
    finally:
        worker.join()
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == 'attachment; filename="profile"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    p = load(body)
    check_valid(p)
    assert [p.string_table[t.type] for t in p.sample_type] == ["samples", "cpu"]
    assert 0.9e9 <= p.duration_nanos <= 5e9
    assert not cpu_busy()


def test_profile_wall_clock_and_hz(server: pyproperf.http.Server) -> None:
    status, _, body = call_server(
        server.port, "GET", "/debug/pprof/profile?seconds=1&clock=wall&hz=50"
    )
    assert status == 200
    p = load(body)
    check_valid(p)
    assert p.period == 1_000_000_000 // 50
    assert not cpu_busy()


def test_profile_seconds_defaults_like_go() -> None:
    for query in ("", "seconds=abc", "seconds=0", "seconds=-5", "seconds=1.5"):
        job = _http_core.route("GET", "/debug/pprof/profile", query)
        assert isinstance(job, _http_core.CPUJob)
        assert job.seconds == 30, query
    job = _http_core.route("GET", "/debug/pprof/profile", "seconds=2")
    assert isinstance(job, _http_core.CPUJob) and job.seconds == 2
    small = _http_core.route("GET", "/debug/pprof/profile", "", max_seconds=10)
    assert isinstance(small, _http_core.Response) and small.status == 400


def _builder_profile(
    samples: list[tuple[list[str], list[int], list[tuple[str, str]]]], time_nanos: int
) -> bytes:
    b = ProfileBuilder(
        [("goroutine", "count")],
        period_type=("goroutine", "count"),
        period=1,
        time_nanos=time_nanos,
        comments=["c1"],
    )
    for names, values, labels in samples:
        b.add([Frame(n, f"/src/{n}.py", 1, 2) for n in names], values, labels)
    return b.to_gzip()


def test_merge_profiles_delta_as_go() -> None:
    p0 = _builder_profile(
        [(["a", "main"], [1], []), (["b", "main"], [2], []), (["a", "main"], [1], [("k", "v")])],
        100,
    )
    p1 = _builder_profile(
        [
            (["b", "main"], [2], []),
            (["a", "main"], [3], []),
            (["c", "main"], [1], []),
            (["a", "main"], [1], [("k", "v")]),
        ],
        250,
    )
    out = _builder.merge_profiles([p0, p1], scales=[-1, 1], time_nanos=250, duration_nanos=150)
    p = load(out)
    check_valid(p)
    assert sorted((s[0], s[1], s[2]) for s in stacks(p)) == [
        (["a", "main"], [2], {}),
        (["c", "main"], [1], {}),
    ]
    assert (p.time_nanos, p.duration_nanos) == (250, 150)
    assert [p.string_table[c] for c in p.comment] == ["c1"]
    # Unused functions and locations are gone (b's), as after Go's re-merge.
    assert sorted(p.string_table[f.name] for f in p.function) == ["a", "c", "main"]
    # Samples with equal stacks and labels add up; different labels stay apart.
    both = _builder.merge_profiles([p1, p1])
    assert sorted((s[0], s[1], s[2]) for s in stacks(load(both))) == [
        (["a", "main"], [2], {"k": "v"}),
        (["a", "main"], [6], {}),
        (["b", "main"], [4], {}),
        (["c", "main"], [2], {}),
    ]


def test_merge_profiles_refuses_incompatible() -> None:
    a = ProfileBuilder([("goroutine", "count")], period_type=("goroutine", "count")).to_gzip()
    b = ProfileBuilder([("x", "count")], period_type=("goroutine", "count")).to_gzip()
    c = ProfileBuilder([("goroutine", "count")], period_type=("y", "count")).to_gzip()
    with pytest.raises(ValueError, match="incompatible sample types"):
        _builder.merge_profiles([a, b])
    with pytest.raises(ValueError, match="incompatible period types"):
        _builder.merge_profiles([a, c])
    with pytest.raises(ValueError, match="no profiles"):
        _builder.merge_profiles([])


def test_delta_custom_name_goes_404_first() -> None:
    resp = _http_core.route("GET", "/debug/pprof/nosuch", "seconds=1&debug=1")
    assert isinstance(resp, _http_core.Response) and resp.status == 404


@pytest.mark.parametrize("name", ["goroutine", "heap", "allocs", "block", "mutex", "threadcreate"])
def test_delta_profile_over_server(server: pyproperf.http.Server, name: str) -> None:
    t0 = time.time_ns()
    status, headers, body = call_server(server.port, "GET", f"/debug/pprof/{name}?seconds=1")
    assert status == 200
    assert headers["Content-Disposition"] == f'attachment; filename="{name}-delta"'
    assert headers["Content-Type"] == "application/octet-stream"
    p = load(body)
    check_valid(p)
    assert 0.9e9 <= p.duration_nanos <= 5e9
    assert t0 + 0.9e9 <= p.time_nanos <= time.time_ns()


def test_goroutine_delta_shows_new_thread(
    server: pyproperf.http.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread started during the delta window is the delta (+1); the rest cancels out.

    The window is known, not guessed: the server's two snapshots go through ``_collect``,
    wrapped here so that the probe starts once the first is taken and the second is taken
    only once the probe runs.
    """
    stop = threading.Event()
    first_taken = threading.Event()
    probe_running = threading.Event()
    holder: list[threading.Thread] = []
    snapshots: list[str] = []
    real_collect = _http_core._collect

    def collect(name: str) -> tuple[bytes, int]:
        if snapshots:  # the second snapshot: once the probe runs (else the check below fails)
            probe_running.wait(30)
        out = real_collect(name)
        snapshots.append(name)
        first_taken.set()
        return out

    monkeypatch.setattr(_http_core, "_collect", collect)

    def started_during_delta_window() -> None:
        probe_running.set()
        stop.wait()

    def starter() -> None:
        if first_taken.wait(30):
            t = threading.Thread(target=started_during_delta_window, name="delta-probe")
            t.start()
            holder.append(t)
        stop.wait()

    first = threading.Thread(target=starter)
    first.start()
    try:
        status, _, body = call_server(server.port, "GET", "/debug/pprof/goroutine?seconds=1")
    finally:
        stop.set()
        first.join()
        for t in holder:
            t.join()
    assert status == 200
    assert snapshots == ["goroutine", "goroutine"]
    samples = stacks(load(body))
    assert sum(v[0] for _, v, _ in samples) == 1, samples
    probe = [v for names, v, _ in samples if any("started_during_delta_window" in f for f in names)]
    assert probe == [[1]], samples


# -- disconnects, stop, slow clients, limits -------------------------------------------------


def test_disconnect_during_profile_stops_profiler(server: pyproperf.http.Server) -> None:
    for target in ("/debug/pprof/profile?seconds=60", "/debug/pprof/heap?seconds=60"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if "profile" in target:
            assert wait_until(cpu_busy), "profile did not start"
        else:
            time.sleep(0.3)
        t0 = time.monotonic()
        sock.close()
        # The request thread notices within a poll step and cancels the job.
        assert wait_until(lambda: not server._httpd._active, 5), "request thread still running"
        assert time.monotonic() - t0 < 3
    assert not cpu_busy()


PROFILE_20 = "/debug/pprof/profile?seconds=20"


def assert_partial_profile(reply: Reply, tmp_path: Path) -> None:
    """A 200 with a valid profile that go tool pprof reads, covering well under its 20 s."""
    status, _, body = reply
    assert status == 200, body[:200]
    p = load(body)
    check_valid(p)
    assert 0 < p.duration_nanos < 10e9, p.duration_nanos
    path = tmp_path / "partial.pb.gz"
    path.write_bytes(body)
    pprof("-raw", path)


def test_stop_during_profile_answers_with_partial_profile() -> None:
    srv = pyproperf.http.serve("127.0.0.1:0")
    result: list[Reply] = []
    client = threading.Thread(
        target=lambda: result.append(
            call_server(srv.port, "GET", "/debug/pprof/profile?seconds=60")
        )
    )
    client.start()
    try:
        assert wait_until(cpu_busy)
        time.sleep(0.3)
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 3
    finally:
        client.join(10)
        srv.stop()
    assert result and result[0][0] == 200
    p = load(result[0][2])
    check_valid(p)
    assert p.duration_nanos < 5e9
    assert not cpu_busy()


EXIT_PROGRAM = textwrap.dedent("""
    import sys, threading, time
    import pyproperf.http
    from pyproperf import _cpu

    def say_when_profiling():
        # The test's cue that its /profile request is waiting.
        while _cpu._go.profile is None:
            time.sleep(0.01)
        print("profiling", flush=True)

    def burn_cpu_until_interrupted():
        while True:
            x = 0
            for i in range(20000):
                x += i * i

    if sys.argv[1:] == ["serve"]:
        server = pyproperf.http.serve("127.0.0.1:0")
        print(f"serving {server.url}", file=sys.stderr, flush=True)
    threading.Thread(target=say_when_profiling, daemon=True).start()
    burn_cpu_until_interrupted()
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["serve", "cli"])
def test_ctrl_c_answers_profile_in_flight(tmp_path: Path, how: str) -> None:
    """Ctrl-C ends the program; a /profile?seconds=20 in flight gets what was collected.

    ``serve()``'s request threads are daemons, killed at exit mid-wait: the
    client got a reset.  ``run --http`` stops its server before exiting.
    """
    script = tmp_path / "exit_prog.py"
    script.write_text(EXIT_PROGRAM)
    cmd = [sys.executable, str(script), "serve"]
    if how == "cli":
        cmd = [sys.executable, "-m", "pyproperf", "run", "-o", str(tmp_path / "cpu.pb.gz"),
               "--http", "127.0.0.1:0", str(script)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    replies: list[Reply | Exception] = []
    try:
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
        assert m, "no URL on stderr"
        client, replies = call_in_thread(int(m.group(1)), PROFILE_20)
        assert proc.stdout.readline() == "profiling\n"
        proc.send_signal(signal.SIGINT)
        client.join(60)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGINT  # Python's exit on KeyboardInterrupt
    assert replies and isinstance(replies[0], tuple), f"the request got no answer: {replies}"
    assert_partial_profile(replies[0], tmp_path)


def test_slow_client_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http_server, "READ_SECONDS", 0.5)
    with pyproperf.http.serve("127.0.0.1:0") as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.settimeout(5)
        t0 = time.monotonic()
        sock.sendall(b"GET /debug/pprof/heap HT")  # ...and never the rest
        assert sock.recv(100) == b""  # closed by the server without an answer
        assert time.monotonic() - t0 < 3
        sock.close()


def test_too_many_connections_get_503() -> None:
    with pyproperf.http.serve("127.0.0.1:0", max_connections=1) as srv:
        hold = socket.create_connection(("127.0.0.1", srv.port))
        hold.sendall(b"GET /debug/pprof/heap?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: len(srv._httpd._active) == 1)
        status, headers, body = call_server(srv.port, "GET", "/debug/pprof/cmdline")
        assert (status, body) == (503, b"too many connections")
        assert headers["Retry-After"] == "1"
        hold.close()
        assert wait_until(lambda: not srv._httpd._active)
        assert call_server(srv.port, "GET", "/debug/pprof/cmdline")[0] == 200


def test_burst_of_clients_all_answered(server: pyproperf.http.Server) -> None:
    """200 clients at once: each gets a whole response, 200 or a 503 to retry; no reset.

    With socketserver's backlog of 5 the kernel's accept queue overflowed:
    clients saw resets, or SYN retries until their timeout, never an answer.
    """
    clients = 200
    start = threading.Barrier(clients)

    def client(i: int) -> Reply | BaseException:
        target = "/debug/pprof/heap" if i % 2 else "/debug/pprof/goroutine"
        start.wait()
        try:
            reply = raw_exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return parse_raw(reply)
        except (OSError, AssertionError) as exc:  # reset, refused, timed out, cut short
            return exc

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {clients} clients got no answer: {failed[:5]}"
    answers = [r for r in results if not isinstance(r, BaseException)]
    assert {status for status, _, _ in answers} <= {200, 503}
    assert any(status == 200 for status, _, _ in answers)
    for status, headers, body in answers:
        if status == 503:
            assert headers["Retry-After"] == "1" and body == b"too many connections"
        else:
            check_valid(load(body))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /debug/pprof/ HTTP/9.9\r\n\r\n", 505),
        (b"GET /debug/pprof/ HTTP/2.0\r\n\r\n", 505),
        (b"GET /debug/pprof/ HTTP/1.x\r\n\r\n", 400),
        (b"GET /debug/pprof/ HTTP/1.1 extra\r\n\r\n", 400),
        (b"\x00\x01\x02\xfe\xff\r\n\r\n", 400),
        (b"\x16\x03\x01 \x00\xa5 \x01\x00\r\n\r\n", 400),
        (b"POST /debug/pprof/\r\n\r\n", 400),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /debug/pprof/ HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
        # Two words: HTTP/0.9 to http.server, which would answer with a bare body.
        (b"GET /debug/pprof/cmdline\r\n\r\n", 200),
    ],
    ids=["word", "http9.9", "http2", "http1.x", "4words", "binary", "tls-like", "post09",
         "overlong", "header", "two-words"],
)
def test_malformed_request_gets_status_line_and_headers(
    server: pyproperf.http.Server, request_bytes: bytes, status: int
) -> None:
    """http.server answers a request line it cannot parse HTTP/0.9 style: no status, no headers."""
    got, headers, body = parse_raw(raw_exchange(server.port, request_bytes))
    assert got == status, body
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    if status != 200:
        assert body.startswith(f"{status} ".encode()), body


def test_concurrent_heap_and_goroutine_requests(server: pyproperf.http.Server) -> None:
    targets = [
        "/debug/pprof/heap",
        "/debug/pprof/goroutine",
        "/debug/pprof/goroutine?debug=2",
        "/debug/pprof/allocs",
        "/debug/pprof/",
    ] * 6
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda t: call_server(server.port, "GET", t), targets))
    assert [r[0] for r in replies] == [200] * len(targets)
    for target, (_, _, body) in zip(targets, replies, strict=True):
        if "debug" not in target and target.endswith(("heap", "goroutine", "allocs")):
            check_valid(load(body))


def test_nothing_from_the_request_is_logged_or_echoed(
    server: pyproperf.http.Server,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "S3CR3T-%0d%0aInjected:1"
    caplog.set_level(logging.DEBUG)

    class Broken:
        def write_to(self, *args: Any) -> None:
            raise RuntimeError("render failed")

    real_lookup = _http_core._registry.lookup
    monkeypatch.setattr(
        _http_core._registry,
        "lookup",
        lambda name: Broken() if name == "mutex" else real_lookup(name),
    )
    targets = [
        f"/debug/pprof/heap?seconds={secret}",
        f"/debug/pprof/{secret}",
        f"/debug/pprof/profile?hz={secret}",
        f"/debug/pprof/mutex?x={secret}",
    ]
    for target in targets:
        _, headers, body = call_server(server.port, "GET", target)
        assert b"S3CR3T" not in body
        assert "Injected" not in headers
    # A redirect keeps the query, as Go's does, but re-quoted: no header injection.
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /debug/pprof?a=\xff\x7f<b>%0d%0aInjected:1 HTTP/1.0\r\n\r\n")
    sock.settimeout(5)
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nLocation: /debug/pprof/?a=%FF%7F<b>%0d%0aInjected:1\r\n" in head, head
    assert b"\r\nInjected" not in head
    assert b"<b>" not in body
    # Garbage request lines: http.server's own errors, not echoed either.
    for raw in (f"GET /{secret} HTTP/9.9\r\n\r\n", f"BAD {secret}\r\n\r\n", "\x00\x01\r\n\r\n"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(raw.encode())
        sock.settimeout(5)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        assert b"S3CR3T" not in reply
    status, _, body = call_server(server.port, "GET", "/debug/pprof/mutex")
    assert (status, body) == (500, b"failed to write profile\n")
    out, err = capfd.readouterr()
    assert "S3CR3T" not in out + err and "S3CR3T" not in caplog.text
    assert "render failed" in caplog.text  # the internal error itself is logged


# -- serve() ---------------------------------------------------------------------------------


def test_serve_address_parsing() -> None:
    assert _http_server.parse_address("127.0.0.1:6060") == ("127.0.0.1", 6060)
    assert _http_server.parse_address(":6060") == ("127.0.0.1", 6060)  # loopback, not Go's all
    assert _http_server.parse_address("[::1]:0") == ("::1", 0)
    assert _http_server.parse_address("localhost:1") == ("localhost", 1)
    for bad in ("6060", "::1:6060", "host:", "host:port", "host:70000", "host:-1"):
        with pytest.raises(ValueError):
            _http_server.parse_address(bad)
    with pytest.raises(TypeError):
        pyproperf.http.serve(6060)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_seconds"):
        pyproperf.http.serve("127.0.0.1:0", max_seconds=0)
    with pytest.raises(ValueError, match="max_connections"):
        pyproperf.http.serve("127.0.0.1:0", max_connections=0)


def test_serve_defaults_to_loopback_and_reports_url() -> None:
    with pyproperf.http.serve(":0") as srv:
        assert srv.host == "127.0.0.1" and srv.port > 0
        assert srv.url == f"http://127.0.0.1:{srv.port}/debug/pprof/"
        assert call_server(srv.port, "GET", "/debug/pprof/cmdline")[0] == 200
    srv.stop()  # idempotent
    assert "stopped" in repr(srv)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def exposed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "reads this process's profiles" in line]


def local_lan_address() -> str | None:
    """This machine's address on its default route, if it has one beyond loopback."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # UDP: picks a route, sends nothing
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_listening_beyond_loopback_says_so_once(capfd: pytest.CaptureFixture[str]) -> None:
    loopback = ["127.0.0.1:0", "localhost:0", ":0"]
    wildcard = ["0.0.0.0:0", "0:0"]
    if socket.has_ipv6:
        loopback.append("[::1]:0")
        wildcard.append("[::]:0")
    for address in loopback:  # the control: nothing said
        try:
            srv = pyproperf.http.serve(address)
        except OSError:
            assert address == "[::1]:0"  # no IPv6 loopback here
            continue
        srv.stop()
        assert capfd.readouterr().err == "", address
    for address in wildcard:
        try:
            srv = pyproperf.http.serve(address)
        except OSError:
            assert address == "[::]:0"  # no IPv6 here
            continue
        srv.stop()
        err = capfd.readouterr().err
        assert exposed_lines(err) == err.splitlines(), err  # that line only, once
        assert len(err.splitlines()) == 1, err
        assert f"serving {srv.url} on every interface:" in err
        assert "(command line, label values, stacks)" in err
    lan = local_lan_address()
    if lan is not None:
        with pyproperf.http.serve(f"{lan}:0") as srv:
            assert srv.host == lan
        err = capfd.readouterr().err
        assert len(exposed_lines(err)) == 1 and len(err.splitlines()) == 1, err
        assert f"serving http://{lan}:{srv.port}/debug/pprof/ on an address beyond loopback" in err


def test_serve_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = pyproperf.http.serve("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        assert srv.url == f"http://[::1]:{srv.port}/debug/pprof/"
        conn = http.client.HTTPConnection("::1", srv.port, timeout=10)
        conn.request("GET", "/debug/pprof/cmdline")
        assert conn.getresponse().status == 200
        conn.close()


def test_import_is_light() -> None:
    code = (
        "import sys, pyproperf; assert 'http.server' not in sys.modules; "
        "assert 'pyproperf.http' not in sys.modules; import pyproperf.http; "
        "assert 'pyproperf.http._asgi' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- WSGI and ASGI specifics ---------------------------------------------------------------


def test_wsgi_middleware_and_mount() -> None:
    def fallback(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    app = pyproperf.http.make_wsgi_app(fallback)
    assert call_wsgi(app, "GET", "/hello")[2] == b"app"
    assert call_wsgi(app, "GET", "/debug/pprof/cmdline")[0] == 200
    # Mounted where the framework strips the prefix (SCRIPT_NAME=/debug/pprof).
    mounted = pyproperf.http.make_wsgi_app(prefix="/")
    assert call_wsgi(mounted, "GET", "/cmdline", SCRIPT_NAME="/debug/pprof")[0] == 200
    status, headers, _ = call_wsgi(mounted, "GET", "", SCRIPT_NAME="/debug/pprof")
    assert (status, headers["Location"]) == (307, "/debug/pprof/")
    with pytest.raises(ValueError, match="prefix"):
        pyproperf.http.make_wsgi_app(prefix="/debug/pprof")
    with pytest.raises(TypeError):
        pyproperf.http.make_wsgi_app(42)  # type: ignore[arg-type]


def test_asgi_middleware_mount_and_lifespan() -> None:
    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    app = pyproperf.http.make_asgi_app(fallback)
    assert call_asgi(app, "GET", "/hello")[2] == b"app"
    assert call_asgi(app, "GET", "/debug/pprof/cmdline")[0] == 200
    mounted = pyproperf.http.make_asgi_app(prefix="/")
    # Starlette >= 0.33 keeps the full path and sets root_path; older ones strip it.
    assert call_asgi(mounted, "GET", "/debug/pprof/cmdline", root_path="/debug/pprof")[0] == 200
    assert call_asgi(mounted, "GET", "/cmdline", root_path="/debug/pprof")[0] == 200

    async def lifespan() -> list[str]:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        out: list[str] = []

        async def receive() -> dict[str, str]:
            return inbox.pop(0)

        async def send(message: dict[str, str]) -> None:
            out.append(message["type"])

        await pyproperf.http.asgi_app({"type": "lifespan"}, receive, send)
        return out

    assert asyncio.run(lifespan()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_asgi_disconnect_during_profile_stops_profiler() -> None:
    t0 = time.monotonic()
    status, _, _ = call_asgi(
        pyproperf.http.asgi_app, "GET", "/debug/pprof/profile?seconds=60", disconnect_after=0.3
    )
    assert status == 0  # nothing sent to a client that left
    assert time.monotonic() - t0 < 5
    assert not cpu_busy()


def asgi_wait_ended_by(
    app: Any, target: str, shutdown: Callable[[], Awaitable[None]]
) -> Reply:
    """Request ``target`` from ``app``; once it waits, await ``shutdown()``; its reply."""
    path, query = split_target(target)
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
             "query_string": query.encode(), "headers": []}
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        waiting = asyncio.Event()

        async def receive() -> dict[str, Any]:
            # The app reads only once its job waits (watching for a disconnect).
            if not waiting.is_set():
                waiting.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        request = asyncio.ensure_future(app(scope, receive, send))
        await waiting.wait()
        await shutdown()
        await asyncio.wait_for(request, 60)

    asyncio.run(run())
    headers = {k.decode().title(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def lifespan_shutdown(app: Any) -> None:
    """Run ``app``'s lifespan: startup, then shutdown at once."""
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, str]:
        return inbox.pop(0)

    async def send(message: dict[str, str]) -> None:
        pass

    await app({"type": "lifespan"}, receive, send)


@pytest.mark.parametrize("target", [PROFILE_20, "/debug/pprof/goroutine?seconds=20"])
@pytest.mark.parametrize("middleware", [False, True])
def test_asgi_lifespan_shutdown_ends_waits(target: str, middleware: bool, tmp_path: Path) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:  # a framework's lifespan
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    app = pyproperf.http.make_asgi_app(inner if middleware else None)
    reply = asgi_wait_ended_by(app, target, lambda: lifespan_shutdown(app))
    assert_partial_profile(reply, tmp_path)
    assert not cpu_busy()


def test_asgi_signal_ends_waits_and_reaches_the_servers_handler(tmp_path: Path) -> None:
    """SIGTERM (as SIGINT) on the loop's main thread: the wait ends, the server's handler runs."""
    received: list[int] = []

    def servers_handler(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, servers_handler)
    sigint: list[Any] = []

    async def terminate() -> None:
        sigint.append(signal.getsignal(signal.SIGINT))  # asyncio.run's own, inside the loop
        signal.raise_signal(signal.SIGTERM)

    try:
        app = pyproperf.http.make_asgi_app()
        reply = asgi_wait_ended_by(app, PROFILE_20, terminate)
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is servers_handler  # unwrapped again
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert_partial_profile(reply, tmp_path)
    assert not cpu_busy()


UVICORN_APP = textwrap.dedent("""
    import pyproperf.http

    pprof = pyproperf.http.make_asgi_app()

    async def app(scope, receive, send):
        # pyproperf's app, saying "waiting" when a request's job waits (it reads only then).
        if scope["type"] != "http":
            await pprof(scope, receive, send)
            return
        said = []

        async def noted():
            if not said:
                said.append(True)
                print("waiting", flush=True)
            return await receive()

        await pprof(scope, noted, send)
""")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "signum"),
    [(PROFILE_20, signal.SIGINT), ("/debug/pprof/goroutine?seconds=20", signal.SIGTERM)],
    ids=["profile-SIGINT", "delta-SIGTERM"],
)
def test_uvicorn_shutdown_answers_requests_in_flight(
    tmp_path: Path, target: str, signum: int
) -> None:
    """uvicorn waits for requests in flight before exiting; ours end at once, answered."""
    pytest.importorskip("uvicorn")
    (tmp_path / "pprof_app.py").write_text(UVICORN_APP)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "pprof_app:app",
           "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    replies: list[Reply | Exception] = []
    log: list[str] = []
    try:
        port = 0
        while not port:
            line = proc.stderr.readline()
            assert line, f"uvicorn ended before listening: {log}"
            log.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else 0
        client, replies = call_in_thread(port, target)
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signum)
        client.join(60)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.append(proc.stderr.read())
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode in (0, -signum), log  # uvicorn re-raises the signal it caught
    assert "Application shutdown complete" in "".join(log)
    assert replies and isinstance(replies[0], tuple), f"the request got no answer: {replies}"
    assert_partial_profile(replies[0], tmp_path)


def test_asgi_profile_on_the_loop() -> None:
    status, headers, body = call_asgi(
        pyproperf.http.asgi_app, "GET", "/debug/pprof/profile?seconds=1"
    )
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="profile"'
    check_valid(load(body))
    assert not cpu_busy()


def test_wsgi_disconnect_detected_through_wsgiref() -> None:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = make_server("127.0.0.1", 0, pyproperf.http.make_wsgi_app(), WSGIServer, Quiet)
    thread = threading.Thread(target=httpd.handle_request)
    thread.start()
    try:
        sock = socket.create_connection(("127.0.0.1", httpd.server_port))
        sock.sendall(b"GET /debug/pprof/profile?seconds=60 HTTP/1.0\r\n\r\n")
        assert wait_until(cpu_busy)
        sock.close()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        httpd.server_close()
    assert not cpu_busy()


def test_find_socket() -> None:
    a, b = socket.socketpair()
    try:
        assert _http_wait.find_socket({"gunicorn.socket": a}) is a
        assert _http_wait.find_socket({"wsgi.input": a.makefile("rb")}) is a
        assert _http_wait.find_socket({"wsgi.input": io.BytesIO()}) is None
        assert _http_wait.wait(0.05, a) == "done"
        b.close()
        assert _http_wait.wait(10, a) == "gone"
    finally:
        a.close()
        b.close()


# -- real frameworks -----------------------------------------------------------------------


def test_flask_middleware() -> None:
    flask = pytest.importorskip("flask")
    from werkzeug.serving import make_server

    app = flask.Flask("pprof_test")

    @app.route("/hello")
    def hello() -> str:
        return "hello"

    app.wsgi_app = pyproperf.http.make_wsgi_app(app.wsgi_app)  # type: ignore[method-assign]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        port = httpd.server_port
        assert call_server(port, "GET", "/hello")[2] == b"hello"
        status, headers, body = call_server(port, "GET", "/debug/pprof/heap")
        assert (status, headers["Content-Disposition"]) == (200, 'attachment; filename="heap"')
        check_valid(load(body))
        status, _, body = call_server(port, "GET", "/debug/pprof/nosuch")
        assert (status, body) == (404, b"Unknown profile\n")
        # Disconnect during /profile under werkzeug (werkzeug.socket in environ).
        assert_disconnect_stops_profiler(port)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_starlette_mount_under_uvicorn() -> None:
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(
        routes=[
            Route("/hello", hello),
            Mount("/debug/pprof", app=pyproperf.http.make_asgi_app(prefix="/")),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        assert wait_until(lambda: server.started)
        assert call_server(port, "GET", "/hello")[2] == b"hello"
        status, headers, body = call_server(port, "GET", "/debug/pprof/goroutine")
        assert (status, headers["Content-Type"]) == (200, "application/octet-stream")
        check_valid(load(body))
        status, headers, body = call_server(port, "GET", "/debug/pprof/")
        assert status == 200 and b"<title>/debug/pprof/</title>" in body
        status, _, body = call_server(port, "GET", "/debug/pprof/profile?seconds=1")
        assert status == 200
        check_valid(load(body))
        assert_disconnect_stops_profiler(port)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# -- end to end: a Python process read by the real go tool pprof ---------------------------

SERVED_PROGRAM = textwrap.dedent("""
    import sys, threading, time
    import pyproperf.http

    def burn_cpu_in_hog():
        x = 0
        for i in range(20000):
            x += i * i
        return x

    def allocate_alpha():
        out = []
        for _ in range(64):
            out.append(bytearray(1 << 16))
        return out

    def allocate_bravo():
        out = []
        for _ in range(64):
            out.append(bytearray(1 << 16))
        return out

    def main():
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        kept = [allocate_alpha(), allocate_bravo()]
        server = pyproperf.http.serve("127.0.0.1:0")
        print(server.port, flush=True)
        while not done.is_set():
            burn_cpu_in_hog()
        server.stop()
        return kept

    main()
""")


@pytest.fixture
def served_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A Python process serving /debug/pprof/ on a free loopback port, burning CPU."""
    monkeypatch.setenv("PPROF_TMPDIR", str(tmp_path))
    script = tmp_path / "served.py"
    script.write_text(SERVED_PROGRAM)
    env = {**os.environ, "PYTHONTRACEMALLOC": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0


def top_names(text: str) -> list[str]:
    rows = text.partition("      flat  flat%   sum%        cum   cum%\n")[2]
    return [line.split(None, 5)[5] for line in rows.splitlines() if len(line.split(None, 5)) == 6]


@pytest.mark.slow
def test_go_tool_pprof_reads_live_cpu_profile(served_process: int) -> None:
    url = f"http://127.0.0.1:{served_process}/debug/pprof/profile?seconds=2"
    for _ in (1, 2):
        text = pprof("-top", "-nodecount=50", url)
        names = top_names(text)
        if names and names[0].endswith("burn_cpu_in_hog"):
            break
        url = url.replace("seconds=2", "seconds=4")  # retry once, twice as long
    assert "Type: cpu" in text
    assert names[0] == "__main__.burn_cpu_in_hog", text
    assert "__main__.main" in names


@pytest.mark.slow
def test_go_tool_pprof_reads_live_heap_and_goroutine(served_process: int) -> None:
    base = f"http://127.0.0.1:{served_process}/debug/pprof"
    heap = pprof("-top", "-nodecount=1000000", f"{base}/heap")
    assert "Type: inuse_space" in heap
    goroutine = pprof("-top", "-nodecount=1000000", f"{base}/goroutine")
    assert "Type: goroutine" in goroutine
    names = top_names(goroutine)
    if names:  # the goroutine source is there: the main thread is in the hog or main
        assert "__main__.main" in names, goroutine
    heap_names = top_names(heap)
    if heap_names:
        assert "__main__.allocate_alpha" in heap_names and "__main__.allocate_bravo" in heap_names


# -- Grafana Alloy's pyroscope.scrape, default settings ------------------------------------

# pyroscope.scrape defaults (grafana/alloy internal/component/pyroscope/scrape/scrape.go):
# scrape_interval 15s, scrape_timeout 10s; process_cpu = /debug/pprof/profile with
# delta=true, so seconds = scrape_interval - 1s = 14 (target.go); memory = allocs,
# block, goroutine, mutex: plain GETs.  Alloy then computes client-side deltas of
# allocs (alloc_objects/count, alloc_space/bytes) and block/mutex
# (contentions/count, delay/nanoseconds), keyed by location addresses and labels.
ALLOY_SCRAPES = {
    "process_cpu": "/debug/pprof/profile?seconds=14",
    "memory": "/debug/pprof/allocs",
    "block": "/debug/pprof/block",
    "goroutine": "/debug/pprof/goroutine",
    "mutex": "/debug/pprof/mutex",
}
ALLOY_DELTA_TYPES = {
    "memory": [("alloc_objects", "count"), ("alloc_space", "bytes")],
    "block": [("contentions", "count"), ("delay", "nanoseconds")],
    "mutex": [("contentions", "count"), ("delay", "nanoseconds")],
}


def alloy_get(port: int, target: str, timeout: float) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "GET",
            target,
            headers={"User-Agent": "Alloy/v1.10.0 (linux; binary)", "Accept-Encoding": "gzip"},
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_alloy_default_scrape_set(served_process: int, tmp_path: Path) -> None:
    # The first heap render of a process indexes every traced source file
    # (measured 5-8 s here with the main thread burning CPU); Alloy would retry
    # 15 s later.  Warm it up so the scrape below meets Alloy's 10 s timeout.
    assert alloy_get(served_process, "/debug/pprof/allocs", 120)[0] == 200
    # Alloy runs every target's loop concurrently; the CPU scrape's timeout is
    # scrape_timeout + interval - 1s = 24s, the others 10s.
    timeouts = {k: 24.0 if "seconds" in t else 10.0 for k, t in ALLOY_SCRAPES.items()}
    with ThreadPoolExecutor(len(ALLOY_SCRAPES)) as pool:
        futures = {
            k: pool.submit(alloy_get, served_process, t, timeouts[k])
            for k, t in ALLOY_SCRAPES.items()
        }
        replies = {k: f.result() for k, f in futures.items()}
    for kind, (status, _, body) in replies.items():
        assert status == 200, (kind, body[:200])
        assert body, kind  # Alloy: "empty profile" is an error
        p = load(body)
        check_valid(p)
        path = tmp_path / f"{kind}.pb.gz"
        path.write_bytes(body)
        pprof("-raw", path)  # google/pprof parses it, as Alloy's scaler does
        types = [(p.string_table[t.type], p.string_table[t.unit]) for t in p.sample_type]
        for needed in ALLOY_DELTA_TYPES.get(kind, []):
            assert needed in types, (kind, types)
    cpu = load(replies["process_cpu"][2])
    assert 13e9 <= cpu.duration_nanos <= 20e9
    top = pprof("-top", "-nodecount=10", tmp_path / "process_cpu.pb.gz")
    assert "__main__.burn_cpu_in_hog" in top_names(top)[:3], top


def test_alloy_delta_keys_tell_stacks_apart() -> None:
    """Alloy's fastdelta identifies a sample by its location addresses plus labels.

    Two different stacks must not share that key, or Alloy merges them into
    the first one's stack.
    """
    b = ProfileBuilder(
        [("contentions", "count"), ("delay", "nanoseconds")],
        period_type=("contentions", "count"),
        period=1,
    )
    b.add([Frame("m.lock_a", "/m.py", 1, 2), Frame("m.main", "/m.py", 10, 12)], [1, 10])
    b.add([Frame("m.lock_b", "/m.py", 5, 6), Frame("m.main", "/m.py", 10, 13)], [1, 20])
    p = load(b.to_gzip())
    addr = {loc.id: loc.address for loc in p.location}
    keys = [tuple(addr[i] for i in s.location_id) for s in p.sample]
    assert len(set(keys)) == len(keys), keys


# -- the CLI: python -m pyproperf run --http ADDR script.py --------------------------------

CLI_PROGRAM = textwrap.dedent("""
    import sys

    def burn_cpu_in_cli_hog():
        x = 0
        for i in range(20000):
            x += i * i
        return x

    import threading
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        burn_cpu_in_cli_hog()
""")


@pytest.mark.slow
def test_cli_run_serves_for_the_life_of_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PPROF_TMPDIR", str(tmp_path))
    script = tmp_path / "cli_prog.py"
    script.write_text(CLI_PROGRAM)
    cmd = [
        sys.executable,
        "-m",
        "pyproperf",
        "run",
        "-o",
        str(tmp_path / "cpu.pb.gz"),
        "--http",
        "127.0.0.1:0",
        str(script),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        line = proc.stderr.readline().decode()
        m = re.search(r"serving (http://127\.0\.0\.1:(\d+)/debug/pprof/)", line)
        assert m, line
        url, port = m.group(1), int(m.group(2))
        assert call_server(port, "GET", "/debug/pprof/cmdline")[2].split(b"\0")[-1] == bytes(script)
        text = pprof("-top", "-nodecount=20", f"{url}profile?seconds=1")
        assert "__main__.burn_cpu_in_cli_hog" in top_names(text), text
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow
def test_cli_http_beyond_loopback_says_so_once(tmp_path: Path) -> None:
    script = tmp_path / "nothing.py"
    script.write_text("")
    said = {}
    for address in ("127.0.0.1:0", "0:0"):
        cmd = [sys.executable, "-m", "pyproperf", "run", "-o", str(tmp_path / "cpu.pb.gz"),
               "--http", address, str(script)]
        out = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        said[address] = exposed_lines(out.stderr)
    assert said["127.0.0.1:0"] == []  # the control
    assert len(said["0:0"]) == 1, said
    assert re.fullmatch(
        r"pyproperf: serving http://0\.0\.0\.0:\d+/debug/pprof/ on every interface: anyone "
        r"who can reach it reads this process's profiles \(command line, label values, stacks\)",
        said["0:0"][0],
    )
