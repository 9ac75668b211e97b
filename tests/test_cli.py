"""``python -m pyproperf run``: the program sees ``python script.py``'s world; profiles are written.

Each program runs twice where it matters, once with plain ``python`` and
once under ``run``, and what it saw (argv, ``__main__``, ``sys.path``),
printed, its exit status and its traceback must be the same.  Every
profile is read back by the real ``go tool pprof``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pprof_tool import check_valid, load, pprof, stacks, top_by_name
from tests.procs import communicate_or_kill

EXAMPLES = Path(__file__).parent / "examples"

BURN = '''
import time

def hot(seconds=0.3):
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n
'''


def program(tmp_path: Path, body: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BURN + textwrap.dedent(body))
    return path


def python(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return python("-m", "pyproperf", "run", *args, cwd=cwd, timeout=timeout)


def assert_profile(path: Path, *functions: str) -> dict[str, object]:
    """The file is a valid profile that go tool pprof reads, with time in ``functions``."""
    check_valid(load(path))
    rows = top_by_name(path)
    for name in functions:
        assert name in rows and rows[name].cum > 0, (name, sorted(rows))
    return rows  # type: ignore[return-value]


def summary_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pyproperf: wrote ")]


def cpu_summary(path: Path) -> str:
    """What ``run`` says of a CPU profile it wrote, read from the file."""
    p = load(path)
    samples = sum(s.value[0] for s in p.sample)
    kind = p.string_table[p.sample_type[1].type]
    return (f"{p.duration_nanos / 1e9:.2f} s, {samples} sample{'' if samples == 1 else 's'}, "
            f"{sum(s.value[1] for s in p.sample) / 1e9:.2f} s {kind}")


def heap_summary(path: Path) -> str:
    """What ``run`` says of a heap profile it wrote, read from the file."""
    from pyproperf._top import scaled_label

    p = load(path)
    types = [p.string_table[t.type] for t in p.sample_type]
    inuse = sum(s.value[types.index("inuse_space")] for s in p.sample)
    return f"{len(p.sample)} stacks, {scaled_label(inuse, 'bytes')} in use"


WORLD = '''
import json, pickle, sys

class Point:
    def __init__(self, x):
        self.x = x

hot(0.2)
main = sys.modules["__main__"]
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "spec": __spec__ and (__spec__.name, __spec__.origin),
    "package": __package__,
    "path": sys.path,
    "main_is_us": main.__dict__ is globals(),
    "pickle": pickle.loads(pickle.dumps(Point(3))).x,
    "doc": __doc__,
}))
'''


def test_script_sees_what_python_gives_it(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    program(tmp_path / "sub", WORLD)
    plain = python("sub/prog.py", "a", "-o", "x", cwd=tmp_path)
    ours = run("-o", "out.pb.gz", "sub/prog.py", "a", "-o", "x", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 0, ours.stderr
    seen, expected = json.loads(ours.stdout), json.loads(plain.stdout)
    assert seen == expected
    assert seen["argv"] == ["sub/prog.py", "a", "-o", "x"]
    assert seen["path"][0] == str((tmp_path / "sub").resolve())
    assert summary_lines(ours.stderr) == [
        f"pyproperf: wrote out.pb.gz ({cpu_summary(tmp_path / 'out.pb.gz')})"
    ]
    assert_profile(tmp_path / "out.pb.gz", "__main__.hot", "__main__.<module>")


@pytest.mark.parametrize("kind", ["directory", "zip"])
def test_directory_and_zip_with_main(tmp_path: Path, kind: str) -> None:
    app = tmp_path / "app"
    program(app, WORLD, name="__main__.py")
    target = "app"
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
            z.write(app / "__main__.py", "__main__.py")
        target = "app.zip"
    plain = python(target, "z", cwd=tmp_path)
    ours = run(target, "z", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 0, ours.stderr
    assert json.loads(ours.stdout) == json.loads(plain.stdout)
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def test_stacks_start_at_the_program(tmp_path: Path) -> None:
    program(tmp_path, "hot(0.3)\n")
    out = run("prog.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")
    assert not [name for name in rows if name.startswith(("runpy.", "pyproperf."))], sorted(rows)


def test_module_sees_what_python_m_gives_it(tmp_path: Path) -> None:
    pkg = tmp_path / "pkgx"
    program(pkg, "", name="__init__.py")
    program(pkg, WORLD, name="app.py")
    program(pkg, "import pkgx.app\n", name="__main__.py")
    for target in ("pkgx.app", "pkgx"):
        plain = python("-m", target, "b", "--hz", "3", cwd=tmp_path)
        ours = run("-o", "mod.pb.gz", "-m", target, "b", "--hz", "3", cwd=tmp_path)
        assert plain.returncode == ours.returncode == 0, ours.stderr
        assert json.loads(ours.stdout) == json.loads(plain.stdout)
        assert json.loads(ours.stdout)["argv"][1:] == ["b", "--hz", "3"]
        assert_profile(tmp_path / "mod.pb.gz")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("sys.exit(3)", 3),
        ("sys.exit()", 0),
        ("sys.exit('bye')", 1),
        ("raise SystemExit(None)", 0),
        ("exit(42)", 42),
        ("pass", 0),
    ],
)
def test_exit_status_is_the_programs(tmp_path: Path, body: str, status: int) -> None:
    program(tmp_path, f"import sys\nhot(0.05)\n{body}\n")
    plain = python("prog.py", cwd=tmp_path)
    ours = run("prog.py", cwd=tmp_path)
    assert plain.returncode == ours.returncode == status
    assert plain.stderr in ours.stderr
    assert_profile(tmp_path / "cpu.pb.gz")


EXCEPTION = '''
def inner():
    hot(0.3)
    raise ValueError("boom")

def outer():
    try:
        {}[1]
    except KeyError:
        inner()

outer()
'''


def test_exception_prints_pythons_traceback_and_keeps_the_profile(tmp_path: Path) -> None:
    program(tmp_path, EXCEPTION)
    plain = python("prog.py", cwd=tmp_path)
    ours = run("prog.py", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 1
    assert ours.stderr.startswith(plain.stderr)  # same traceback, none of our frames
    assert "pyproperf" not in plain.stderr.replace(str(tmp_path), "")
    assert "ValueError: boom" in ours.stderr and "KeyError" in ours.stderr
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.inner", "__main__.hot")


def test_syntax_error_as_python(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("x = (\n")
    plain = python("prog.py", cwd=tmp_path)
    ours = run("prog.py", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 1
    assert ours.stderr.startswith(plain.stderr)


def test_user_excepthook_is_used(tmp_path: Path) -> None:
    program(tmp_path, '''
        import sys
        sys.excepthook = lambda t, v, tb: print("custom hook:", v, file=sys.stderr)
        raise RuntimeError("oops")
    ''')
    ours = run("prog.py", cwd=tmp_path)
    assert ours.returncode == 1
    assert ours.stderr.startswith("custom hook: oops\n")


SPIN = '''
import sys

def spin():
    while True:
        hot(0.05)

hot(0.3)  # so the profile has something however loaded the machine is
print("ready", flush=True)
spin()
'''


def interrupt(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Start ``args``, wait for its "ready", let it burn a while, then send SIGINT."""
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = communicate_or_kill(proc, 60)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_ctrl_c_ends_as_python_does_and_keeps_the_profile(tmp_path: Path) -> None:
    program(tmp_path, SPIN)
    plain = interrupt([sys.executable, "prog.py"], tmp_path)
    ours = interrupt([sys.executable, "-m", "pyproperf", "run", "prog.py"], tmp_path)
    assert plain.returncode == ours.returncode == -signal.SIGINT, (plain, ours)
    assert ours.stderr.count("KeyboardInterrupt") == 1, ours.stderr
    assert "Traceback" in ours.stderr and "pyproperf/" not in ours.stderr
    assert len(summary_lines(ours.stderr)) == 1
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.spin", "__main__.hot")
    assert rows["__main__.hot"].flat >= 0.1  # type: ignore[attr-defined]


