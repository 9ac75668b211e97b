"""The block and mutex profiles: ground truth, Go's sampling, layouts, and safety.

Ground-truth tests make threads (or tasks) wait for known times, measure
each wait themselves, and compare with the profile: delay per stack within
10 %, counts exact at rate 1.  Like Go's own tests they retry once with
twice the durations before failing, since a 2-core CI box is noisy.  The
sampling tests push synthetic events through Go's debiasing and check that
totals are unbiased over repeated seeded runs.
"""

from __future__ import annotations

import _thread
import asyncio
import io
import os
import pickle
import queue
import random
import re
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyproperf
from pyproperf import _contention, _contention_locks, _hooks
from pyproperf import _contention_state as _st
from tests.pprof_tool import check_valid, load, pprof, stacks, top_by_name

M = __name__  # "tests.test_contention": the module name pprof shows for these functions
ns = time.monotonic_ns


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """Start from empty records; end with both profiles off and nothing of ours installed."""
    pyproperf.set_block_profile_rate(0)
    pyproperf.set_mutex_profile_fraction(0)
    _st.reset()
    _contention._instr.unwraps = 0  # these tests switch far more often than a program would
    yield
    pyproperf.set_block_profile_rate(0)
    pyproperf.set_mutex_profile_fraction(0)
    for name in ("block", "mutex"):
        for names, _values, _labels in stacks(load(_contention.render(name, 0))):
            assert names and not names[0].startswith("pyproperf."), (
                f"{name}: a record of the profiler's own waiting: {names}"
            )
    _st.reset()
    assert_untouched()


def assert_untouched() -> None:
    """With both profiles off, the primitives are the interpreter's own."""
    assert threading.Lock in (_thread.allocate_lock, getattr(_thread, "LockType", None))
    assert threading._CRLock is _thread.RLock  # type: ignore[attr-defined]
    for fn in (threading.Condition.wait, threading.Event.wait, threading.Semaphore.acquire,
               threading.Semaphore.__enter__, threading.Barrier.wait, threading.Thread.join,
               queue.Queue.get, queue.Queue.put, queue.Queue.join, asyncio.Lock.acquire,
               asyncio.Lock.release, asyncio.Queue.get, asyncio.Event.wait):
        assert not hasattr(fn, "__wrapped__"), f"{fn} still wrapped"
    assert "asyncio" not in _hooks._finder.watched


def enable(block: int = 1, mutex: int = 1) -> None:
    pyproperf.set_block_profile_rate(block)
    pyproperf.set_mutex_profile_fraction(mutex)


def records(name: str) -> dict[str, list[int]]:
    """Leaf function -> [count, delay ns], summed, from the proto the registry would write."""
    p = load(_contention.render(name, 0))
    check_valid(p)
    out: dict[str, list[int]] = {}
    for names, values, _labels in stacks(p):
        rec = out.setdefault(names[0], [0, 0])
        rec[0] += values[0]
        rec[1] += values[1]
    return out


def leaf(name: str, fn: str) -> list[int]:
    return records(name).get(f"{M}.{fn}", [0, 0])


def assert_close(got_ns: float, want_ns: float, tol: float = 0.10, what: str = "") -> None:
    assert abs(got_ns - want_ns) <= tol * want_ns, (
        f"{what}: profile says {got_ns / 1e6:.2f} ms, measured {want_ns / 1e6:.2f} ms"
    )


def retrying(check: Callable[[float], None]) -> None:
    """Run ``check(scale)``; on failure forget the records and retry once at twice the scale."""
    try:
        check(1.0)
    except AssertionError:
        _st.reset()
        check(2.0)


