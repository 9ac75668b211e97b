"""The goroutine and threadcreate profiles: threads, greenlets and asyncio tasks."""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import greenlet
import pytest

import pyproperf
from pyproperf import _goroutine, _labels
from tests.pprof_tool import check_valid, load, pprof, stacks, traces

MOD = __name__


def goroutine() -> pyproperf.Profile:
    p = pyproperf.lookup("goroutine")
    assert p is not None
    return p


# -- parsing the debug=2 dump ----------------------------------------------------------------

HEADER = re.compile(
    r'^goroutine (\d+) \[([^,\]]+), (thread|greenlet|task) "((?:[^"\\]|\\.)*)"\]( \{.*\})?:$'
)


@dataclass
class Dumped:
    uid: int
    state: str
    kind: str
    name: str
    labels: str
    funcs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    created_by: str = ""
    created_at: str = ""


def parse_dump(text: str) -> list[Dumped]:
    assert text.endswith("\n") and not text.endswith("\n\n")
    out = []
    for block in text[:-1].split("\n\n"):
        rows = block.split("\n")
        m = HEADER.match(rows[0])
        assert m, rows[0]
        d = Dumped(int(m[1]), m[2], m[3], m[4], (m[5] or "").strip())
        body = rows[1:]
        assert len(body) % 2 == 0, block
        for call, where in zip(body[::2], body[1::2], strict=True):
            assert where.startswith("\t"), block
            assert re.fullmatch(r"\t.*:\d+ \+0x[0-9a-f]+", where), where
            if call.startswith("created by "):
                d.created_by, d.created_at = call[len("created by ") :], where.strip()
            else:
                assert call.endswith("(...)"), call
                assert not d.created_by, "frames after 'created by'"
                d.funcs.append(call[: -len("(...)")])
                d.lines.append(where.strip())
        out.append(d)
    return out


def dump() -> list[Dumped]:
    return parse_dump(goroutine().render(2).decode())


# -- a world with every kind of unit ------------------------------------------------------------


def thread_worker(ev: threading.Event) -> None:
    ev.wait()


def labeled_thread_worker(ev: threading.Event) -> None:
    with pyproperf.labeled("role", "labeled_thread"):
        ev.wait()


def plain_worker(main: Any) -> None:
    main.switch()


def labeled_plain_worker(main: Any) -> None:
    with pyproperf.labeled("role", "plain_greenlet"):
        main.switch()


def gevent_worker() -> None:
    gevent.sleep(60)


async def task_leaf(ev: asyncio.Event) -> None:
    await ev.wait()


async def task_worker(ev: asyncio.Event) -> None:
    await task_leaf(ev)


async def labeled_task_worker(ev: asyncio.Event) -> None:
    with pyproperf.labeled("role", "task"):
        await task_leaf(ev)


@dataclass
class World:
    threads: list[threading.Thread]
    plain: list[Any]
    gevents: list[Any]
    tasks: list[Any]
    loop_thread: threading.Thread


@contextmanager
def world() -> Iterator[World]:
    ev = threading.Event()
    threads = [threading.Thread(target=thread_worker, args=(ev,), name=f"w-{i}") for i in range(3)]
    threads.append(threading.Thread(target=labeled_thread_worker, args=(ev,), name="w-labeled"))
    for t in threads:
        t.start()

    main = greenlet.getcurrent()
    plain = [greenlet.greenlet(plain_worker) for _ in range(2)]
    plain.append(greenlet.greenlet(labeled_plain_worker))
    for g in plain:
        g.switch(main)

    gevents = [gevent.spawn(gevent_worker) for _ in range(2)]
    for i, g in enumerate(gevents):
        g.name = f"gevent-{i}"
    gevent.sleep(0)  # start them: they park in gevent.sleep

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    tasks: list[Any] = []
    aev: list[asyncio.Event] = []

    async def serve() -> None:
        aev.append(asyncio.Event())
        tasks.extend([asyncio.create_task(task_worker(aev[0]), name=f"task-{i}") for i in range(2)])
        tasks.append(asyncio.create_task(labeled_task_worker(aev[0]), name="task-labeled"))
        await asyncio.sleep(0)
        ready.set()
        await asyncio.gather(*tasks)

    loop_thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="loop")
    loop_thread.start()
    assert ready.wait(10)
    try:
        yield World(threads, plain, gevents, tasks, loop_thread)
    finally:
        ev.set()
        loop.call_soon_threadsafe(aev[0].set)
        gevent.killall(gevents)
        for g in plain:
            g.switch()
        for t in [*threads, loop_thread]:
            t.join(10)
        loop.close()
        gevent.get_hub().destroy(destroy_loop=True)


