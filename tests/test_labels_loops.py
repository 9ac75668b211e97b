"""Labels on the other event loops: uvloop, trio, anyio (on asyncio+uvloop and on trio).

Samples taken while a task runs carry the labels active when the task was
created, whichever loop runs it; ``set_goroutine_labels`` in a task changes
that task only; work handed to worker threads (``trio.to_thread``,
``anyio.to_thread``) carries the caller's labels; the goroutine profile
lists the loops' suspended tasks with their stacks, states and labels.
Each CPU check compares ``go tool pprof -tags`` with the CPU every request
measured for itself, in programs shaped like servers: bursts of work
between waits, several requests at once, an unlabelled neighbour.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
import uvloop

import pyproperf
from pyproperf import _labels
from tests.cpu_workloads import shared_work
from tests.pprof_tool import check_valid, load, pprof, tag_seconds, traces
from tests.test_goroutine import parse_dump

MOD = __name__
# Child processes import the tests' workloads (``tests.cpu_workloads``) from here.
_CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")) if p)}


# -- the workload: requests created in labelled regions, and an unlabelled neighbour ----------

Sleep = Callable[[float], Awaitable[None]]


async def request(used: dict[str, float], name: str, target: float, sleep: Sleep) -> None:
    """Bursts of 3-25 ms of CPU, each followed by a yield or a short real wait."""
    rnd = random.Random(name)
    while used[name] < target:
        used[name] += shared_work(min(rnd.uniform(0.003, 0.025), target - used[name]))
        await sleep(0 if rnd.random() < 0.5 else 0.001)


def _targets(scale: float) -> dict[str, float]:
    return {"r1": 0.2 * scale, "r2": 0.4 * scale, "r3": 0.6 * scale, "bg": 0.3 * scale}


async def _asyncio_main(used: dict[str, float], targets: dict[str, float]) -> None:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(request(used, "bg", targets["bg"], asyncio.sleep))]
    for name in ("r1", "r2", "r3"):
        with pyproperf.labeled("request", name):
            tasks.append(loop.create_task(request(used, name, targets[name], asyncio.sleep)))
    await asyncio.gather(*tasks)


async def _trio_main(used: dict[str, float], targets: dict[str, float]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, used, "bg", targets["bg"], trio.sleep)
        for name in ("r1", "r2", "r3"):
            with pyproperf.labeled("request", name):
                nursery.start_soon(request, used, name, targets[name], trio.sleep)


async def _anyio_main(used: dict[str, float], targets: dict[str, float]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(request, used, "bg", targets["bg"], anyio.sleep)
        for name in ("r1", "r2", "r3"):
            with pyproperf.labeled("request", name):
                tg.start_soon(request, used, name, targets[name], anyio.sleep)


RUNNERS: dict[str, Callable[[Callable[[], Coroutine[Any, Any, None]]], None]] = {
    "asyncio": lambda main: asyncio.run(main()),
    "uvloop": lambda main: uvloop.run(main()),
    "trio": trio.run,
    "anyio-uvloop": lambda main: anyio.run(
        main, backend="asyncio", backend_options={"use_uvloop": True}
    ),
    "anyio-trio": lambda main: anyio.run(main, backend="trio"),
}
MAINS = {
    "asyncio": _asyncio_main,
    "uvloop": _asyncio_main,
    "trio": _trio_main,
    "anyio-uvloop": _anyio_main,
    "anyio-trio": _anyio_main,
}


def _run(kind: str, used: dict[str, float], targets: dict[str, float]) -> str:
    """Run the workload on loop ``kind``; return the type of the loop that ran it."""
    seen: list[str] = []

    async def main() -> None:
        if "trio" in kind:
            seen.append(type(trio.lowlevel.current_trio_token()).__module__)
        else:
            seen.append(type(asyncio.get_running_loop()).__module__)
        await MAINS[kind](used, targets)

    RUNNERS[kind](main)
    return seen[0]


def _ground_truth_errors(
    kind: str, scale: float, tmp: Path, in_thread: bool, share_pp: float, ratio: tuple[float, float]
) -> list[str]:
    targets = _targets(scale)
    used = dict.fromkeys(targets, 0.0)
    path = tmp / f"{kind}-{scale}.pb.gz"
    loops: list[str] = []
    with open(path, "wb") as f:
        pyproperf.start_cpu_profile(f)
        try:
            if in_thread:
                t = threading.Thread(target=lambda: loops.append(_run(kind, used, targets)))
                t.start()
                t.join()
            else:
                loops.append(_run(kind, used, targets))
        finally:
            pyproperf.stop_cpu_profile()
    expected_loop = "trio" if "trio" in kind else ("uvloop" if "uvloop" in kind else "asyncio")
    assert loops and loops[0].startswith(expected_loop), (kind, loops)
    per_label = tag_seconds(path, "request")
    assert set(per_label) <= {"r1", "r2", "r3"}, per_label  # bg was created outside any region
    errors = []
    labelled = {n: used[n] for n in ("r1", "r2", "r3")}
    true_total = sum(labelled.values())
    prof_total = sum(per_label.values())
    for name, truth in labelled.items():
        got = per_label.get(name, 0.0)
        share_err = abs(got / prof_total - truth / true_total) * 100 if prof_total else 100
        if share_err > share_pp or not ratio[0] <= got / truth <= ratio[1]:
            errors.append(
                f"{kind}: {name}: profile {got:.3f}s, measured {truth:.3f}s, "
                f"share error {share_err:.1f} pp"
            )
    # The unlabelled neighbour's CPU must not land on the requests.
    if not 0.75 <= prof_total / true_total <= 1.25:
        errors.append(f"{kind}: labelled {prof_total:.3f}s, requests measured {true_total:.3f}s")
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RUNNERS))
def test_cpu_per_label_of_tasks_created_in_labelled_regions(kind: str, tmp_path: Path) -> None:
    """Main thread (the signal handler's samples): as tight as the asyncio test in test_labels."""
    errors = _ground_truth_errors(kind, 1.0, tmp_path, False, 8, (0.65, 1.4))
    if errors:  # Go's habit: once more with twice the duration before failing
        errors = _ground_truth_errors(kind, 2.0, tmp_path, False, 8, (0.65, 1.4))
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "trio"])
def test_cpu_per_label_with_the_loop_in_another_thread(kind: str, tmp_path: Path) -> None:
    """A loop in a worker thread: the helper's samples, which find labels on the stack only.

    The helper looks less often at a busy thread than the handler at the
    main thread (the GIL hands it over each switch interval), so tasks
    switching every few milliseconds are resolved more coarsely: the bounds
    are wider than in the main thread, the labels must be there all the same.
    """
    errors = _ground_truth_errors(kind, 1.0, tmp_path, True, 12, (0.5, 1.6))
    if errors:
        errors = _ground_truth_errors(kind, 2.0, tmp_path, True, 12, (0.5, 1.6))
    assert not errors, errors