def start(fn: Callable[..., Any], *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# -- ground truth: two threads on one lock ----------------------------------------------------


def hold_lock(lock: Any, started: threading.Event, secs: float) -> None:
    with lock:
        started.set()
        time.sleep(secs)


def wait_for_lock(lock: Any) -> int:
    t0 = ns()
    with lock:
        t1 = ns()
    return t1 - t0


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_two_threads_one_lock(kind: str, tmp_path: Path) -> None:
    enable()
    holds = (0.04, 0.06, 0.08)

    def check(scale: float) -> None:
        lock = getattr(threading, kind)()
        assert type(lock).__module__ == "pyproperf._contention_locks"
        events = [threading.Event() for _ in holds]

        def holder() -> None:
            for ev, secs in zip(events, holds, strict=True):
                hold_lock(lock, ev, secs * scale)
                time.sleep(0.005)  # let the waiter take it before the next round

        t = start(holder)
        waited = 0
        for ev in events:
            ev.wait()
            waited += wait_for_lock(lock)
        t.join()
        count, delay = leaf("block", "wait_for_lock")
        assert count == len(holds)
        assert_close(delay, waited, what="block delay of wait_for_lock")
        count, delay = leaf("mutex", "hold_lock")
        assert count == len(holds)
        assert_close(delay, waited, what="mutex delay charged to hold_lock")

    retrying(check)

    # go tool pprof reads the same numbers back.
    for name, fn in (("block", "wait_for_lock"), ("mutex", "hold_lock")):
        path = tmp_path / f"{name}.pb.gz"
        lookup = pyproperf.lookup(name)
        assert lookup is not None
        lookup.write_to(str(path))
        rows = top_by_name(path, "-sample_index=delay")
        want = leaf(name, fn)[1] / 1e9
        got = rows[f"{M}.{fn}"].flat
        assert abs(got - want) <= 0.01 * want, f"pprof shows {got}s for {fn}, profile has {want}s"
        rows = top_by_name(path, "-sample_index=contentions")
        assert rows[f"{M}.{fn}"].flat == len(holds)


# -- ground truth: a consumer blocked on Queue.get --------------------------------------------


def consume(q: Any) -> int:
    t0 = ns()
    q.get()
    return ns() - t0


def produce(q: Any, item: object) -> int:
    t0 = ns()
    q.put(item)
    return ns() - t0


@pytest.mark.parametrize("cls", [queue.Queue, queue.LifoQueue, queue.PriorityQueue])
def test_queue_get_and_put(cls: type[queue.Queue[int]]) -> None:
    enable()

    def check(scale: float) -> None:
        q = cls(maxsize=1)
        t = start(lambda: (time.sleep(0.08 * scale), q.put(1)))
        waited_get = consume(q)
        t.join()
        q.put(2)
        t = start(lambda: (time.sleep(0.06 * scale), q.get()))
        waited_put = produce(q, 3)
        t.join()
        count, delay = leaf("block", "consume")
        assert count == 1, "a Queue.get is one event, not one per lock or condition inside it"
        assert_close(delay, waited_get, what="Queue.get")
        count, delay = leaf("block", "produce")
        assert count == 1
        assert_close(delay, waited_put, what="Queue.put")

    retrying(check)


def test_queue_made_before_profiling_is_covered() -> None:
    q: queue.Queue[int] = queue.Queue()
    enable()

    def check(scale: float) -> None:
        t = start(lambda: (time.sleep(0.06 * scale), q.put(1)))
        waited = consume(q)
        t.join()
        count, delay = leaf("block", "consume")
        assert count == 1
        assert_close(delay, waited, what="Queue.get on an old queue")

    retrying(check)


# -- ground truth: asyncio ---------------------------------------------------------------------


async def hold_async_lock(lock: asyncio.Lock, started: asyncio.Event, secs: float) -> None:
    async with lock:
        started.set()
        await asyncio.sleep(secs)


async def wait_async_lock(lock: asyncio.Lock) -> int:
    t0 = ns()
    async with lock:
        t1 = ns()
    return t1 - t0


def test_asyncio_tasks_on_one_lock() -> None:
    enable()
    holds = (0.04, 0.07)

    async def main(scale: float) -> int:
        lock = asyncio.Lock()
        waited = 0
        for secs in holds:
            started = asyncio.Event()
            holder = asyncio.create_task(hold_async_lock(lock, started, secs * scale))
            await started.wait()
            waited += await wait_async_lock(lock)
            await holder
        return waited

    def check(scale: float) -> None:
        waited = asyncio.run(main(scale))
        count, delay = leaf("block", "wait_async_lock")
        assert count == len(holds)
        assert_close(delay, waited, what="asyncio.Lock wait")
        count, delay = leaf("mutex", "hold_async_lock")
        assert count == len(holds)
        assert_close(delay, waited, what="asyncio.Lock charged to the holder")

    retrying(check)


def test_asyncio_cancel_timeout_and_tasks() -> None:
    """Cancelled and timed-out waits are recorded, deregistered, and the lock keeps working."""
    enable()

    async def main() -> None:
        lock = asyncio.Lock()
        await lock.acquire()
        waiter = asyncio.create_task(wait_async_lock(lock))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.02)
        task = asyncio.create_task(lock.acquire())  # a real coroutine, as create_task needs
        await asyncio.sleep(0.01)
        lock.release()
        assert await task is True
        assert not lock.__dict__.get("_pyproperf_waiters")
        lock.release()
        async with lock:
            pass
        assert not lock.locked()

    asyncio.run(main())
    count, delay = leaf("block", "wait_async_lock")
    assert count == 1 and delay >= 15_000_000


