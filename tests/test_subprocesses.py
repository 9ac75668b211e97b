"""``run --subprocesses`` and ``run -- COMMAND``: every Python process of a program, merged.

Each program measures the truth itself: every task or request burns CPU
for a known ``time.thread_time()`` span and reports its pid and what it
used.  The merged profile, read by the real ``go tool pprof -tags``, must
hold each worker's function under that worker's own ``pid``, near what
the worker measured.  The servers are the real gunicorn (sync and gthread
workers) and uvicorn (``--workers 2``), driven with HTTP requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from tests.pprof_tool import check_valid, load, pprof, tag_seconds

BIN = os.path.dirname(sys.executable)

BURN = '''
import os, time

def burn(seconds):
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass
    return time.thread_time() - t0
'''

POOL = BURN + '''
import json, multiprocessing as mp, sys

_barrier = None

def init(barrier):
    barrier.wait(30)  # both workers are up before any takes a task

def task(seconds):
    return os.getpid(), burn(seconds)

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    with ctx.Pool(2, initializer=init, initargs=(ctx.Barrier(2),)) as pool:
        results = pool.map(task, [0.05] * 10, chunksize=1)
    extra = {}
    if len(sys.argv) > 2:  # a Python child started with subprocess
        out = __import__("subprocess").run(
            [sys.executable, "child.py"], capture_output=True, text=True, check=True)
        extra = json.loads(out.stdout)
    totals = {}
    for pid, used in results:
        totals[str(pid)] = totals.get(str(pid), 0) + used
    print(json.dumps({"task": totals, "child": extra}))
'''

CHILD = BURN + '''
import json

def child_work():
    return burn(0.2)

print(json.dumps({str(os.getpid()): child_work()}))
'''


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "pyproperf", "run", *args], cwd=cwd, capture_output=True,
            text=True, timeout=timeout, check=False, env=env,
        )
    except subprocess.TimeoutExpired as exc:  # say what it was doing
        raise AssertionError(f"run {args} hung; stderr so far:\n{exc.stderr!r}") from None


def write(tmp_path: Path, name: str, text: str, prefix: str = "") -> Path:
    path = tmp_path / name
    path.write_text(prefix + textwrap.dedent(text))
    return path


def assert_near(measured: float, truth: float, what: str) -> None:
    """Per-thread CPU clocks: the profile's time is the CPU used, give or take a sample."""
    assert 0.6 * truth - 0.03 <= measured <= 1.3 * truth + 0.05, (what, measured, truth)


