"""Profiles written to paths: what the path was stays what it was.

A profile replaces a regular file all at once, but follows symbolic links,
writes devices and FIFOs in place, keeps an existing file's mode and gives
a new file the umask's mode.  A path that can never be written is an error
when the profile starts, not when its samples are lost at the end.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyproperf
from pyproperf import _io
from tests import cpu_workloads as wl
from tests.pprof_tool import load, pprof, stacks


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def profile_section(target: object) -> None:
    with pyproperf.cpu_profile(target):  # type: ignore[arg-type]
        wl.spin(0.05)


def assert_real_profile(path: Path) -> None:
    """Go's pprof reads it and it has the spin we ran."""
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert any(f"{wl.MODULE}.spin" in names for names, _, _ in stacks(load(path)))
    assert "spin" in pprof("-top", path)


def test_symlink_stays_a_link_and_its_target_gets_the_profile(tmp_path: Path) -> None:
    real = tmp_path / "real.pb.gz"
    real.write_bytes(b"old")
    link = tmp_path / "link.pb.gz"
    link.symlink_to(real)
    profile_section(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert_real_profile(real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pb.gz", "real.pb.gz"]


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.pb.gz"
    link.symlink_to(tmp_path / "made.pb.gz")
    profile_section(link)
    assert link.is_symlink()
    assert_real_profile(tmp_path / "made.pb.gz")


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "private.pb.gz"
    path.write_bytes(b"old")
    path.chmod(0o600)
    profile_section(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_real_profile(path)
    for mode in (0o640, 0o4755):  # and any other mode, setuid included
        path.chmod(mode)
        profile_section(path)
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_new_file_honours_the_umask(tmp_path: Path, umask_077: None) -> None:
    path = tmp_path / "new.pb.gz"
    profile_section(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_real_profile(path)
    # Positive control: the same call under umask 022 gives 0644.
    os.umask(0o022)
    other = tmp_path / "other.pb.gz"
    profile_section(other)
    assert stat.S_IMODE(other.stat().st_mode) == 0o644


def test_every_path_writer_keeps_the_mode(tmp_path: Path, umask_077: None) -> None:
    """Profile.write_to, write_heap_profile and the CLI go through the same writer."""
    p = pyproperf.lookup("goroutine")
    assert p is not None
    p.write_to(tmp_path / "goroutine.pb.gz", 0)
    with pyproperf.heap_profile(tmp_path / "heap.pb.gz"):
        kept = [bytearray(1000) for _ in range(100)]
    del kept
    script = tmp_path / "prog.py"
    script.write_text("sum(i * i for i in range(200_000))\n")
    subprocess.run(
        [sys.executable, "-m", "pyproperf", "run", "-o", str(tmp_path / "cli.pb.gz"), str(script)],
        check=True, capture_output=True, timeout=120,
    )
    for name in ("goroutine.pb.gz", "heap.pb.gz", "cli.pb.gz"):
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert load(path).sample_type, name


def test_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    profile_section(fifo)
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    out = tmp_path / "got.pb.gz"
    out.write_bytes(received[0])
    assert_real_profile(out)


def test_device_is_written_in_place_and_its_error_reported(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.fail("/dev/full is missing on this Linux machine")
    before = os.stat("/dev/full")
    with pytest.raises(OSError, match="No space"):
        profile_section("/dev/full")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert [p for p in os.listdir("/dev") if p.startswith(".pyproperf-")] == []
    # /dev/null takes it silently (the positive control: devices do get written).
    profile_section("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("", ValueError),
        (".", IsADirectoryError),
        ("/proc/pyproperf-test.pb.gz", OSError),
        ("missing-dir/x.pb.gz", FileNotFoundError),
    ],
)
def test_unwritable_targets_fail_when_the_profile_starts(
    target: str, error: type[Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        pyproperf.cpu_profile(target)
    goroutine = pyproperf.lookup("goroutine")
    assert goroutine is not None
    with pytest.raises(error):
        goroutine.write_to(target, 0)
    assert os.listdir(tmp_path) == []


def test_directory_without_write_permission_fails_at_start(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root may write anywhere; a read-only mount is the same check for root
        target = "/proc/self/x.pb.gz"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "x.pb.gz")
    with pytest.raises(OSError, match="cannot create a file"):
        pyproperf.cpu_profile(target)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.pb.gz"
    path.write_bytes(b"old")

    def broken(w: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io, "write_all", broken)
    with pytest.raises(OSError, match="No space"):
        profile_section(path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["p.pb.gz"]


def test_cli_reports_bad_outputs_before_running(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for output in ("", str(tmp_path), "/proc/x.pb.gz", str(tmp_path / "no" / "x.pb.gz")):
        out = subprocess.run(
            [sys.executable, "-m", "pyproperf", "run", "-o", output, str(script)],
            check=False, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 2, (output, out.stderr)
        # argparse's usage, then one error line naming the option.
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("python -m pyproperf run: error: argument -o/--output: "), last
        assert "Traceback" not in out.stderr
        assert not marker.exists()


def test_path_ending_in_a_separator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        pyproperf.cpu_profile(str(tmp_path / "new.pb.gz") + os.sep)
    assert os.listdir(tmp_path) == []


def test_relative_path_is_fixed_when_the_profile_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    with pyproperf.cpu_profile("rel.pb.gz"):
        os.chdir(second)
        wl.spin(0.05)
    assert_real_profile(first / "rel.pb.gz")
    assert os.listdir(second) == []


def test_fifo_without_a_reader_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="no process is reading"):
        profile_section(fifo)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_read_only_files_as_open_would(tmp_path: Path) -> None:
    locked = tmp_path / "locked.pb.gz"
    locked.write_bytes(b"old")
    locked.chmod(0o444)
    try:
        with open(locked, "ab"):
            opens = True
    except PermissionError:
        opens = False
    if opens:  # root: open() may write it, so may we
        profile_section(locked)
        assert_real_profile(locked)
    else:
        with pytest.raises(PermissionError):
            profile_section(locked)
        assert locked.read_bytes() == b"old"