async def blocked_async(kind: str, obj: Any) -> int:
    t0 = ns()
    if kind == "event":
        await obj.wait()
    elif kind == "condition":
        async with obj:
            await obj.wait()
    elif kind == "semaphore":
        async with obj:
            pass
    elif kind == "queue_get":
        await obj.get()
    elif kind == "queue_put":
        await obj.put(2)
    elif kind == "queue_join":
        await obj.join()
    return ns() - t0


@pytest.mark.parametrize(
    "kind", ["event", "condition", "semaphore", "queue_get", "queue_put", "queue_join"]
)
def test_asyncio_waits(kind: str) -> None:
    enable()

    async def main(scale: float) -> int:
        obj: Any
        if kind == "event":
            obj = asyncio.Event()
        elif kind == "condition":
            obj = asyncio.Condition()
        elif kind == "semaphore":
            obj = asyncio.Semaphore(0)
        else:
            obj = asyncio.Queue(maxsize=1)
            if kind in ("queue_put", "queue_join"):
                obj.put_nowait(1)

        async def release() -> None:
            await asyncio.sleep(0.06 * scale)
            if kind == "event":
                obj.set()
            elif kind == "condition":
                async with obj:
                    obj.notify()
            elif kind == "semaphore":
                obj.release()
            elif kind == "queue_get":
                obj.put_nowait(1)
            elif kind == "queue_put":
                obj.get_nowait()
            else:
                obj.get_nowait()
                obj.task_done()

        releaser = asyncio.create_task(release())
        waited = await blocked_async(kind, obj)
        await releaser
        # Cannot block: no event.
        if kind == "event":
            await obj.wait()
        return waited

    def check(scale: float) -> None:
        waited = asyncio.run(main(scale))
        count, delay = leaf("block", "blocked_async")
        assert count == 1
        assert_close(delay, waited, what=f"asyncio {kind}")

    retrying(check)


# -- every other threading wait -----------------------------------------------------------------


def blocked_in(kind: str, obj: Any) -> int:
    t0 = ns()
    if kind == "condition":
        with obj:
            obj.wait()
    elif kind == "wait_for":
        with obj:
            obj.wait_for(lambda: getattr(obj, "flag", False))
    elif kind in ("event", "barrier"):
        obj.wait()
    elif kind in ("semaphore", "bounded", "lock", "rlock"):
        obj.acquire()
        obj.release()
    elif kind == "semaphore_with":
        with obj:
            pass
    elif kind == "join":
        obj.join()
    return ns() - t0


def _make(kind: str) -> tuple[Any, Callable[[], None]]:
    """An object to wait on and what ends the wait."""
    if kind in ("condition", "wait_for"):
        cond = threading.Condition()

        def notify() -> None:
            with cond:
                cond.flag = True  # type: ignore[attr-defined]
                cond.notify_all()

        return cond, notify
    if kind == "event":
        ev = threading.Event()
        return ev, ev.set
    if kind in ("semaphore", "semaphore_with"):
        sem = threading.Semaphore(0)
        return sem, sem.release
    if kind == "bounded":
        bsem = threading.BoundedSemaphore(1)
        bsem.acquire()
        return bsem, bsem.release
    if kind == "barrier":
        barrier = threading.Barrier(2)
        return barrier, lambda: barrier.wait()  # noqa: PLW0108
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["condition", "wait_for", "event", "semaphore", "semaphore_with", "bounded", "barrier",
     "join", "lock", "rlock"],
)
def test_threading_waits(kind: str) -> None:
    enable()

    def check(scale: float) -> None:
        secs = 0.06 * scale
        if kind == "join":
            obj: Any = start(time.sleep, secs)
            helper = None
        elif kind in ("lock", "rlock"):
            obj = threading.Lock() if kind == "lock" else threading.RLock()
            started = threading.Event()
            helper = start(hold_lock, obj, started, secs)
            started.wait()
        else:
            obj, end = _make(kind)
            helper = start(lambda: (time.sleep(secs), end()))
        waited = blocked_in(kind, obj)
        if helper is not None:
            helper.join()
        count, delay = leaf("block", "blocked_in")
        assert count == 1, f"{kind}: {count} events"
        assert_close(delay, waited, what=kind)

    retrying(check)


def test_objects_made_before_enabling() -> None:
    """Python-level waits of old objects are seen; an old C lock is not (documented)."""
    old_event = threading.Event()
    old_lock = threading.Lock()
    enable()
    t = start(lambda: (time.sleep(0.03), old_event.set()))
    blocked_in("event", old_event)
    t.join()
    started = threading.Event()
    t = start(hold_lock, old_lock, started, 0.03)
    started.wait()
    blocked_in("lock", old_lock)
    t.join()
    assert leaf("block", "blocked_in")[0] == 1  # the event only
    assert leaf("mutex", "hold_lock") == [0, 0]