def test_ctrl_c_caught_by_the_program(tmp_path: Path) -> None:
    program(tmp_path, '''
        import sys
        try:
            print("ready", flush=True)
            while True:
                hot(0.05)
        except KeyboardInterrupt:
            print("caught", flush=True)
            sys.exit(5)
    ''')
    ours = interrupt([sys.executable, "-m", "pyproperf", "run", "prog.py"], tmp_path)
    assert ours.returncode == 5
    assert ours.stdout == "caught\n"
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def test_non_daemon_threads_are_waited_for(tmp_path: Path) -> None:
    program(tmp_path, '''
        import threading

        def worker():
            hot(0.4)
            print("worker done", flush=True)

        threading.Thread(target=worker, name="late").start()
        print("main done", flush=True)
    ''')
    ours = run("prog.py", cwd=tmp_path)
    assert ours.returncode == 0
    assert ours.stdout == "main done\nworker done\n"
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.worker")
    assert rows["__main__.hot"].flat >= 0.2  # type: ignore[attr-defined]
    assert "thread:" in pprof("-tags", tmp_path / "cpu.pb.gz")


WAITED_FOR = '''
import threading

def worker():
    hot(0.2)
    threading.main_thread().join()  # returns when exit starts waiting for us
    print("ready", flush=True)
    threading.Event().wait(60)

threading.Thread(target=worker).start()
'''