def by_name(units: list[Dumped]) -> dict[str, Dumped]:
    return {u.name: u for u in units}


def test_every_kind_of_unit_is_found_with_its_stack_and_name() -> None:
    with world() as w:
        units = dump()
        count = goroutine().count()
    named = by_name(units)
    uids = [u.uid for u in units]
    assert len(uids) == len(set(uids)), "a unit listed twice"
    assert count == len(units)

    me = units[0]
    assert (me.kind, me.state, me.name) == ("thread", "running", threading.current_thread().name)
    assert f"{MOD}.test_every_kind_of_unit_is_found_with_its_stack_and_name" in me.funcs
    assert not any(f.startswith("pyproperf.") for f in me.funcs)

    for t in w.threads[:3]:
        u = named[t.name]
        assert u.kind == "thread" and u.state == "waiting"
        assert u.funcs[:3] == [
            "threading.Condition.wait",
            "threading.Event.wait",
            f"{MOD}.thread_worker",
        ]
        assert u.created_by == f"{MOD}.world in goroutine {me.uid}"
        assert u.created_at.startswith(f"{__file__}:")
        assert u.labels == ""
    lab = named["w-labeled"]
    assert f"{MOD}.labeled_thread_worker" in lab.funcs
    assert lab.labels == "{role: labeled_thread}"

    plain = [u for u in units if u.kind == "greenlet" and u.name == "greenlet"]
    assert sorted(u.funcs[0] for u in plain) == [
        f"{MOD}.labeled_plain_worker",
        f"{MOD}.plain_worker",
        f"{MOD}.plain_worker",
    ]
    assert all(u.state == "suspended" and len(u.funcs) == 1 for u in plain)
    assert {u.labels for u in plain} == {"", "{role: plain_greenlet}"}

    for i in range(2):
        u = named[f"gevent-{i}"]
        assert u.kind == "greenlet" and u.state == "suspended"
        assert u.funcs == ["gevent.hub.sleep", f"{MOD}.gevent_worker"]
        # 3.10/3.11 run the list comprehension in a frame of its own (and 3.10's
        # qualname lookup does not see through @contextmanager).
        assert re.fullmatch(
            rf"{MOD}\.(world|world\.<locals>\.<listcomp>|<listcomp>) in goroutine {me.uid}",
            u.created_by,
        )
    hubs = [u for u in units if u.name == "Hub"]
    assert len(hubs) == 1 and hubs[0].funcs == ["gevent.hub.Hub.run"]

    for name in ("task-0", "task-1", "task-labeled"):
        u = named[name]
        assert u.kind == "task" and u.state == "chan receive"  # asyncio.Event.wait: Go's <-ch
        assert u.funcs[0] == "asyncio.locks.Event.wait"
        assert u.funcs[1] == f"{MOD}.task_leaf"
        assert u.funcs[2] == f"{MOD}.{'labeled_' if name == 'task-labeled' else ''}task_worker"
    assert named["task-labeled"].labels == "{role: task}"
    assert named["task-0"].labels == ""
    loop = named["loop"]
    assert loop.kind == "thread" and "asyncio.base_events.BaseEventLoop.run_forever" in loop.funcs

    # The task running gather() is pending too: it waits for the others.
    kinds = sorted(u.kind for u in units if u.name in {t.get_name() for t in w.tasks})
    assert kinds == ["task"] * 3