def test_uncontended_records_nothing() -> None:
    enable()
    lock, rlock, q, ev, sem = (threading.Lock(), threading.RLock(), queue.Queue(),
                               threading.Event(), threading.Semaphore(5))
    ev.set()

    def busy() -> None:
        for i in range(2000):
            with lock:
                pass
            lock.acquire()
            lock.release()
            with rlock, rlock:
                pass
            q.put(i)
            q.get()
            ev.wait()
            with sem:
                pass
            assert lock.acquire(False)
            lock.release()

    busy()
    assert f"{M}.busy" not in records("block")
    assert records("mutex") == {}


# -- Go's rates and sampling -------------------------------------------------------------------


def test_rate_api() -> None:
    assert pyproperf.set_mutex_profile_fraction(-1) == 0
    assert pyproperf.set_mutex_profile_fraction(5) == 0
    assert pyproperf.set_mutex_profile_fraction(-1) == 5
    assert pyproperf.set_mutex_profile_fraction(-7) == 5
    assert pyproperf.set_mutex_profile_fraction(0) == 5
    assert pyproperf.set_block_profile_rate(-3) is None  # type: ignore[func-returns-value]
    assert _st.block_rate == 0
    assert_untouched()
    for bad in (1.5, "1", None, True):
        with pytest.raises(TypeError, match="rate must be an int"):
            pyproperf.set_block_profile_rate(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="rate must be an int"):
            pyproperf.set_mutex_profile_fraction(bad)  # type: ignore[arg-type]
    assert "set_block_profile_rate" in pyproperf.__all__
    assert "set_mutex_profile_fraction" in pyproperf.__all__


def _synthetic(event: Callable[[int, Any], None], delay: int, n: int) -> None:
    frame = sys._getframe()
    for _ in range(n):
        event(delay, frame)


@pytest.mark.parametrize("delay", [100, 700])
def test_block_sampling_is_unbiased(delay: int) -> None:
    """Go's debiasing: waits shorter than the rate count rate/delay each when kept."""
    rate, n = 1000, 20000
    state = random.getstate()
    try:
        counts, delays = [], []
        for seed in range(5):
            random.seed(seed)
            _st.reset()
            _st.block_rate = rate
            _synthetic(_st.block_event, delay, n)
            count, total = leaf("block", "_synthetic")
            counts.append(count)
            delays.append(total)
            assert abs(count - n) <= 0.10 * n, (seed, count)
            assert abs(total - n * delay) <= 0.10 * n * delay, (seed, total)
        # Over the repeated runs the mean is within 3 %.
        assert abs(sum(counts) / 5 - n) <= 0.03 * n, counts
        assert abs(sum(delays) / 5 - n * delay) <= 0.03 * n * delay, delays
    finally:
        _st.block_rate = 0
        random.setstate(state)


def test_block_long_waits_always_recorded() -> None:
    _st.block_rate = 1000
    try:
        _synthetic(_st.block_event, 5000, 100)
        assert leaf("block", "_synthetic") == [100, 500000]
        _st.reset()
        _st.block_rate = 1
        _synthetic(_st.block_event, 0, 3)  # Go clamps a 0 delay to 1
        assert leaf("block", "_synthetic") == [3, 3]
    finally:
        _st.block_rate = 0


def test_mutex_fraction_is_unbiased() -> None:
    rate, n, delay = 10, 20000, 1000
    state = random.getstate()
    try:
        counts = []
        for seed in range(5):
            random.seed(seed)
            _st.reset()
            _st.mutex_rate = rate
            _synthetic(_st.mutex_event, delay, n)
            count, total = leaf("mutex", "_synthetic")
            assert count % rate == 0 and total == count * delay  # each kept one scaled by n
            assert abs(count - n) <= 0.10 * n, (seed, count)
            counts.append(count)
        assert abs(sum(counts) / 5 - n) <= 0.03 * n, counts
    finally:
        _st.mutex_rate = 0
        random.setstate(state)


def take_contended(lock: Any) -> int:
    t0 = ns()
    lock.acquire()
    return ns() - t0


def drop(lock: Any) -> None:
    lock.release()