# -- set_goroutine_labels inside a task: that task only -------------------------------------


async def _setter_and_neighbour(
    used: dict[str, float], seen: dict[str, Any], sleep: Sleep, spawn: Callable[..., Any]
) -> None:
    """Task ``setter`` replaces its labels mid-way; ``plain`` interleaves with it, unlabelled."""

    async def setter() -> None:
        used["setter-before"] = shared_work(0.1)
        await sleep(0)
        new = pyproperf.with_labels(None, pyproperf.labels("request", "set"))
        pyproperf.set_goroutine_labels(new)
        seen["setter"] = pyproperf.label(None, "request")
        await request(used, "setter", 0.4, sleep)

    async def plain() -> None:
        await sleep(0)
        await request(used, "plain", 0.4, sleep)
        seen["plain"] = pyproperf.label(None, "request")

    await spawn(setter, plain)


def _spawn_asyncio(*fns: Callable[[], Awaitable[None]]) -> Awaitable[Any]:
    return asyncio.gather(*(asyncio.get_running_loop().create_task(f()) for f in fns))  # type: ignore[arg-type]


async def _spawn_trio(*fns: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for f in fns:
            nursery.start_soon(f)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uvloop", "trio"])
def test_set_goroutine_labels_in_a_task_changes_that_task_only(kind: str, tmp_path: Path) -> None:
    used = {"setter": 0.0, "plain": 0.0}
    seen: dict[str, Any] = {}
    path = tmp_path / "cpu.pb.gz"
    with open(path, "wb") as f:
        pyproperf.start_cpu_profile(f)
        try:
            if kind == "trio":
                trio.run(_setter_and_neighbour, used, seen, trio.sleep, _spawn_trio)
            else:
                uvloop.run(_setter_and_neighbour(used, seen, asyncio.sleep, _spawn_asyncio))
        finally:
            pyproperf.stop_cpu_profile()
    assert seen == {"setter": ("set", True), "plain": ("", False)}
    per_label = tag_seconds(path, "request")
    assert set(per_label) == {"set"}, per_label
    # Only what the setter burnt after the change: not its first 0.1 s, not plain's 0.4 s.
    assert 0.65 * used["setter"] <= per_label["set"] <= 1.3 * used["setter"], (per_label, used)


def test_task_registrations_end_with_the_tasks() -> None:
    """Registered root frames are dropped when each task ends (else frames and locals leak)."""

    async def child(go: trio.Event) -> None:
        await go.wait()

    async def trio_main() -> int:
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            with pyproperf.labeled("k", "v"):
                for _ in range(20):
                    nursery.start_soon(child, go)
            await trio.testing.wait_all_tasks_blocked()
            registered = len(_labels.frame_labels)
            go.set()
        return registered

    async def setter() -> None:
        pyproperf.set_goroutine_labels(pyproperf.with_labels(None, pyproperf.labels("k", "w")))
        await trio.sleep(0)

    async def trio_set() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(setter)

    async def uvloop_main() -> int:
        with pyproperf.labeled("k", "v"):
            tasks = [asyncio.get_running_loop().create_task(child_aio()) for _ in range(20)]
        n = len(_labels.frame_labels)
        await asyncio.gather(*tasks)
        return n

    async def child_aio() -> None:
        await asyncio.sleep(0)

    assert trio.run(trio_main) >= 20  # positive control: they were registered
    trio.run(trio_set)
    assert uvloop.run(uvloop_main()) >= 20
    assert not _labels.frame_labels


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10: a suspended frame holds its locals itself, so the registered frame keeps "
    "the pending task alive (documented in docs/labels.md)",
)
def test_registration_of_a_task_destroyed_unfinished_is_dropped() -> None:
    """A loop closed with a labelled task still pending: the task never ends, its done
    callbacks never run; when it is destroyed its registration goes too (no frame leaks)."""

    async def forever(fut: asyncio.Future[None]) -> None:
        await fut

    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = new_loop()
        with pyproperf.labeled("k", "v"):
            task = loop.create_task(forever(loop.create_future()))
        loop.run_until_complete(asyncio.sleep(0))
        assert _labels.frame_labels  # positive control: registered, and pending
        loop.close()
        del task
        gc.collect()
        assert not _labels.frame_labels, new_loop