def parse_debug_1(text: str) -> tuple[int, list[tuple[int, str | None, list[str]]]]:
    """(total, [(count, labels line or None, functions leaf first)]) from Go's count layout."""
    lines = text.split("\n")
    m = re.fullmatch(r"goroutine profile: total (\d+)", lines[0])
    assert m, lines[0]
    groups = []
    i = 1
    while i < len(lines) - 1:
        at = re.fullmatch(r"(\d+) @((?: 0x[0-9a-f]+)*)", lines[i])
        assert at, lines[i]
        i += 1
        labels = None
        if lines[i].startswith("# labels: "):
            labels = lines[i][len("# labels: ") :]
            i += 1
        funcs = []
        while lines[i]:
            cells = [c for c in lines[i].split("\t") if c]
            assert cells[0] == "#" and re.fullmatch(r"0x[0-9a-f]+", cells[1]), lines[i]
            funcs.append(cells[2].rsplit("+0x", 1)[0])
            i += 1
        assert len(funcs) == len(at[2].split()), "one frame line per address"
        groups.append((int(at[1]), labels, funcs))
        i += 1
    assert lines[-1] == ""
    return int(m[1]), groups


def test_debug_1_groups_and_labels() -> None:
    with world():
        text = goroutine().render(1).decode()
    total, groups = parse_debug_1(text)
    assert sum(n for n, _, _ in groups) == total
    assert [n for n, _, _ in groups] == sorted((n for n, _, _ in groups), reverse=True)

    def group(fn: str) -> tuple[int, str | None]:
        (found,) = [(n, labels) for n, labels, funcs in groups if fn in funcs]
        return found

    assert group(f"{MOD}.thread_worker") == (3, None)
    assert group(f"{MOD}.labeled_thread_worker") == (1, '{"role":"labeled_thread"}')
    assert group(f"{MOD}.plain_worker") == (2, None)
    assert group(f"{MOD}.gevent_worker") == (2, None)
    assert group(f"{MOD}.task_worker") == (2, None)
    assert group(f"{MOD}.labeled_task_worker") == (1, '{"role":"task"}')


def test_debug_0_read_by_pprof(tmp_path: Path) -> None:
    with world():
        data = goroutine().render(0)
    prof = load(data)
    check_valid(prof)
    st = prof.string_table
    assert [(st[t.type], st[t.unit]) for t in prof.sample_type] == [("goroutine", "count")]
    assert (st[prof.period_type.type], prof.period) == ("goroutine", 1)
    found = {tuple(names[:3]): (values[0], labels) for names, values, labels in stacks(prof)}
    assert found[("threading.Condition.wait", "threading.Event.wait", f"{MOD}.thread_worker")] == (
        3,
        {},
    )
    assert found[(f"{MOD}.plain_worker",)] == (2, {})
    assert found[("gevent.hub.sleep", f"{MOD}.gevent_worker")] == (2, {})
    assert found[
        ("asyncio.locks.Event.wait", f"{MOD}.task_leaf", f"{MOD}.labeled_task_worker")
    ] == (
        1,
        {"role": "task"},
    )
    path = tmp_path / "goroutine.pb.gz"
    path.write_bytes(data)
    rows = traces(path)
    assert sum(int(str(r["value"])) for r in rows) == sum(s.value[0] for s in prof.sample)
    assert any(f"{MOD}.gevent_worker" in r["stack"] for r in rows)  # type: ignore[operator]
    assert "role" in pprof("-tags", path)


def test_running_greenlet_and_task_are_not_listed_twice() -> None:
    out: dict[str, Any] = {}

    def inside_greenlet() -> None:
        out["greenlet"] = dump()

    g = gevent.spawn(inside_greenlet)
    g.join()
    units = out["greenlet"]
    me = units[0]
    assert (
        me.kind == "thread"
        and f"{MOD}.test_running_greenlet_and_task_are_not_listed_twice.<locals>.inside_greenlet"
        in me.funcs
    )
    assert not any(
        u.kind == "greenlet" and any("inside_greenlet" in f for f in u.funcs) for u in units
    )
    # The main greenlet, switched away from, is its own (suspended) unit.
    main = [u for u in units if u.name == "main greenlet"]
    assert (
        len(main) == 1
        and f"{MOD}.test_running_greenlet_and_task_are_not_listed_twice" in main[0].funcs
    )
    gevent.get_hub().destroy(destroy_loop=True)

    async def inside_task() -> None:
        out["task"] = dump()

    asyncio.run(inside_task())
    units = out["task"]
    assert any("inside_task" in f for f in units[0].funcs)
    assert not any(u.kind == "task" and any("inside_task" in f for f in u.funcs) for u in units)