def ping_pong(lock: Any, rounds: int, hold: float) -> tuple[int, int]:
    """Two threads take turns holding ``lock`` for ``hold`` seconds.

    Each waits until the other holds the lock, then asks for it.  Returns
    (contended acquisitions, their waiting in ns), as measured here.
    """
    got = [threading.Event(), threading.Event()]
    waited = [0, 0]
    contended = [0, 0]

    def side(me: int) -> None:
        for r in range(rounds):
            if me or r:
                got[1 - me].wait()
                got[1 - me].clear()
            if lock.acquire(False):
                pass
            else:
                waited[me] += take_contended(lock)
                contended[me] += 1
            got[me].set()
            time.sleep(hold)
            drop(lock)

    a, b = start(side, 0), start(side, 1)
    a.join()
    b.join()
    return sum(contended), sum(waited)


def test_sampled_rates_with_real_threads() -> None:
    """At a block rate above the waits and a mutex fraction of 2, totals stay near the truth.

    About 120 real waits of ~2 ms each: a kept wait counts rate/delay (block)
    or 2 (mutex), so the relative standard deviation of the count total is
    about 10 %; the tolerance is 40 % (four deviations).  The synthetic
    tests above check the statistics tightly.
    """
    enable(block=4_000_000, mutex=2)
    lock = threading.Lock()
    n, waited = ping_pong(lock, 60, 0.002)
    assert n >= 60, f"only {n} contended acquisitions"
    count, delay = leaf("block", "take_contended")
    assert abs(count - n) <= 0.4 * n, (count, n)
    assert abs(delay - waited) <= 0.4 * waited, (delay, waited)
    count, delay = leaf("mutex", "drop")
    assert abs(count - n) <= 0.4 * n, (count, n)
    assert abs(delay - waited) <= 0.4 * waited, (delay, waited)


def test_rate_one_counts_every_contended_wait() -> None:
    enable()
    lock = threading.Lock()
    n, waited = ping_pong(lock, 30, 0.003)
    count, delay = leaf("block", "take_contended")
    assert count == n
    assert_close(delay, waited, what="block delay of take_contended", tol=0.10)
    count, _ = leaf("mutex", "drop")
    assert count == n


# -- output formats ------------------------------------------------------------------------------


def record_here(delay: int) -> None:
    _st.block_event(delay, sys._getframe())


def record_mutex_here(delay: int) -> None:
    _st.mutex_event(delay, sys._getframe())


def test_proto_layout() -> None:
    _st.block_rate = 1
    try:
        record_here(200)
        record_here(300)  # called from another line: another stack
        record_mutex_here(50)  # the mutex profile is off: not recorded
    finally:
        _st.block_rate = 0
    p = load(_contention.render("block", 0))
    check_valid(p)
    st = p.string_table
    assert [(st[t.type], st[t.unit]) for t in p.sample_type] == [
        ("contentions", "count"), ("delay", "nanoseconds")]
    assert (st[p.period_type.type], st[p.period_type.unit]) == ("contentions", "count")
    assert p.period == 1
    assert p.default_sample_type == 0
    assert p.duration_nanos == 0 and p.time_nanos > 0
    values = [list(s.value) for s in p.sample]
    assert values == [[1, 300], [1, 200]]  # delay descending, as Go sorts
    assert all(not s.label for s in p.sample)
    assert stacks(p)[0][0][:2] == [f"{M}.record_here", f"{M}.test_proto_layout"]
    # Mutex was off: nothing recorded.
    assert load(_contention.render("mutex", 0)).sample == []


def test_text_layout(tmp_path: Path) -> None:
    _st.block_rate = 1
    _st.mutex_rate = 3
    try:
        record_here(1234)
        record_here(99)
        while not _st.mutex_records:  # one in three is kept, as 3 contentions of 10 ns each
            record_mutex_here(10)
    finally:
        _st.block_rate = 0
        _st.mutex_rate = 0
    text = _contention.render("block", 1).decode()
    lines = text.split("\n")
    assert lines[0] == "--- contention:"
    assert lines[1] == "cycles/second=1000000000"
    this_file = __file__
    line_no = record_here.__code__.co_firstlineno + 1
    i = 2
    for delay in (1234, 99):
        m = re.fullmatch(r"(\d+) (\d+) @((?: 0x[0-9a-f]+)+)", lines[i])
        assert m, lines[i]
        assert (int(m.group(1)), int(m.group(2))) == (delay, 1)
        addrs = m.group(3).split()
        frames = []
        i += 1
        while lines[i]:
            frames.append(lines[i])
            i += 1
        assert len(frames) == len(addrs)
        # Each frame line: '#', PC (the return address - 1), FUNC+0xOFF, FILE:LINE.
        for addr, line in zip(addrs, frames, strict=True):
            cells = re.split("\t+", line)
            assert cells[0] == "#" and int(cells[1], 16) == int(addr, 16) - 1
            assert re.fullmatch(r"\S+\+0x[0-9a-f]+", cells[2])
        first = re.split("\t+", frames[0])
        assert first[2].startswith(f"{M}.record_here+0x")
        assert first[3] == f"{this_file}:{line_no}"
        # tabwriter: the FILE:LINE column starts at the same place on every line.
        starts = {f.expandtabs(8).index(re.split("\t+", f)[3]) for f in frames}
        assert len(starts) == 1
        i += 1  # the empty line after each record
    assert lines[i:] == [""]
    mutex = _contention.render("mutex", 1).decode().split("\n")
    assert mutex[:3] == ["--- mutex:", "cycles/second=1000000000", "sampling period=0"]
    assert re.fullmatch(r"30 3 @( 0x[0-9a-f]+)+", mutex[3]), mutex[3]
    # go tool pprof's legacy parser reads the text (it cannot symbolize the addresses).
    path = tmp_path / "block.txt"
    path.write_text(text)
    out = pprof("-raw", path)
    assert "PeriodType: contentions count" in out
    assert re.search(r"^\s+1\s+1234: ", out, re.M), out