# -- worker threads: trio.to_thread and anyio.to_thread ---------------------------------------

TO_THREAD_PROGRAM = textwrap.dedent("""
    import json, sys
    import anyio, anyio.to_thread, trio
    import pyproperf

    from tests.cpu_workloads import shared_work

    used = {}

    async def calls(run_sync, prefix):
        with pyproperf.labeled("request", prefix):
            used[prefix] = await run_sync(shared_work, 0.3)
        used[prefix + "-plain"] = await run_sync(shared_work, 0.15)

    async def trio_main():
        # trio's thread cache starts a thread for this job, in a labelled region: the
        # thread serves the unlabelled jobs below, and must not carry the labels.
        done = []
        with pyproperf.labeled("request", "lowlevel"):
            trio.lowlevel.start_thread_soon(
                lambda: used.__setitem__("lowlevel", shared_work(0.2)), done.append)
        while not done:
            await trio.sleep(0.005)
        await calls(trio.to_thread.run_sync, "trio")
        await calls(anyio.to_thread.run_sync, "anyio-trio")

    with open(sys.argv[1], "wb") as f:
        pyproperf.start_cpu_profile(f)
        trio.run(trio_main)
        anyio.run(calls, anyio.to_thread.run_sync, "anyio-asyncio", backend="asyncio")
        pyproperf.stop_cpu_profile()
    print(json.dumps(used))
""")


@pytest.mark.slow
def test_worker_threads_of_trio_and_anyio_carry_the_callers_labels(tmp_path: Path) -> None:
    """In a child process: trio keeps its idle worker threads for 10 s."""
    script = tmp_path / "to_thread.py"
    script.write_text(TO_THREAD_PROGRAM)
    path = tmp_path / "cpu.pb.gz"
    out = subprocess.run(
        [sys.executable, str(script), str(path)],
        check=False, capture_output=True, text=True, timeout=120, env=_CHILD_ENV,
    )
    assert out.returncode == 0, out.stderr
    used = json.loads(out.stdout)
    per_label = tag_seconds(path, "request")
    assert set(per_label) == {"lowlevel", "trio", "anyio-trio", "anyio-asyncio"}, per_label
    for name, seconds in per_label.items():
        assert 0.65 * used[name] <= seconds <= 1.35 * used[name], (name, per_label, used)