def lost_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "lost the profile" in line]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_appear_under_their_own_pid(tmp_path: Path, method: str) -> None:
    write(tmp_path, "prog.py", POOL)
    write(tmp_path, "child.py", CHILD)
    extra = ["child"] if method == "fork" else []
    out = run("--subprocesses", "-o", "cpu.pb.gz", "prog.py", method, *extra, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    truth = json.loads(out.stdout)
    assert len(truth["task"]) == 2, truth  # both workers took tasks (the barrier)
    assert not lost_lines(out.stderr), out.stderr
    path = tmp_path / "cpu.pb.gz"
    check_valid(load(path))
    by_pid = tag_seconds(path, "pid", "-focus", r"\.task$")
    for pid, used in truth["task"].items():
        assert_near(by_pid.get(pid, 0.0), used, f"task in pid {pid}")
        assert (tmp_path / f"cpu.{pid}.pb.gz").exists()  # each process wrote its own file
    assert set(by_pid) == set(truth["task"]), (by_pid, truth)  # task ran nowhere else
    names = tag_seconds(path, "process", "-focus", r"\.task$")
    assert all("PoolWorker" in name for name in names), names
    for pid, used in truth["child"].items():  # python child.py, started with subprocess
        child = tag_seconds(path, "pid", "-focus", r"child_work$")
        assert_near(child.get(pid, 0.0), used, "child_work")
    # Without --subprocesses, the parent only: no task at all (the positive control above).
    out = run("-o", "alone.pb.gz", "prog.py", method, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert tag_seconds(tmp_path / "alone.pb.gz", "thread", "-focus", r"\.task$") == {}
    assert not list(tmp_path.glob("alone.*.pb.gz"))


def test_a_child_killed_by_a_signal_is_reported_the_rest_merged(tmp_path: Path) -> None:
    write(tmp_path, "prog.py", prefix=BURN, text='''
        import json, multiprocessing as mp, signal

        def victim(q):
            q.put(os.getpid())
            burn(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

        def survivor(q):
            q.put((os.getpid(), burn(0.2)))

        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            q = ctx.Queue()
            a = ctx.Process(target=victim, args=(q,))
            a.start()
            killed = q.get(timeout=30)
            a.join()
            b = ctx.Process(target=survivor, args=(q,))
            b.start()
            pid, used = q.get(timeout=30)
            b.join()
            print(json.dumps({"killed": killed, "exitcode": a.exitcode,
                              "survivor": pid, "used": used}))
    ''')
    out = run("--subprocesses", "-o", "cpu.pb.gz", "prog.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    truth = json.loads(out.stdout)
    assert truth["exitcode"] == -signal.SIGKILL
    lines = lost_lines(out.stderr)
    assert len(lines) == 1, out.stderr
    assert f"pid {truth['killed']}: ended without writing it" in lines[0]
    assert "merged the other 2" in lines[0]
    by_pid = tag_seconds(tmp_path / "cpu.pb.gz", "pid", "-focus", "survivor$")
    assert_near(by_pid.get(str(truth["survivor"]), 0.0), truth["used"], "survivor")
    assert str(truth["killed"]) not in tag_seconds(tmp_path / "cpu.pb.gz", "pid")


def test_other_pythons_are_left_alone_and_sitecustomize_still_runs(tmp_path: Path) -> None:
    """A child of another environment is not followed and hears nothing of it; the
    environment's own sitecustomize, which ours shadows, still runs in followed children."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "other")],
                   check=True, timeout=120)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = '1'\n")
    write(tmp_path, "prog.py", prefix=BURN, text='''
        import json, subprocess, sys

        def ask(python):
            code = ("import os, sys, json; print(json.dumps([os.getpid(), "
                    "os.environ.get('USER_SITE_RAN'), 'pyproperf' in sys.modules]))")
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
            return json.loads(out.stdout), out.stderr

        print(json.dumps({"this": ask(sys.executable), "other": ask(sys.argv[1])}))
    ''')
    env = dict(os.environ, PYTHONPATH=str(site))
    out = run("--subprocesses", "-o", "cpu.pb.gz", "prog.py", str(tmp_path / "other/bin/python"),
              cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    (this_pid, this_site, this_ours), this_err = seen["this"]
    (other_pid, other_site, other_ours), other_err = seen["other"]
    assert this_site == "1" and this_ours and this_err == ""  # followed, user's site ran
    assert other_site == "1" and not other_ours and other_err == ""  # left alone, silently
    pids = tag_seconds(tmp_path / "cpu.pb.gz", "pid")
    assert str(other_pid) not in pids
    assert (tmp_path / f"cpu.{this_pid}.pb.gz").exists()
    assert not (tmp_path / f"cpu.{other_pid}.pb.gz").exists()
    assert not lost_lines(out.stderr), out.stderr


def test_heap_wall_and_http_in_every_process(tmp_path: Path) -> None:
    """--clock wall, --heap and --http with spawned workers: each worker serves on a port of its
    own (printed), answers /debug/pprof/ there, and its heap and wall profiles are merged."""
    write(tmp_path, "prog.py", prefix=BURN, text='''
        import json, multiprocessing as mp, sys, urllib.request

        KEEP = []

        def init(barrier):
            barrier.wait(30)

        def task(_):
            from pyproperf import _subprocesses
            url = _subprocesses._child._server.url  # this worker's own server
            with urllib.request.urlopen(url + "goroutine?debug=1", timeout=30) as r:
                text = r.read().decode()
            # 2 MB kept for good: alloc_space adds up growth between snapshots, so a block
            # freed before the next one may be missed; a live one is always in the last.
            KEEP.append([bytearray(1000) for _ in range(2000)])
            return os.getpid(), url, "in task" if " task " in text or ".task" in text else text

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            with ctx.Pool(2, initializer=init, initargs=(ctx.Barrier(2),)) as pool:
                print(json.dumps(pool.map(task, range(4), chunksize=1)))
    ''')
    out = run("--subprocesses", "--clock", "wall", "--heap", "heap.pb.gz",
              "--http", "127.0.0.1:0", "-o", "wall.pb.gz", "prog.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    pids = {str(pid) for pid, _, _ in results}
    assert len(pids) == 2
    assert all(seen == "in task" for _, _, seen in results), results
    urls = {pid: url for pid, url, _ in results}
    assert len(set(urls.values())) == 2  # a port each
    for pid, url in urls.items():
        assert f"pid {pid} (" in out.stderr and url in out.stderr  # the port is printed
    wall = tag_seconds(tmp_path / "wall.pb.gz", "pid", "-focus", r"\.task$")
    assert {str(p) for p in pids} <= set(wall), wall
    # The 2 MB each task allocates, under the task's pid in the merged allocs profile.
    text = pprof("-tags", "-focus", r"\.task$", "-sample_index=alloc_space",
                 tmp_path / "heap.pb.gz")
    section = text.split(" pid: ")[1].split("\n\n")[0]
    for pid in pids:
        assert f"): {pid}" in section, text


# --- servers ---------------------------------------------------------------------------------

APP = '''
import json, os, time

def handle_request():
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.05:
        pass
    return json.dumps([os.getpid(), time.thread_time() - t0]).encode()

def app(environ, start_response):  # WSGI, for gunicorn
    body = handle_request()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

async def asgi(scope, receive, send):  # ASGI, for uvicorn
    if scope["type"] != "http":
        return
    body = handle_request()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_measure(tmp_path: Path, command: list[str], port: int) -> dict[str, float]:
    """Start ``run --subprocesses -- COMMAND``, request until two workers have each served
    four requests, stop it with SIGTERM; the CPU each worker says it used, by pid."""
    write(tmp_path, "app.py", APP)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               HOME=str(tmp_path))  # gunicorn's control socket goes under $HOME
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyproperf", "run", "--subprocesses", "-o", "cpu.pb.gz", "--",
         *command], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    served: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def enough() -> bool:
        with lock:
            return len(served) >= 2 and all(len(v) >= 4 for v in served.values())

    def client() -> None:
        while not enough() and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    pid, used = json.loads(r.read())
            except OSError:
                time.sleep(0.05)  # not listening yet: poll again
                continue
            with lock:
                served[str(pid)].append(used)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert enough(), (dict(served), stderr[-3000:])
    assert proc.returncode == 0, stderr[-3000:]
    assert not lost_lines(stderr), stderr[-3000:]
    return {pid: sum(v) for pid, v in served.items()}


def assert_workers(tmp_path: Path, truth: dict[str, float]) -> None:
    path = tmp_path / "cpu.pb.gz"
    check_valid(load(path))
    by_pid = tag_seconds(path, "pid", "-focus", r"handle_request$")
    for pid, used in truth.items():
        assert 0.5 * used <= by_pid.get(pid, 0.0) <= 1.3 * used + 0.05, (pid, by_pid, truth)
    assert set(by_pid) <= set(truth), (by_pid, truth)  # requests ran in the workers only


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_gunicorn_workers(tmp_path: Path, worker: str) -> None:
    port = free_port()
    threads = ["--threads", "2"] if worker == "gthread" else []  # sync with threads is gthread
    truth = serve_and_measure(tmp_path, [
        "gunicorn", "-w", "2", "-k", worker, *threads, "-b", f"127.0.0.1:{port}", "app:app"],
        port)
    assert_workers(tmp_path, truth)
    names = tag_seconds(tmp_path / "cpu.pb.gz", "process", "-focus", r"handle_request$")
    assert set(names) == {"gunicorn"}, names


def test_uvicorn_workers(tmp_path: Path) -> None:
    port = free_port()
    truth = serve_and_measure(tmp_path, [
        "uvicorn", "--workers", "2", "--port", str(port), "--log-level", "warning", "app:asgi"],
        port)
    assert_workers(tmp_path, truth)


# --- run -- COMMAND ---------------------------------------------------------------------------


def console_script(bin_dir: Path, name: str, shebang: str, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{shebang}\n" + BURN + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_command_runs_a_console_script_of_this_python(tmp_path: Path) -> None:
    console_script(tmp_path / "bin", "mytool", sys.executable, '''
        import sys

        def main():
            print(sys.argv[1:], round(burn(0.2), 1))

        if __name__ == "__main__":
            sys.exit(main())
    ''')
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    out = run("-o", "cpu.pb.gz", "--", "mytool", "-x", "--y", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['-x',", "'--y']", "0.2"]
    seconds = tag_seconds(tmp_path / "cpu.pb.gz", "thread", "-focus", r"\.main$")
    assert seconds.get("MainThread", 0) >= 0.1, seconds


@pytest.mark.parametrize("case", ["missing", "binary", "other python", "python itself"])
def test_command_that_cannot_run_here_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if case == "missing":
        word, expected = "no-such-command-xyz", "command not found on PATH"
    elif case == "binary":
        word, expected = "true", "is not a Python script"
    elif case == "other python":
        console_script(tmp_path / "bin", "othertool", "/opt/other/bin/python3", "print(1)\n")
        word, expected = "othertool", "runs /opt/other/bin/python3, not this Python"
    else:
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "mypython").symlink_to(sys.executable)
        word, expected = "mypython", "mypython is this Python itself"
    out = run("-o", "cpu.pb.gz", "--", word, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert out.stderr.startswith("pyproperf run: ")
    assert not list(tmp_path.glob("*.pb.gz"))


def test_subprocesses_needs_a_file_path_for_each_process(tmp_path: Path) -> None:
    """Each process's file goes next to -o: a device there is refused before the program runs."""
    write(tmp_path, "prog.py", "print('ran')\n")
    out = run("--subprocesses", "-o", "/dev/null", "prog.py", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == ("pyproperf run: argument --subprocesses: /dev/null: not a regular "
                          "file (each process's file goes next to it)\n")
    out = run("--subprocesses", "-o", "cpu.pb.gz", "prog.py", cwd=tmp_path)  # the control
    assert out.returncode == 0 and out.stdout == "ran\n", out.stderr
    assert "1 process merged" in out.stderr


def test_a_forked_child_profiles_itself(tmp_path: Path) -> None:
    """The sampler in a plain ``os.fork`` child reads the child's own thread clock (threading
    keeps the parent's native id for the forking thread; the engine's fork handler fixes it)."""
    write(tmp_path, "prog.py", prefix=BURN, text='''
        import json, pyproperf

        pid = os.fork()
        if pid == 0:
            with pyproperf.cpu_profile("child.pb.gz"):
                used = burn(0.3)
            print(json.dumps(used), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    ''')
    out = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    seconds = tag_seconds(tmp_path / "child.pb.gz", "thread", "-focus", r"\.burn$")
    assert_near(seconds.get("MainThread", 0.0), json.loads(out.stdout), "burn in the child")