def test_text_of_empty_profiles() -> None:
    assert _contention.render("block", 1) == b"--- contention:\ncycles/second=1000000000\n"
    pyproperf.set_mutex_profile_fraction(7)
    assert _contention.render("mutex", 2) == (
        b"--- mutex:\ncycles/second=1000000000\nsampling period=7\n")
    assert _contention.count("block") == 0


def test_registry_reads_contention(tmp_path: Path) -> None:
    _st.block_rate = 1
    try:
        record_here(5)
    finally:
        _st.block_rate = 0
    block = pyproperf.lookup("block")
    mutex = pyproperf.lookup("mutex")
    assert block is not None and mutex is not None
    assert block.count() == 1 and mutex.count() == 0
    buf = io.BytesIO()
    block.write_to(buf, debug=1)
    assert buf.getvalue().startswith(b"--- contention:\ncycles/second=1000000000\n5 1 @ 0x")
    path = tmp_path / "block.pb.gz"
    block.write_to(str(path))
    rows = top_by_name(path, "-sample_index=delay")
    assert rows[f"{M}.record_here"].flat == 5e-9
    with pytest.raises(ValueError, match="not a contention profile"):
        _contention.count("heap")


# -- instrumentation: off is untouched, switching is safe ------------------------------------------


def test_off_means_untouched() -> None:
    assert_untouched()
    enable(block=1, mutex=0)
    assert threading.Lock is _contention_locks.Lock
    assert hasattr(threading.Condition.wait, "__wrapped__")
    assert hasattr(asyncio.Lock.acquire, "__wrapped__")
    enable(block=0, mutex=3)
    assert threading.Lock is _contention_locks.Lock
    enable(block=0, mutex=0)
    assert_untouched()
    assert type(threading.Lock()) is type(_thread.allocate_lock())


def test_instrumented_locks_behave_like_real_ones() -> None:
    enable()
    lock = threading.Lock()
    rlock = threading.RLock()
    for mode in ("on", "off"):
        assert not lock.locked()
        assert lock.acquire() is True
        assert lock.locked()
        assert lock.acquire(False) is False
        t0 = time.monotonic()
        assert lock.acquire(True, 0.05) is False
        assert time.monotonic() - t0 >= 0.04
        assert lock.acquire(timeout=0) is False
        lock.release()
        with pytest.raises(RuntimeError):
            lock.release()
        for args in ((False, 1), (True, -2), (True, "1"), (True, 1e300), (True, float("nan"))):
            assert_same_error(lambda a=args: lock.acquire(*a),
                              lambda a=args: _thread.allocate_lock().acquire(*a))
        assert lock.acquire_lock() and not lock.acquire(False)
        lock.release_lock()
        assert "unlocked" in repr(lock) and "_thread.lock" in repr(lock)
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(lock)
        assert weakref.ref(lock)() is lock
        with rlock, rlock:
            assert rlock._is_owned()  # type: ignore[attr-defined]
            if sys.version_info >= (3, 11):
                assert rlock._recursion_count() == 2  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            rlock.release()
        cond = threading.Condition(rlock)
        with cond:
            assert cond.wait(0.01) is False
            assert cond.wait(0) is False
        with pytest.raises(RuntimeError, match="un-acquired lock"):
            cond.wait(0.01)
        lock._at_fork_reinit()  # type: ignore[attr-defined]
        if mode == "on":
            enable(0, 0)