# -- the goroutine profile: trio's and anyio's tasks, uvloop's tasks ----------------------------


async def sleeper() -> None:
    await trio.sleep(60)


async def receiver(channel: Any) -> None:
    await channel.receive()


async def locker(lock: trio.Lock) -> None:
    await lock.acquire()


async def reader(sock: Any) -> None:
    await sock.recv(1)


async def anyio_waiter(event: anyio.Event) -> None:
    await event.wait()


async def sender(channel: Any) -> None:
    await channel.send(1)


async def semaphore_taker(sem: trio.Semaphore) -> None:
    await sem.acquire()


async def condition_waiter(cond: trio.Condition) -> None:
    async with cond:
        await cond.wait()


def _goroutine_dumps(in_task: bool) -> tuple[str, bytes]:
    """Debug=2 text and the proto, from the trio thread or (``in_task=False``) another thread."""
    out: dict[str, Any] = {}

    def take() -> None:
        p = pyproperf.lookup("goroutine")
        assert p is not None
        out["text"] = p.render(2).decode()
        out["proto"] = p.render(0)

    async def main() -> None:
        _send, receive = trio.open_memory_channel[int](0)
        lock = trio.Lock()
        await lock.acquire()
        a, b = trio.socket.socketpair()
        event = anyio.Event()
        to_nobody, _from_nobody = trio.open_memory_channel[int](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, to_nobody, name="sender")
            nursery.start_soon(semaphore_taker, trio.Semaphore(0), name="semaphore")
            nursery.start_soon(condition_waiter, trio.Condition(), name="condition")
            with pyproperf.labeled("job", "sleepy"):
                nursery.start_soon(sleeper, name="sleeper")
            nursery.start_soon(receiver, receive, name="receiver")
            nursery.start_soon(locker, lock, name="locker")
            nursery.start_soon(reader, a, name="reader")
            async with anyio.create_task_group() as tg:
                with pyproperf.labeled("job", "anyio"):
                    tg.start_soon(anyio_waiter, event, name="anyio-waiter")
                await trio.testing.wait_all_tasks_blocked()
                if in_task:
                    take()
                else:  # the trio thread blocks meanwhile: every task stays as it is
                    t = threading.Thread(target=take)
                    t.start()
                    t.join()
                event.set()
            nursery.cancel_scope.cancel()
        a.close()
        b.close()

    trio.run(main)
    return out["text"], out["proto"]


@pytest.mark.parametrize("in_task", [True, False], ids=["from-trio", "from-another-thread"])
def test_goroutine_lists_trio_and_anyio_tasks(in_task: bool, tmp_path: Path) -> None:
    text, proto = _goroutine_dumps(in_task)
    units = {d.name: d for d in parse_dump(text)}
    expected = {
        "sleeper": ("sleep", f"{MOD}.sleeper", '{job: sleepy}'),
        "receiver": ("chan receive", f"{MOD}.receiver", ""),
        "locker": ("sync.Mutex.Lock", f"{MOD}.locker", ""),
        "reader": ("IO wait", f"{MOD}.reader", ""),
        "anyio-waiter": ("chan receive", f"{MOD}.anyio_waiter", '{job: anyio}'),
        "sender": ("chan send", f"{MOD}.sender", ""),
        "semaphore": ("semacquire", f"{MOD}.semaphore_taker", ""),
        "condition": ("sync.Cond.Wait", f"{MOD}.condition_waiter", ""),
        # The task that opened the nursery and waits for its children (trio's init task).
        "<init>": ("sync.WaitGroup.Wait", "trio._core._run.Runner.init", ""),
    }
    for name, (state, func, labels) in expected.items():
        assert name in units, (name, sorted(units))
        d = units[name]
        assert (d.kind, d.state, d.labels) == ("task", state, labels), d
        assert func in d.funcs, d.funcs
    # A trio task's own coroutine is the root of its stack (anyio's wraps it in its own).
    assert units["sleeper"].funcs[-2:] == ["trio._timeouts.sleep", f"{MOD}.sleeper"]
    assert units["anyio-waiter"].funcs[-2] == f"{MOD}.anyio_waiter"
    # The proto, read by go tool pprof: one sample per unit, labels attached.
    path = tmp_path / "goroutine.pb.gz"
    path.write_bytes(proto)
    check_valid(load(proto))
    by_root = {}
    for t in traces(path):
        stack = t["stack"]
        assert isinstance(stack, list)
        by_root[stack[-1]] = t["labels"]
    assert by_root[f"{MOD}.sleeper"] == {"job": "sleepy"}, by_root
    assert by_root["anyio._core._tasks.TaskHandle._run_coro"] == {"job": "anyio"}, by_root
    assert by_root[f"{MOD}.receiver"] == {}, by_root
    assert "job" in pprof("-tags", path)