def test_greenlets_are_found_after_promotion_and_in_other_threads() -> None:
    goroutine().render(0)  # tracking is on from here
    main = greenlet.getcurrent()
    early = [greenlet.greenlet(plain_worker) for _ in range(5)]
    for g in early:
        g.switch(main)
    for _ in range(3):
        gc.collect()  # now in the oldest generation
    junk = [[i] for i in range(200_000)]  # and let automatic collections run
    del junk

    in_thread: list[Any] = []
    ev = threading.Event()
    done = threading.Event()

    def other_thread() -> None:
        here = greenlet.getcurrent()
        gs = [greenlet.greenlet(plain_worker) for _ in range(4)]
        for g in gs:
            g.switch(here)
        in_thread.extend(gs)
        ev.set()
        done.wait(10)
        for g in gs:
            g.switch()

    t = threading.Thread(target=other_thread)
    t.start()
    assert ev.wait(10)
    gc.collect()
    try:
        units = dump()
        plain = [u for u in units if u.funcs[:1] == [f"{MOD}.plain_worker"]]
        assert len(plain) == 9
    finally:
        done.set()
        t.join(10)
        for g in early:
            g.switch()


def test_pending_tasks_on_the_current_loop_and_states() -> None:
    async def sleeper() -> None:
        await asyncio.sleep(30)

    async def not_started() -> None:
        await asyncio.sleep(30)

    async def main() -> list[Dumped]:
        s = asyncio.create_task(sleeper(), name="sleeper")
        await asyncio.sleep(0)
        n = asyncio.create_task(not_started(), name="fresh")
        units = dump()
        s.cancel()
        n.cancel()
        await asyncio.gather(s, n, return_exceptions=True)
        return units

    named = by_name(asyncio.run(main()))
    assert named["sleeper"].state == "sleep"
    assert named["sleeper"].funcs == [
        "asyncio.tasks.sleep",
        f"{MOD}.test_pending_tasks_on_the_current_loop_and_states.<locals>.sleeper",
    ]
    assert named["fresh"].state == "runnable"
    assert named["fresh"].funcs[0].endswith("not_started")


def test_asyncio_tasks_blocked_are_named_as_go_names_what_a_goroutine_waits_for() -> None:
    async def blocked(what: str, aw: Any) -> None:
        await aw

    async def main() -> list[Dumped]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        full: asyncio.Queue[int] = asyncio.Queue(1)
        full.put_nowait(1)
        lock = asyncio.Lock()
        await lock.acquire()
        sem = asyncio.Semaphore(0)
        cond = asyncio.Condition()
        accepted: list[asyncio.StreamWriter] = []  # held open: the reader below waits
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def in_cond() -> None:
            async with cond:
                await cond.wait()

        waits = {
            "get": queue.get(), "put": full.put(2), "lock": lock.acquire(),
            "sem": sem.acquire(), "cond": in_cond(), "read": reader.read(1),
        }
        tasks = [asyncio.create_task(blocked(k, aw), name=k) for k, aw in waits.items()]
        for _ in range(5):
            await asyncio.sleep(0)
        units = dump()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, *accepted):
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        return units

    named = by_name(asyncio.run(main()))
    states = {k: named[k].state for k in ("get", "put", "lock", "sem", "cond", "read")}
    assert states == {
        "get": "chan receive", "put": "chan send", "lock": "sync.Mutex.Lock",
        "sem": "semacquire", "cond": "sync.Cond.Wait", "read": "IO wait",
    }
    assert named["get"].funcs[0] == "asyncio.queues.Queue.get"


def test_labels_from_the_labels_module_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """greenlet and task labels come from _labels.labels_of_greenlet / labels_of_task."""
    seen: list[str] = []

    def fake(kind: str) -> Any:
        def get(obj: Any) -> Any:
            seen.append(kind)
            return _labels.labels("kind", kind, "a b", "ü")

        return get

    monkeypatch.setattr(_labels, "labels_of_greenlet", fake("greenlet"), raising=False)
    monkeypatch.setattr(_labels, "labels_of_task", fake("task"), raising=False)
    with world():
        units = dump()
        text = goroutine().render(1).decode()
    assert "greenlet" in seen and "task" in seen
    g = next(u for u in units if u.name == "gevent-0")
    assert g.labels == '{"a b": "\\u00fc", kind: greenlet}'
    assert '# labels: {"a b":"ü", "kind":"task"}' in text