def assert_same_error(call: Callable[[], object], real: Callable[[], object]) -> None:
    """``call`` raises exactly what ``real`` (the same call on a real lock) raises."""
    with pytest.raises(Exception) as want:
        real()
    with pytest.raises(want.type, match=re.escape(str(want.value))):
        call()


def test_enable_and_disable_while_threads_are_blocked() -> None:
    enable()
    on_lock, on_rlock, on_queue = threading.Lock(), threading.RLock(), queue.Queue()
    on_event, on_cond, on_sem = threading.Event(), threading.Condition(), threading.Semaphore(0)
    enable(0, 0)
    off_lock, off_rlock, off_queue = threading.Lock(), threading.RLock(), queue.Queue()
    off_event, off_cond = threading.Event(), threading.Condition()
    locks = (on_lock, on_rlock, off_lock, off_rlock)
    for lk in locks:
        lk.acquire()
    done: list[str] = []

    def blocked(name: str, fn: Callable[[], object]) -> threading.Thread:
        return start(lambda: (fn(), done.append(name)))

    def cond_wait(c: threading.Condition) -> None:
        with c:
            c.wait_for(lambda: getattr(c, "go", False))

    threads = [
        blocked("on_lock", lambda: (on_lock.acquire(), on_lock.release())),
        blocked("on_rlock", lambda: (on_rlock.acquire(), on_rlock.release())),
        blocked("off_lock", lambda: (off_lock.acquire(), off_lock.release())),
        blocked("off_rlock", lambda: (off_rlock.acquire(), off_rlock.release())),
        blocked("on_queue", on_queue.get),
        blocked("off_queue", off_queue.get),
        blocked("on_event", on_event.wait),
        blocked("off_event", off_event.wait),
        blocked("on_cond", lambda: cond_wait(on_cond)),
        blocked("off_cond", lambda: cond_wait(off_cond)),
        blocked("on_sem", on_sem.acquire),
    ]
    time.sleep(0.05)
    for i in range(30):
        enable(block=i % 2, mutex=(i // 2) % 3)
        time.sleep(0.002)
    enable(block=1, mutex=0)
    for lk in locks:
        lk.release()
    enable(0, 2)
    on_queue.put(1)
    off_queue.put(1)
    on_event.set()
    enable(1, 1)
    off_event.set()
    for c in (on_cond, off_cond):
        with c:
            c.go = True  # type: ignore[attr-defined]
            c.notify_all()
    enable(0, 0)
    on_sem.release()
    for t in threads:
        t.join(5)
    assert sorted(done) == sorted(
        ["on_lock", "on_rlock", "off_lock", "off_rlock", "on_queue", "off_queue", "on_event",
         "off_event", "on_cond", "off_cond", "on_sem"])
    # Everything still works in either state.
    for state in ((1, 1), (0, 0)):
        enable(*state)
        for lk in locks:
            with lk:
                pass
            assert lk.acquire(timeout=1)
            lk.release()
        on_queue.put(2)
        assert on_queue.get() == 2


def test_fork_drops_waiters_of_vanished_threads() -> None:
    enable(block=0, mutex=1)
    lock = threading.Lock()
    lock.acquire()
    waiter = start(lambda: (lock.acquire(), lock.release()))
    # Fork only once the waiter is registered (and so blocked): that is the case under test.
    assert until(lambda: bool(lock._waiters)), "the waiter never blocked"  # type: ignore[attr-defined]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            lock.release()  # the registered waiter does not exist here
            with lock:
                pass
            code = 0 if not _st.mutex_records and not lock._waiters else 2  # type: ignore[attr-defined]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    lock.release()
    waiter.join()
    assert os.waitstatus_to_exitcode(status) == 0


def program_section(lock: Any, gate: Any) -> None:
    """The program's counterpart of ``heap_profile.__exit__``: it holds its lock through a stall."""
    with lock:
        gate.acquire()
        gate.release()


def profiler_section(hp: pyproperf.heap_profile) -> None:
    with hp:
        pass


def contend(section: Callable[..., None], args: tuple[Any, ...], lock: Any, gate: Any,
            stalled: Callable[[], bool]) -> None:
    """Two threads run ``section(*args)``: the first stalls holding ``lock``, the second waits.

    The first stalls on ``gate``, a real lock held here (waiting on it records nothing) until
    the second is a registered waiter of ``lock``; so the contention events are exactly the
    second's wait for ``lock`` and the first's release of it to the second.
    """
    gate.acquire()
    threads = []
    try:
        threads.append(start(section, *args))
        assert until(stalled), "the first thread never stalled holding the lock"
        assert lock.locked()
        threads.append(start(section, *args))
        assert until(lambda: bool(lock._waiters)), "the second thread never waited for the lock"
    finally:
        gate.release()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads)


def test_profiler_waits_are_not_recorded() -> None:
    """Waits in pyproperf's code are left out; the same waits in the program's are recorded.

    A ``heap_profile`` made while the profiles are on has an instrumented lock, and holds it
    while it writes (``__exit__``).  With a writer that stalls, a second thread entering the
    section waits for that lock in ``heap_profile.__enter__``, and the first releases it to
    that waiter in ``__exit__``: a block and a mutex event, both in the profiler's code.  The
    positive control is the program doing the same with its own lock of the same kind: there
    both events are recorded, so an empty profile cannot pass.  A CPU profile runs
    throughout: its own waits, if any, must not show up either.
    """
    enable()
    pyproperf.start_cpu_profile(io.BytesIO())
    try:
        # The program's own: recorded.
        lock: Any = threading.Lock()
        assert type(lock) is _contention_locks.Lock
        gate = _thread.allocate_lock()
        contend(program_section, (lock, gate), lock, gate, lock.locked)

        # The profiler's own: not recorded.
        gate = _thread.allocate_lock()
        written: list[bytes] = []

        class StallingWriter:
            def write(self, data: bytes) -> int:
                if data:
                    written.append(data)
                    gate.acquire()  # held by contend(): the section keeps its lock meanwhile
                    gate.release()
                return len(data)

        hp = pyproperf.heap_profile(StallingWriter())
        hp_lock: Any = hp._lock
        assert type(hp_lock) is _contention_locks.Lock, (
            "heap_profile's lock is no longer instrumented: find another wait of the "
            "profiler's for this test"
        )
        contend(profiler_section, (hp,), hp_lock, gate, lambda: bool(written))
        assert len(written) == 2  # each section wrote its profile
    finally:
        pyproperf.stop_cpu_profile()

    for name in ("block", "mutex"):
        p = load(_contention.render(name, 0))
        # Positive control: the program's wait and its release, once each, at its function.
        assert leaf(name, "program_section")[0] == 1, stacks(p)
        assert leaf(name, "program_section")[1] > 0
        # The profiler's: nothing under profiler_section, nothing starting in pyproperf.
        assert not [names for names, _, _ in stacks(p) if f"{M}.profiler_section" in names]
        assert not [names for names, _, _ in stacks(p) if names[0].startswith("pyproperf.")]


def test_asyncio_import_after_enabling() -> None:
    """``import pyproperf`` leaves asyncio alone; enabling patches it once it is imported."""
    code = r"""
import sys
import pyproperf
assert "asyncio" not in sys.modules
pyproperf.set_block_profile_rate(1)
assert "asyncio" not in sys.modules
import asyncio
assert hasattr(asyncio.Lock.acquire, "__wrapped__")
assert type(asyncio.__spec__.loader).__name__ == "SourceFileLoader", asyncio.__spec__.loader
assert asyncio.__loader__ is asyncio.__spec__.loader

async def waits(ev):
    await ev.wait()

async def main():
    ev = asyncio.Event()
    t = asyncio.create_task(waits(ev))
    await asyncio.sleep(0.02)
    ev.set()
    await t

asyncio.run(main())
assert pyproperf.lookup("block").count() >= 1
pyproperf.set_block_profile_rate(0)
assert not hasattr(asyncio.Lock.acquire, "__wrapped__")
from pyproperf import _hooks
assert "asyncio" not in _hooks._finder.watched
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_wrappers_stay_after_many_cycles() -> None:
    """Past MAX_UNWRAPS on/off cycles the class wrappers stay, idle; factories are restored."""
    _contention._instr.unwraps = _contention.MAX_UNWRAPS
    try:
        enable()
        enable(0, 0)
        assert threading.Lock in (_thread.allocate_lock, getattr(_thread, "LockType", None))
        assert hasattr(threading.Condition.wait, "__wrapped__")
        assert hasattr(asyncio.Lock.acquire, "__wrapped__")
        ev = threading.Event()
        t = start(lambda: (time.sleep(0.02), ev.set()))
        blocked_in("event", ev)
        t.join()
        assert records("block") == {}  # idle: nothing recorded while off
        enable()
        t = start(lambda: (time.sleep(0.02), ev.set()))
        ev.clear()
        blocked_in("event", ev)
        t.join()
        assert leaf("block", "blocked_in")[0] == 1
        enable(0, 0)
    finally:
        _contention._instr.unwraps = 0
        _contention._instr.installed = True
        enable(0, 0)  # now really unwraps, for the fixture's check