def test_goroutine_lists_uvloop_tasks(tmp_path: Path) -> None:
    async def waiter(ev: asyncio.Event) -> None:
        await ev.wait()

    async def main() -> tuple[str, bytes]:
        ev = asyncio.Event()
        with pyproperf.labeled("job", "uv"):
            t = asyncio.get_running_loop().create_task(waiter(ev), name="uv-waiter")
        await asyncio.sleep(0)
        p = pyproperf.lookup("goroutine")
        assert p is not None
        text, proto = p.render(2).decode(), p.render(0)
        ev.set()
        await t
        return text, proto

    text, proto = uvloop.run(main())
    units = {d.name: d for d in parse_dump(text)}
    d = units["uv-waiter"]
    assert (d.kind, d.state, d.labels) == ("task", "chan receive", '{job: uv}'), d
    waiter_name = f"{MOD}.test_goroutine_lists_uvloop_tasks.<locals>.waiter"
    assert d.funcs[-1] == waiter_name
    # The proto, read by go tool pprof: the task's stack with its label.
    path = tmp_path / "goroutine.pb.gz"
    path.write_bytes(proto)
    check_valid(load(proto))
    by_root = {t["stack"][-1]: t["labels"] for t in traces(path)}  # type: ignore[index]
    assert by_root[waiter_name] == {"job": "uv"}, by_root


# -- uvicorn on uvloop: a labelled ASGI app profiled through its own /debug/pprof/ ----------

UVICORN_APP = textwrap.dedent("""
    import asyncio, json
    import anyio.to_thread
    import pyproperf, pyproperf.http
    from pyproperf import _sampler

    from tests.cpu_workloads import shared_work

    async def part(seconds):
        used = 0.0
        while used < seconds:
            used += shared_work(min(0.01, seconds - used))
            await asyncio.sleep(0)
        return used

    async def work(scope, receive, send):
        path = scope["path"]
        if path == "/sampling":
            body = b"yes" if _sampler.engine.sampling else b"no"
        else:
            endpoint, seconds = path.split("/")[1:]
            seconds = float(seconds)
            with pyproperf.labeled("endpoint", endpoint):
                loop = type(asyncio.get_running_loop()).__module__
                # Sub-tasks created in the region, and a thread from anyio's pool.
                parts = [asyncio.get_running_loop().create_task(part(seconds / 3))
                         for _ in range(2)]
                used = sum(await asyncio.gather(*parts))
                used += await anyio.to_thread.run_sync(shared_work, seconds / 3)
            body = json.dumps({"loop": loop, "used": used}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    app = pyproperf.http.make_asgi_app(work)
""")


def _get(port: int, target: str, timeout: float = 60) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (target, resp.status, body)
        return body
    finally:
        conn.close()


