"""Profiling never changes the behaviour of the program it observes.

While a worker burns CPU (so SIGPROF fires often) the main thread makes
blocking calls; each must behave exactly as without profiling: no
``InterruptedError``, no short reads, the full sleep.  Ctrl-C still
interrupts, and the profile still lands.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyproperf
from tests.cpu_workloads import spin
from tests.pprof_tool import top_by_name
from tests.procs import communicate_or_kill


@pytest.fixture
def busy_profile() -> Iterator[None]:
    """A running CPU profile at 1000 Hz with a worker burning CPU the whole time."""
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            spin(0.01)

    pyproperf.start_cpu_profile(io.BytesIO(), hz=1000)
    worker = threading.Thread(target=burn)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        pyproperf.stop_cpu_profile()


def test_sleep_lasts_as_long(busy_profile: None) -> None:
    """The whole sleep, asleep all along: no early return, no waking it up to work.

    At least 0.3 s, exactly: ``time.sleep`` promises that much.  How late it returns is the
    scheduler's and the GIL's business (the worker holds the GIL for a switch interval at a
    time, and a loaded 2-core box adds tens, now and then hundreds, of milliseconds), so
    the wall-clock bound is loose: it catches only a sleep stalled for seconds.  What
    profiling could do to a sleep -- wake it again and again, run handlers in it, turn it
    into a polling loop -- costs the sleeping thread CPU time, which load does not add to:
    a 0.3 s sleep here uses about 0.1 ms of it, so 30 ms is a wide margin.
    """
    wall0, cpu0 = time.monotonic(), time.thread_time()
    time.sleep(0.3)
    cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    assert wall >= 0.3
    assert wall < 0.3 + 5.0, f"a 0.3 s sleep lasted {wall:.2f} s"
    assert cpu < 0.03, f"the sleeping thread used {cpu * 1e3:.1f} ms of CPU"


def test_socket_recv_is_whole(busy_profile: None) -> None:
    a, b = socket.socketpair()
    payload = os.urandom(1 << 20)

    def send() -> None:
        time.sleep(0.2)  # main blocks in recv meanwhile
        for i in range(0, len(payload), 4096):
            b.sendall(payload[i : i + 4096])
            time.sleep(0.0005)
        b.close()

    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    with a:
        while True:
            chunk = a.recv(65536)
            if not chunk:
                break
            got += chunk
    t.join()
    assert bytes(got) == payload


def test_pipe_read_and_select(busy_profile: None) -> None:
    r, w = os.pipe()

    def write_later() -> None:
        time.sleep(0.2)
        os.write(w, b"x" * 100)
        os.close(w)

    t = threading.Thread(target=write_later)
    t.start()
    ready, _, _ = select.select([r], [], [], 5)
    assert ready == [r]
    data = b""
    while len(data) < 100:
        data += os.read(r, 100 - len(data))
    os.close(r)
    t.join()
    assert data == b"x" * 100


def test_subprocess_runs_normally(busy_profile: None) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import time; time.sleep(0.2); print('done')"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "done\n"


def test_blocking_wait_on_locks_and_queues(busy_profile: None) -> None:
    import queue

    q: queue.Queue[int] = queue.Queue()
    threading.Timer(0.2, q.put, args=(7,)).start()
    assert q.get(timeout=5) == 7
    ev = threading.Event()
    threading.Timer(0.1, ev.set).start()
    assert ev.wait(5)
    time.sleep(0.05)  # let the timers' threads finish


SCRIPT = textwrap.dedent(
    """
    import sys, time, pyproperf, signal
    def hot():
        end = time.thread_time() + 60
        while time.thread_time() < end:
            pass
    f = open(sys.argv[1], "wb")
    pyproperf.start_cpu_profile(f)
    try:
        print("ready", flush=True)
        hot()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        pyproperf.stop_cpu_profile()
        f.close()
    """
)


def test_ctrl_c_still_interrupts_and_profile_lands(tmp_path: Path) -> None:
    script = tmp_path / "hog.py"
    script.write_text(SCRIPT)
    out_path = tmp_path / "hog.pb.gz"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, _ = communicate_or_kill(proc, 20)
    assert "interrupted" in stdout
    assert proc.returncode == 0
    assert top_by_name(out_path)["__main__.hot"].cum > 0.2
