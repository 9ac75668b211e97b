"""``pyproperf.dump_on_signal`` and ``PYPROPERF_DUMP_*``: a dump of a running process, not fatal.

The programs say where they are (a thread parked in ``waiting_worker``,
the main thread in ``burn_main``); the dump must show exactly that, the
program must go on to its normal end, and the CPU profile a signal starts
is read back by ``go tool pprof``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pyproperf
from tests.pprof_tool import check_valid, load, pprof

PROGRAM = '''
import json, os, signal, sys, threading, time
import pyproperf

def waiting_worker(ev):
    ev.wait()

def burn_main(until):
    print("ready", flush=True)  # from in here: a signal from now on finds us here
    deadline = time.monotonic() + 60
    while not os.path.exists(until) and time.monotonic() < deadline:
        sum(range(1000))

ev = threading.Event()
t = threading.Thread(target=waiting_worker, args=(ev,), name="waiter")
t.start()
'''


def wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 30) -> None:
    """Poll for a file another process writes (the condition itself, with a deadline)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def start(tmp_path: Path, body: str, *args: str,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    (tmp_path / "prog.py").write_text(PROGRAM + textwrap.dedent(body))
    proc = subprocess.Popen([sys.executable, *args, "prog.py"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_dump_to_a_file_and_a_cpu_profile_the_program_goes_on(tmp_path: Path) -> None:
    proc = start(tmp_path, '''
        calls = []
        mine = lambda s, f: calls.append(s)
        signal.signal(signal.SIGUSR2, mine)  # the program's own handler: still called
        restore = pyproperf.dump_on_signal(signal.SIGUSR2, path="dump.%p.txt",
                                           cpu_seconds=0.5, cpu_path="cpu.%p.pb.gz")
        burn_main(f"cpu.{os.getpid()}.pb.gz")
        ev.set(); t.join()
        restore()
        print(json.dumps({"calls": len(calls),
                          "restored": signal.getsignal(signal.SIGUSR2) is mine}))
    ''')
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"calls": 1, "restored": True}
    dump = (tmp_path / f"dump.{proc.pid}.txt").read_text()
    blocks = dump.split("\n\n")
    main = next(b for b in blocks if 'thread "MainThread"' in b)
    waiter = next(b for b in blocks if 'thread "waiter"' in b)
    assert main.startswith("goroutine 1 [") and "__main__.burn_main(...)" in main, dump
    assert waiter.split("\n")[0].endswith('[waiting, thread "waiter"]:'), dump
    assert "__main__.waiting_worker(...)" in waiter
    # Only the program's two threads: the thread taking the dump is ours, not shown.
    assert len([b for b in blocks if b.startswith("goroutine ")]) == 2, dump
    cpu = tmp_path / f"cpu.{proc.pid}.pb.gz"
    check_valid(load(cpu))
    top = pprof("-top", "-cum", cpu)
    assert "__main__.burn_main" in top, top
    p = load(cpu)
    assert 0.4e9 <= p.duration_nanos <= 5e9  # the 0.5 s asked, not the program's life
    assert err == ""  # silent, as Go's dump: the files are where the program said


def test_under_gevent_the_dump_comes_while_the_program_computes(tmp_path: Path) -> None:
    """The dump's thread is a real thread: a greenlet would not run (and its blocking read of
    the pipe would stop the program) while the main greenlet computes without yielding."""
    (tmp_path / "prog.py").write_text(textwrap.dedent('''
        from gevent import monkey
        monkey.patch_all()
        import os, signal, time
        import pyproperf

        def burn_main(until):
            os.kill(os.getpid(), signal.SIGUSR2)  # from in here: the dump finds us here
            deadline = time.monotonic() + 30
            while not os.path.exists(until) and time.monotonic() < deadline:
                sum(range(1000))  # no gevent call: the hub never runs meanwhile
            print("dumped" if os.path.exists(until) else "no dump", flush=True)

        pyproperf.dump_on_signal(signal.SIGUSR2, path="dump.txt")
        burn_main("dump.txt")
    '''))
    out = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "dumped\n", out
    dump = (tmp_path / "dump.txt").read_text()
    assert "__main__.burn_main(...)" in dump, dump


def test_run_installs_it_from_the_environment(tmp_path: Path) -> None:
    env = dict(os.environ, PYPROPERF_DUMP_SIGNAL="USR1")  # the dump goes to stderr
    proc = start(tmp_path, '''
        burn_main("go")
        ev.set(); t.join()
        print("done")
    ''', "-m", "pyproperf", "run", "-o", "cpu.pb.gz", env=env)
    proc.send_signal(signal.SIGUSR1)  # fatal by default: only the dump handler keeps us alive
    # The dump is written by a thread of the program: wait for its line on stderr.
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    while not any(line.startswith("goroutine") and "waiter" in line for line in lines):
        assert time.monotonic() < deadline, lines
        lines.append(proc.stderr.readline())
    (tmp_path / "go").write_text("")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "done\n"
    text = "".join(lines)
    assert f"pyproperf: goroutine dump of pid {proc.pid} at " in text
    assert "pyproperf: wrote cpu.pb.gz" in err
    check_valid(load(tmp_path / "cpu.pb.gz"))


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("PYPROPERF_DUMP_SIGNAL", "NOPE", "no signal named 'NOPE'"),
    ("PYPROPERF_DUMP_SIGNAL", "KILL", "cannot dump on SIGKILL"),
    ("PYPROPERF_DUMP_CPU_SECONDS", "soon", "PYPROPERF_DUMP_CPU_SECONDS='soon' is not a number"),
])
def test_bad_environment_is_one_line_and_exit_2(tmp_path: Path, variable: str, value: str,
                                                expected: str) -> None:
    (tmp_path / "prog.py").write_text("print('ran')\n")
    env = {**os.environ, "PYPROPERF_DUMP_SIGNAL": "USR2", variable: value}
    out = subprocess.run([sys.executable, "-m", "pyproperf", "run", "prog.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert out.stdout == ""  # the program did not run
    assert out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert out.stderr.startswith("pyproperf run: PYPROPERF_DUMP_SIGNAL=")
    assert not list(tmp_path.glob("*.pb.gz"))
    # Positive control: a good value runs the program, profiled.
    env[variable] = "USR2" if variable == "PYPROPERF_DUMP_SIGNAL" else "1"
    out = subprocess.run([sys.executable, "-m", "pyproperf", "run", "prog.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout == "ran\n", out.stderr


def test_bad_arguments_raise_and_install_nothing(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(ValueError, match="cannot dump on SIGKILL"):
        pyproperf.dump_on_signal(signal.SIGKILL)
    with pytest.raises(ValueError, match="cpu_seconds must be between 0 and 3600"):
        pyproperf.dump_on_signal(signal.SIGUSR2, cpu_seconds=-1)
    with pytest.raises(TypeError, match="sig must be a signal number"):
        pyproperf.dump_on_signal("USR2")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        pyproperf.dump_on_signal(signal.SIGUSR2, path=tmp_path / "no" / "dir" / "dump.txt")
    assert signal.getsignal(signal.SIGUSR2) == before
    # Positive control: a good call installs, and restore() puts the handler back.
    restore = pyproperf.dump_on_signal(signal.SIGUSR2, path=tmp_path / "d.txt")
    assert signal.getsignal(signal.SIGUSR2) != before
    os.kill(os.getpid(), signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not (tmp_path / "d.txt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "test_bad_arguments_raise_and_install_nothing" in (tmp_path / "d.txt").read_text()
    restore()
    assert signal.getsignal(signal.SIGUSR2) == before