@pytest.mark.slow
def test_uvicorn_on_uvloop_profile_shows_endpoint_labels(tmp_path: Path) -> None:
    (tmp_path / "labelled_app.py").write_text(UVICORN_APP)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "labelled_app:app",
           "--loop", "uvloop", "--port", str(port), "--log-level", "warning", "--lifespan", "off"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_CHILD_ENV)
    try:
        deadline = time.monotonic() + 30
        while True:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        profile: dict[str, bytes] = {}
        client = threading.Thread(
            target=lambda: profile.update(body=_get(port, "/debug/pprof/profile?seconds=8"))
        )
        client.start()
        deadline = time.monotonic() + 30
        while _get(port, "/sampling") != b"yes":
            assert time.monotonic() < deadline, "the profile never started"
            time.sleep(0.02)
        results: dict[str, list[dict[str, Any]]] = {"users": [], "orders": []}
        requests = [("users", 0.3), ("orders", 0.6), ("users", 0.3), ("orders", 0.6)]

        def call(endpoint: str, seconds: float) -> None:
            results[endpoint].append(json.loads(_get(port, f"/{endpoint}/{seconds}")))

        callers = [threading.Thread(target=call, args=r) for r in requests]
        for c in callers:
            c.start()
        for c in callers:
            c.join()
        client.join(60)
        assert "body" in profile
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert sum(map(len, results.values())) == len(requests), (results, err)
    assert all(r["loop"].startswith("uvloop") for rs in results.values() for r in rs), results
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(profile["body"])
    per_label = tag_seconds(path, "endpoint")
    for endpoint, rs in results.items():
        truth = sum(r["used"] for r in rs)
        got = per_label.get(endpoint, 0.0)
        assert 0.7 * truth <= got <= 1.3 * truth, (endpoint, got, truth, per_label, err)
    assert re.search(r"endpoint: Total", pprof("-tags", path))


def test_goroutine_lists_trio_tasks_while_the_run_waits_for_io() -> None:
    """A trio server is idle most of the time: its run waits for I/O with no task on the
    stack.  A profile taken from another thread (the HTTP endpoint's) still lists its tasks."""
    token: list[Any] = []
    ready = threading.Event()
    stop: list[trio.Event] = []

    async def main() -> None:
        stop.append(trio.Event())
        async with trio.open_nursery() as nursery:
            for i in range(3):
                with pyproperf.labeled("handler", str(i)):
                    nursery.start_soon(sleeper, name=f"handler-{i}")
            await trio.testing.wait_all_tasks_blocked()
            token.append(trio.lowlevel.current_trio_token())
            ready.set()
            await stop[0].wait()  # now every task waits: the run is in its I/O wait
            nursery.cancel_scope.cancel()

    t = threading.Thread(target=trio.run, args=(main,))
    t.start()
    try:
        assert ready.wait(30)
        deadline = time.monotonic() + 30
        while True:  # until the trio thread's stack shows the idle run, not a task
            p = pyproperf.lookup("goroutine")
            assert p is not None
            units = {d.name: d for d in parse_dump(p.render(2).decode())}
            trio_thread = next(d for d in units.values() if d.kind == "thread"
                               and any(f.startswith("trio.") for f in d.funcs))
            if not any(f.endswith(".main") for f in trio_thread.funcs):
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(3):
            d = units[f"handler-{i}"]
            assert (d.kind, d.state, d.labels) == ("task", "sleep", f"{{handler: {i}}}"), d
        main_task = next(d for name, d in units.items() if name.endswith(".main"))
        assert main_task.state == "chan receive", main_task  # trio.Event.wait
    finally:
        if token:
            token[0].run_sync_soon(stop[0].set)
        t.join(30)


def test_task_waiting_for_a_worker_thread_keeps_its_labels() -> None:
    """A task awaiting anyio.to_thread.run_sync keeps its labels (goroutine, label()) while
    the job runs; the worker thread running the job carries them too."""
    seen: dict[str, Any] = {}

    def job(started: threading.Event, go: threading.Event) -> None:
        started.set()
        go.wait(30)

    async def handler(started: threading.Event, go: threading.Event) -> None:
        await anyio.to_thread.run_sync(job, started, go)
        seen["after"] = pyproperf.label(None, "req")

    async def main() -> None:
        started, go = threading.Event(), threading.Event()
        with pyproperf.labeled("req", "A"):
            t = asyncio.get_running_loop().create_task(handler(started, go), name="in-to-thread")
        while not started.is_set():
            await asyncio.sleep(0.001)
        p = pyproperf.lookup("goroutine")
        assert p is not None
        seen["units"] = parse_dump(p.render(2).decode())
        go.set()
        await t

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    units = {d.name: d for d in seen["units"]}
    assert units["in-to-thread"].labels == "{req: A}", units["in-to-thread"]
    worker = [d for d in seen["units"]
              if d.kind == "thread" and any(f.endswith("<locals>.job") for f in d.funcs)]
    assert len(worker) == 1 and worker[0].labels == "{req: A}", worker
    assert seen["after"] == ("A", True)