def test_own_threads_are_hidden() -> None:
    ev = threading.Event()
    own = threading.Thread(target=_goroutine._threads, args=([],), name="fake-own")
    # A thread running pyproperf code as its target counts as the profiler's own.
    assert _goroutine._is_own_thread(own)
    user = threading.Thread(target=ev.wait, name="user")
    assert not _goroutine._is_own_thread(user)


def test_snapshot_is_safe_while_units_come_and_go() -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                ts = [threading.Thread(target=lambda: None) for _ in range(5)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                here = greenlet.getcurrent()
                gs = [greenlet.greenlet(plain_worker) for _ in range(20)]
                for g in gs:
                    g.switch(here)
                for g in gs:
                    g.switch()

                async def few() -> None:
                    await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(20)))

                asyncio.run(few())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for _ in range(10):
            for debug in (0, 1, 2):
                goroutine().render(debug)
            goroutine().count()
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert not errors


# -- threadcreate --------------------------------------------------------------------------------


def start_from_a(n: int) -> list[threading.Thread]:
    ts = [threading.Thread(target=lambda: None) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def start_from_b(n: int) -> list[threading.Thread]:
    return start_from_a(n)


def test_threadcreate_records_every_start_with_its_stack(tmp_path: Path) -> None:
    tc = pyproperf.lookup("threadcreate")
    assert tc is not None
    before = tc.count()
    for t in start_from_a(3) + start_from_b(2):
        t.join()
    assert tc.count() == before + 5
    text = tc.render(1).decode()
    assert text.startswith(f"threadcreate profile: total {before + 5}\n")
    assert "# labels" not in text
    data = tc.render(0)
    prof = load(data)
    check_valid(prof)
    st = prof.string_table
    assert [(st[t.type], st[t.unit]) for t in prof.sample_type] == [("threadcreate", "count")]
    here = f"{MOD}.test_threadcreate_records_every_start_with_its_stack"
    found = {tuple(n[: n.index(here) + 1]): v[0] for n, v, _ in stacks(prof) if here in n}
    assert found == {
        (f"{MOD}.start_from_a", here): 3,
        (f"{MOD}.start_from_a", f"{MOD}.start_from_b", here): 2,
    }
    path = tmp_path / "tc.pb.gz"
    path.write_bytes(data)
    assert f"{MOD}.start_from_b" in pprof("-traces", path)
    assert tc.render(2) == tc.render(1)


def test_thread_hook_keeps_thread_start_behaviour() -> None:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        t.start()
    # One pyproperf wrapper (threadcreate and labels share it), leading to the original.
    fn: Any = threading.Thread.start
    chain = [fn]
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
        chain.append(fn)
    assert [f.__module__ for f in chain] == ["pyproperf._hooks", "threading"]
    assert threading.Thread.start.__doc__


def test_import_does_not_load_asyncio_or_greenlet() -> None:
    import subprocess

    code = (
        "import sys, pyproperf; p = pyproperf.lookup('goroutine'); p.render(2); p.count(); "
        "print([m for m in ('asyncio', 'greenlet', 'gevent') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


MONKEY = """
import pyproperf
from gevent import monkey; monkey.patch_all()
import threading, time
def patched_worker(): time.sleep(30)
ts = [threading.Thread(target=patched_worker, name=f"patched-{i}") for i in range(2)]
for t in ts: t.start()
time.sleep(0.01)
print(pyproperf.lookup("goroutine").render(2).decode(), flush=True)
import os; os._exit(0)
"""


def test_gevent_monkey_patched_threads(tmp_path: Path) -> None:
    """Under monkey-patching, "threads" are greenlets: found, named and attributed."""
    import subprocess

    script = tmp_path / "patched.py"
    script.write_text(MONKEY)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    named = by_name(parse_dump(out.stdout[:-1]))
    assert named["MainThread"].uid == 1 and named["MainThread"].state == "running"
    for i in range(2):
        u = named[f"patched-{i}"]
        assert u.kind == "greenlet" and "__main__.patched_worker" in u.funcs
        assert u.created_by == "__main__.<module> in goroutine 1"
        assert u.created_at.startswith(f"{script}:7 ")