def interrupt_exit(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """SIGINT once the interpreter's exit is waiting for a non-daemon thread."""
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = communicate_or_kill(proc, 60)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_ctrl_c_while_exit_waits_for_threads_is_ignored_as_python_does(tmp_path: Path) -> None:
    program(tmp_path, WAITED_FOR)
    plain = interrupt_exit([sys.executable, "prog.py"], tmp_path)
    ours = interrupt_exit([sys.executable, "-m", "pyproperf", "run", "prog.py"], tmp_path)
    # Python reports the KeyboardInterrupt as ignored and exits with the
    # program's status, without waiting for the thread again.
    assert plain.returncode == ours.returncode == 0, (plain, ours)
    for out in (plain, ours):
        assert out.stderr.count("KeyboardInterrupt") == 1, out.stderr
        assert "threading.py" in out.stderr
        if sys.version_info < (3, 13):
            assert "Exception ignored in: <module 'threading'" in out.stderr, out.stderr
    assert len(summary_lines(ours.stderr)) == 1
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.worker", "__main__.hot")


def test_forked_child_does_not_write(tmp_path: Path) -> None:
    program(tmp_path, '''
        import os
        pid = os.fork()
        hot(0.1)
        if pid:
            os.waitpid(pid, 0)
        print("child" if pid == 0 else "parent", flush=True)
    ''')
    ours = run("prog.py", cwd=tmp_path)
    assert ours.returncode == 0
    assert sorted(ours.stdout.split()) == ["child", "parent"]
    assert len(summary_lines(ours.stderr)) == 1
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def test_program_may_chdir(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    program(tmp_path, "import os\nos.chdir('elsewhere')\nhot(0.1)\n")
    out = run("prog.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "elsewhere" / "cpu.pb.gz").exists()
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def test_wall_clock_shows_waiting(tmp_path: Path) -> None:
    program(tmp_path, '''
        import time

        def waiter():
            time.sleep(0.6)

        waiter()
        hot(0.1)
    ''')
    ours = run("--clock", "wall", "--hz", "200", "prog.py", cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    path = tmp_path / "wall.pb.gz"  # the default name with --clock wall
    rows = assert_profile(path, "__main__.waiter")
    assert rows["__main__.waiter"].cum >= 0.4  # type: ignore[attr-defined]
    assert "Type: wall" in pprof("-top", path)
    assert load(path).period == 5_000_000


def test_usage_errors_exit_2_before_the_program_runs(tmp_path: Path) -> None:
    program(tmp_path, "open('ran', 'w').close()\n")
    bad = [
        [],
        ["-o", str(tmp_path / "missing" / "x.pb.gz"), "prog.py"],
        ["-o", str(tmp_path), "prog.py"],
        ["--hz", "0", "prog.py"],
        ["--hz", "many", "prog.py"],
        ["--hz", "1000000", "prog.py"],
        ["--clock", "sundial", "prog.py"],
        ["--bogus", "prog.py"],
        ["-m"],
        ["-"],
        ["--heap", "same.pb.gz", "-o", "same.pb.gz", "prog.py"],
        ["--http", "not-an-address", "prog.py"],
    ]
    for args in bad:
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert "usage:" in out.stderr and "Traceback" not in out.stderr, args
        assert not (tmp_path / "ran").exists(), args


def test_missing_program(tmp_path: Path) -> None:
    out = run("nope.py", cwd=tmp_path)
    assert out.returncode == 2
    assert "can't open file" in out.stderr and "nope.py" in out.stderr
    out = run("-m", "no_such_module_xyz", cwd=tmp_path)
    assert out.returncode == 1
    assert "No module named no_such_module_xyz" in out.stderr
    assert not list(tmp_path.glob("*.pb.gz"))


def test_program_options_are_not_ours(tmp_path: Path) -> None:
    program(tmp_path, "import sys\nprint(sys.argv[1:])\n")
    out = run("-o", "p.pb.gz", "prog.py", "-o", "x", "--hz", "5", "--", "-m", "y", cwd=tmp_path)
    assert out.returncode == 0
    assert out.stdout.strip() == "['-o', 'x', '--hz', '5', '--', '-m', 'y']"
    out = run("--", "prog.py", "--clock", cwd=tmp_path)
    assert out.stdout.strip() == "['--clock']"


def test_http_serves_while_the_program_runs(tmp_path: Path) -> None:
    program(tmp_path, '''
        import os, time
        deadline = time.monotonic() + 30
        while not os.path.exists("go") and time.monotonic() < deadline:
            hot(0.02)
    ''')
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyproperf", "run", "--http", "127.0.0.1:0", "prog.py", "arg1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("pyproperf: serving http://127.0.0.1:"), line
        url = line.split()[-1]
        with urllib.request.urlopen(url + "cmdline", timeout=10) as response:
            cmdline = response.read().decode()
        # Go's os.Args: the process's whole command line (sys.orig_argv), not the program's argv
        assert cmdline.split("\x00") == [
            sys.executable, "-m", "pyproperf", "run", "--http", "127.0.0.1:0", "prog.py", "arg1"
        ]
        # the program's own start_cpu_profile slot stays free: /profile works
        with urllib.request.urlopen(url + "profile?seconds=1", timeout=30) as response:
            data = response.read()
        (tmp_path / "live.pb.gz").write_bytes(data)
        check_valid(load(tmp_path / "live.pb.gz"))
    finally:
        (tmp_path / "go").touch()
        _, stderr = communicate_or_kill(proc, 60)
    assert proc.returncode == 0, stderr
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def frames_of(path: Path) -> set[str]:
    """Every function name in any stack of a profile file."""
    return {name for names, _, _ in stacks(load(path)) for name in names}


def test_heap_stacks_are_the_programs_only(tmp_path: Path) -> None:
    """``run --heap --http``: no pyproperf or launcher frame in any heap or CPU stack.

    The CPU sampler, the heap snapshot thread, the HTTP server and a
    goroutine dump all allocate while the program runs; none of it may
    show, while the program's own sites (also one under ``pyproperf.do``) do.
    """
    program(tmp_path, '''
        import os, time
        import pyproperf

        def build():
            return [{"id": i, "name": f"user{i}"} for i in range(50_000)]

        def labeled_part(ctx):
            return [bytes(100_000) for _ in range(5)]

        rows = build()
        extra = pyproperf.do(None, pyproperf.labels("part", "x"), labeled_part)
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists("go") and time.monotonic() < deadline:
            hot(0.02)
    ''')
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyproperf", "run", "--heap", "heap.pb.gz",
         "--http", "127.0.0.1:0", "prog.py"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        url = proc.stderr.readline().split()[-1]
        assert proc.stdout.readline() == "ready\n"
        for endpoint, name in (("goroutine?debug=2", "served_goroutines"),
                               ("heap", "served_heap"), ("allocs", "served_allocs"),
                               ("profile?seconds=1", "served_cpu")):
            with urllib.request.urlopen(url + endpoint, timeout=60) as response:
                (tmp_path / f"{name}.pb.gz").write_bytes(response.read())
    finally:
        (tmp_path / "go").touch()
        _, stderr = communicate_or_kill(proc, 120)
    assert proc.returncode == 0, stderr
    dump = (tmp_path / "served_goroutines.pb.gz").read_text()
    assert "goroutine " in dump and "prog.py" in dump, dump[:500]  # the dump did run
    for name in ("heap", "served_heap", "served_allocs", "served_cpu", "cpu"):
        names = frames_of(tmp_path / f"{name}.pb.gz")
        alien = {n for n in names if n.startswith(("pyproperf", "runpy", "<frozen runpy>"))}
        assert not alien, (name, alien)
        assert "__main__.<module>" in names, name  # stacks start at the program
    for name in ("heap", "served_heap", "served_allocs"):
        rows = top_by_name(tmp_path / f"{name}.pb.gz", "-sample_index=inuse_space")
        assert rows["__main__.build"].cum >= 3_000_000, (name, rows)  # type: ignore[attr-defined]
        assert rows["__main__.labeled_part"].cum >= 500_000, name  # type: ignore[attr-defined]
    assert "__main__.hot" in frames_of(tmp_path / "served_cpu.pb.gz")


def test_http_address_in_use(tmp_path: Path) -> None:
    import socket

    program(tmp_path, "open('ran', 'w').close()\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("--http", f"127.0.0.1:{port}", "prog.py", cwd=tmp_path)
    assert out.returncode == 2
    assert "argument --http" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ran").exists()


def test_heap_profile_alongside(tmp_path: Path) -> None:
    program(tmp_path, '''
        def make_garbage():
            return [str(i) * 10 for i in range(20_000)]

        kept = make_garbage()
        for _ in range(5):
            make_garbage()
        hot(0.1)
    ''')
    out = run("--heap", "heap.pb.gz", "prog.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert summary_lines(out.stderr) == [
        f"pyproperf: wrote cpu.pb.gz ({cpu_summary(tmp_path / 'cpu.pb.gz')})",
        f"pyproperf: wrote heap.pb.gz ({heap_summary(tmp_path / 'heap.pb.gz')})",
    ]
    heap = tmp_path / "heap.pb.gz"
    rows = assert_profile(heap, "__main__.make_garbage")
    assert rows["__main__.make_garbage"].cum >= 20_000 * 50  # type: ignore[attr-defined]
    assert "Type: alloc_space" in pprof("-top", heap)  # as go test -memprofile writes
    assert "Type: inuse_space" in pprof("-top", "-sample_index=inuse_space", heap)
    assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pyproperf")
    if not script.exists():
        pytest.skip("the pyproperf console script is not installed in this environment")
    program(tmp_path, "hot(0.3)\n")
    out = subprocess.run(
        [str(script), "run", "prog.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.hot")
    assert sorted(rows) == ["__main__.<module>", "__main__.hot"]


def view_command(stderr: str) -> str:
    """The command ``run``'s last line says to view the profile with."""
    line = stderr.splitlines()[-1]
    prefix = "pyproperf: view it with: "
    assert line.startswith(prefix), stderr
    command, _, rest = line.removeprefix(prefix).partition("  (or: ")
    assert rest.startswith("go tool pprof -http=: "), line
    return command


def run_in_plain_shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` in a shell where no virtual environment is active."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.defpath
    return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell runs the command")
@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_view_hint_works_without_an_active_venv(tmp_path: Path, how: str) -> None:
    program(tmp_path, "hot(0.3)\n")
    args = ["run", "-o", "my cpu.pb.gz", "prog.py"]  # a name the shell must get quoted
    if how == "python -m":
        out = python("-m", "pyproperf", *args, cwd=tmp_path)
        expected = f"{shlex.quote(sys.executable)} -m pyproperf top 'my cpu.pb.gz'"
    else:
        script = Path(sys.executable).with_name("pyproperf")
        if not script.exists():
            pytest.skip("the pyproperf console script is not installed in this environment")
        out = subprocess.run([str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=False)
        expected = f"{shlex.quote(str(script))} top 'my cpu.pb.gz'"
    assert out.returncode == 0, out.stderr
    command = view_command(out.stderr)
    assert command == expected
    viewed = run_in_plain_shell(command, tmp_path)
    assert viewed.returncode == 0, viewed.stderr
    assert "__main__.hot" in viewed.stdout
    # The control: that shell does not find this environment's python or pyproperf.
    found = run_in_plain_shell("command -v python pyproperf", tmp_path).stdout
    assert str(Path(sys.executable).parent) not in found, found


# --- the bundled examples ------------------------------------------------------------


def test_example_logstats(tmp_path: Path) -> None:
    out = run("-o", "cpu.pb.gz", str(EXAMPLES / "logstats.py"), "--lines", "20000", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("path ")
    rows = assert_profile(
        tmp_path / "cpu.pb.gz",
        "__main__.parse_line", "__main__.fingerprint", "__main__.percentiles", "__main__.generate",
    )
    top = python("-m", "pyproperf", "top", "cpu.pb.gz", cwd=tmp_path)
    assert top.returncode == 0
    assert top.stdout == pprof("-top", tmp_path / "cpu.pb.gz")
    assert rows["__main__.summarise"].cum > rows["__main__.generate"].cum  # type: ignore[attr-defined]


def test_example_threads(tmp_path: Path) -> None:
    out = run(str(EXAMPLES / "threads.py"), "--rounds", "8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    truth: dict[str, float] = {}
    for line in out.stdout.splitlines():  # "compress-1   cpu   0.93 s  result ..."
        name, _, seconds, *_ = line.split()
        truth[name.split("-")[0]] = truth.get(name.split("-")[0], 0.0) + float(seconds)
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.compress", "__main__.checksum")
    for job in ("compress", "checksum"):
        measured = rows[f"__main__.{job}"].flat  # type: ignore[attr-defined]
        assert abs(measured - truth[job]) <= 0.25 * truth[job] + 0.05, (job, measured, truth)


def test_example_async(tmp_path: Path) -> None:
    out = run(str(EXAMPLES / "async_pages.py"), "--pages", "120", "--latency", "0.02",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # The tasks' coroutine chain is on the stack: crawl -> index_words.
    rows = assert_profile(tmp_path / "cpu.pb.gz", "__main__.index_words", "__main__.crawl")
    flat = {name: row.flat for name, row in rows.items()}  # type: ignore[attr-defined]
    assert max(flat, key=flat.__getitem__) == "__main__.index_words"


@pytest.mark.parametrize("example", ["logstats.py", "threads.py", "async_pages.py"])
def test_examples_run_plain(tmp_path: Path, example: str) -> None:
    args = {"logstats.py": ["--lines", "2000"], "threads.py": ["--rounds", "1"],
            "async_pages.py": ["--pages", "10", "--latency", "0"]}[example]
    out = python(str(EXAMPLES / example), *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout and out.stderr == ""
    assert os.listdir(tmp_path) == []


def test_help_and_readme_agree_on_what_heap_writes(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--heap FILE`"))
    for text in (help_text, row.replace("`", "")):
        assert "allocs profile" in text and "heap profile" not in text, text
    # What it writes is what they say: an allocs profile, alloc_space first.
    program(tmp_path, "kept = [bytes(1000) for _ in range(1000)]\n")
    assert run("--heap", "h.pb.gz", "prog.py", cwd=tmp_path).returncode == 0
    assert "Type: alloc_space" in pprof("-top", tmp_path / "h.pb.gz")


GEVENT_PROGRAM = '''
from gevent import monkey; monkey.patch_all()
import sys, threading, time
import gevent

def work(n):
    kept = [bytearray(1000) for _ in range(n)]
    time.sleep(0.01)
    return kept

jobs = [gevent.spawn(work, 2000) for _ in range(4)]
gevent.joinall(jobs)
t = threading.Thread(target=work, args=(500,))
t.start()
t.join()
print("done", threading.current_thread().name, flush=True)
sys.exit(3)
'''


def test_heap_run_of_a_gevent_program(tmp_path: Path) -> None:
    """``--heap`` runs the program on a stack of its own (a greenlet): gevent still works.

    Monkey patching happens inside that greenlet; the exit's wait for threads
    must run there too, and pyproperf's own threads must not trip on the
    patched ``threading``.
    """
    program(tmp_path, GEVENT_PROGRAM)
    plain = python("prog.py", cwd=tmp_path)
    ours = run("--heap", "h.pb.gz", "prog.py", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 3, (plain, ours)
    assert plain.stdout == ours.stdout == "done MainThread\n"
    assert "Exception" not in ours.stderr and "Traceback" not in ours.stderr, ours.stderr
    assert "includes tracemalloc's cost" in ours.stderr  # the CPU profile's caveat
    rows = top_by_name(tmp_path / "h.pb.gz", "-sample_index=inuse_space")
    assert rows["__main__.work"].cum >= 4 * 2000 * 1000, rows  # type: ignore[attr-defined]
    names = frames_of(tmp_path / "h.pb.gz")
    assert not {n for n in names if n.startswith(("pyproperf", "runpy"))}, names
