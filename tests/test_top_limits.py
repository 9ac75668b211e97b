"""``python -m pyproperf top`` on hostile files: bounded in size, memory and work.

A profile file is small on disk for what it can cost to read: gzip bombs
of zeros, 100 million empty fields in 200 KB, ``/dev/zero``, a FIFO that
never ends.  Each must give one line on stderr and status 2, without
reading more than ``--max-size`` (64 MiB by default) after decompression.
Memory is measured as the peak RSS of the ``top`` process (a wrapper
process runs it, so RUSAGE_CHILDREN sees only that one); time is not
asserted here (the report has the figures).
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from pyproperf import _read, _top
from tests.pprof_tool import pprof
from tests.test_top import cli, cpu_profile, write

MiB = 1 << 20
DEFAULT = 64 * MiB

_MEASURE = """
import resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status)
"""


def measured_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``python -m pyproperf ARGS``; its result and its peak RSS in bytes."""
    rss_file = tmp_path / "maxrss"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(rss_file), sys.executable, "-m", "pyproperf", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return proc, int(rss_file.read_text()) * 1024  # Linux: kilobytes


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of ``top`` on a small good profile: what the bounds are measured from."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc, rss = measured_cli(tmp, "top", str(cpu_profile(tmp)))
    assert proc.returncode == 0, proc.stderr
    return rss


def assert_one_line_error(proc: subprocess.CompletedProcess[str], path: Path, message: str) -> None:
    """Status 2, nothing on stdout, and exactly ``pyproperf top: PATH: MESSAGE`` on stderr."""
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"pyproperf top: {path}: {message}"], proc.stderr


def gzip_bomb(path: Path, pattern: bytes, total: int) -> Path:
    """A gzip file of ``pattern`` repeated to ``total`` bytes, built without compressing it all.

    One MiB of the pattern is deflated once and ended with a full flush, so
    the block stands alone and can be repeated; an empty final block and the
    real CRC and size follow.  256 MiB of zeros come out at 265 KB.
    """
    chunk = pattern * (MiB // len(pattern))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    count = total // len(chunk)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        for _ in range(count):
            f.write(block)
        f.write(b"\x03\x00")  # the final, empty block
        f.write(struct.pack("<II", crc, (count * len(chunk)) & 0xFFFFFFFF))
    return path


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, body: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(body)) + body


STRINGS = field(6, b"") + field(6, b"samples") + field(6, b"count") + field(6, b"f")
SAMPLE_TYPE = field(1, b"\x08\x01\x10\x02")  # samples/count
LOCATION_1 = field(4, b"\x08\x01" + field(4, b"\x08\x01\x10\x07"))  # id 1: function 1, line 7
FUNCTION_1 = field(5, b"\x08\x01\x10\x03")  # id 1, name "f"
GOOD = STRINGS + SAMPLE_TYPE + LOCATION_1 + FUNCTION_1 + field(2, b"\x0a\x01\x01\x12\x01\x05")


# --- bombs ------------------------------------------------------------------------


def test_good_hand_made_profile_is_read(tmp_path: Path) -> None:
    """The pieces the hostile files below are made of form a profile Go and we read alike."""
    path = write(tmp_path, "good.pb", GOOD)
    out = cli("top", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", path)
    assert out.stdout.splitlines()[-1].split() == ["5", "100%", "100%", "5", "100%", "f"]


def test_gzip_bomb_of_zeros_fails_at_the_first_field(tmp_path: Path, baseline_rss: int) -> None:
    path = gzip_bomb(tmp_path / "zeros.gz", b"\0", 256 * MiB)
    assert path.stat().st_size < 300_000
    proc, rss = measured_cli(tmp_path, "top", str(path))
    assert_one_line_error(
        proc, path, "parsing profile: unrecognized profile format (invalid field number 0)"
    )
    assert rss < baseline_rss + 16 * MiB  # rejected in the first 64 KiB inflated


def test_bomb_of_empty_fields_stops_at_the_default_cap(tmp_path: Path, baseline_rss: int) -> None:
    """128 Mi empty sample types (the issue's 100 M empty fields): valid protobuf, too big."""
    path = gzip_bomb(tmp_path / "empty.gz", b"\x0a\x00", 256 * MiB)
    proc, rss = measured_cli(tmp_path, "top", str(path))
    assert_one_line_error(
        proc, path,
        "decompressing profile: larger than 64 MiB (the --max-size limit; raise it to read)",
    )
    assert rss < baseline_rss + 3 * DEFAULT  # the 64 MiB read, joined once; never 256 MiB


def test_max_size_flag_bounds_memory(tmp_path: Path, baseline_rss: int) -> None:
    path = gzip_bomb(tmp_path / "empty.gz", b"\x0a\x00", 256 * MiB)
    proc, rss = measured_cli(tmp_path, "top", "--max-size", "2M", str(path))
    assert_one_line_error(
        proc, path,
        "decompressing profile: larger than 2 MiB (the --max-size limit; raise it to read)",
    )
    assert rss < baseline_rss + 16 * MiB


def test_dev_zero_fails_at_once(tmp_path: Path, baseline_rss: int) -> None:
    proc, rss = measured_cli(tmp_path, "top", "/dev/zero")
    assert_one_line_error(
        proc, Path("/dev/zero"),
        "parsing profile: unrecognized profile format (invalid field number 0)",
    )
    assert rss < baseline_rss + 16 * MiB


def _feed_forever(fifo: Path, head: bytes, chunk: bytes) -> threading.Thread:
    """A thread writing ``head``, then ``chunk`` over and over, into the FIFO until top stops."""

    def run() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(head)
                while True:
                    f.write(chunk)
        except OSError:  # BrokenPipeError once top stops reading
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _release(fifo: Path, thread: threading.Thread) -> None:
    """Let a writer still waiting for a reader go (if top never opened the FIFO)."""
    if thread.is_alive():
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("head", "chunk"),
    [
        # Valid-looking fields that never end: stopped by the size cap.
        (b"", b"\x0a\x00" * 32768),
        # A gzip stream of empty stored blocks: nothing comes out, so only the
        # cap on the compressed read stops it.
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", b"\x00\x00\x00\xff\xff" * 13107),
    ],
    ids=["fields", "empty gzip blocks"],
)
def test_endless_fifo_stops_at_the_cap(
    tmp_path: Path, baseline_rss: int, head: bytes, chunk: bytes
) -> None:
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    thread = _feed_forever(fifo, head, chunk)
    try:
        proc, rss = measured_cli(tmp_path, "top", "--max-size", "1M", str(fifo))
    finally:
        _release(fifo, thread)
    assert_one_line_error(
        proc, fifo, "reading profile: larger than 1 MiB (the --max-size limit; raise it to read)"
    )
    assert rss < baseline_rss + 16 * MiB


# --- the wire check ---------------------------------------------------------------

# name: (bytes after a good profile, why, whether more fields may follow)
BAD_WIRE = {
    "field 0": (b"\x00\x00", "invalid field number 0", True),
    "field 0, length-delimited": (b"\x02\x00", "invalid field number 0", True),
    "field 0 inside a sample": (field(2, b"\x00\x00"), "invalid field number 0", True),
    "field 0 inside a location": (field(4, b"\x08\x01\x02\x00"), "invalid field number 0", True),
    "field number above 2**29-1": (
        b"\xf8\xff\xff\xff\x1f\x00", "invalid field number 1073741823", True
    ),
    "wire type 3 (group)": (b"\x0b\x0c", "unknown wire type 3", True),
    "wire type 4": (b"\x84\x01\x00", "unknown wire type 4", True),
    "wire type 6": (b"\x0e\x00", "unknown wire type 6", True),
    "wire type 7": (b"\x0f\x00", "unknown wire type 7", True),
    "wire type 7 inside a sample": (field(2, b"\x0f\x00"), "unknown wire type 7", True),
    "varint of 11 bytes": (b"\x38" + b"\xff" * 10 + b"\x01", "bad varint", True),
    "varint cut off": (b"\x38\xff", "bad varint", False),
    "length past the end": (b"\x0a\x05\x08\x01", "truncated data", False),
    "length past the end of its sample": (field(2, b"\x1a\x05\x08\x01"), "truncated data", True),
    "string table as a number": (b"\x30\x01", "type mismatch in field 6", True),
    "label as a number": (field(2, b"\x18\x01"), "type mismatch in field 3", True),
    "line as a number": (field(4, b"\x08\x01\x20\x01"), "type mismatch in field 4", True),
}


@pytest.mark.parametrize("name", list(BAD_WIRE))
def test_bad_wire_format_fails_at_the_first_bad_field(tmp_path: Path, name: str) -> None:
    """A good profile, the bad field, then 1 MiB more: the error names the bad field."""
    bad, why, more = BAD_WIRE[name]
    data = GOOD + bad + (b"\x0a\x00" * (MiB // 2) if more else b"")
    path = write(tmp_path, "bad.pb", data)
    with pytest.raises(ValueError) as err:
        _top.load(str(path))
    assert str(err.value) == f"parsing profile: unrecognized profile format ({why})"
    gz = write(tmp_path, "bad.pb.gz", gzip.compress(data))
    with pytest.raises(ValueError) as err_gz:
        _top.load(str(gz))
    assert str(err_gz.value) == str(err.value)
    assert "flat%" not in pprof("-top", path, check=False)  # Go refuses it too


def test_field_0_through_the_command(tmp_path: Path) -> None:
    path = write(tmp_path, "zero.pb", GOOD + b"\x00\x00" + b"\x0a\x00" * MiB)
    assert_one_line_error(
        cli("top", str(path)), path,
        "parsing profile: unrecognized profile format (invalid field number 0)",
    )


def test_field_count_is_bounded_by_max_size(tmp_path: Path) -> None:
    """Empty strings under a 4 MiB cap: 4 MiB / 16 = 262144 fields at most."""
    limit = 4 * MiB // 16
    fields = 12  # GOOD's: 4 strings, a sample type, a function, a location and a sample (2 each)
    over = write(tmp_path, "over.pb", GOOD + b"\x32\x00" * (limit - fields + 1))
    assert len(over.read_bytes()) < MiB
    assert_one_line_error(
        cli("top", "--max-size", "4M", str(over)), over,
        "parsing profile: more than 262144 fields (one per 16 bytes of --max-size; "
        "raise it to read)",
    )
    under = write(tmp_path, "under.pb", GOOD + b"\x32\x00" * (limit - fields))
    out = cli("top", "--max-size", "4M", str(under))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", under)


def test_number_count_is_bounded_by_max_size(tmp_path: Path) -> None:
    """Location ids of one sample under a 4 MiB cap: 4 MiB / 4 = 1048576 numbers at most."""
    limit = 4 * MiB // 4

    def profile(ids: int) -> bytes:
        sample = field(1, b"\x01" * ids) + field(2, b"\x05")
        return STRINGS + SAMPLE_TYPE + LOCATION_1 + FUNCTION_1 + field(2, sample)

    over = write(tmp_path, "over.pb", profile(limit))  # and the value: one over
    assert_one_line_error(
        cli("top", "--max-size", "4M", str(over)), over,
        "parsing profile: more than 1048576 numbers in lists (one per 4 bytes of --max-size; "
        "raise it to read)",
    )
    under = write(tmp_path, "under.pb", profile(limit - 1))
    out = cli("top", "--max-size", "4M", str(under))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", under)


def test_small_caps_keep_a_floor_of_fields_and_numbers() -> None:
    assert _read.limits_for(1) == _read.limits_for(MiB) == _read.Limits(65536, 262144)
    assert _read.limits_for(DEFAULT) == _read.Limits(4 * MiB, 16 * MiB)
    assert _read.limits_for(None).fields > 1 << 40


# --- the flag ---------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False])
def test_max_size_is_the_decompressed_size_exactly(tmp_path: Path, gzipped: bool) -> None:
    """A real profile of N bytes: refused under --max-size N-1, read as Go reads it at N."""
    path = cpu_profile(tmp_path)
    raw = gzip.decompress(path.read_bytes())
    if not gzipped:
        path = write(tmp_path, "cpu.pb", raw)
    size = len(raw)
    what = "decompressing profile" if gzipped else "reading profile"
    assert_one_line_error(
        cli("top", "--max-size", str(size - 1), str(path)), path,
        f"{what}: larger than {size - 1} bytes (the --max-size limit; raise it to read)",
    )
    out = cli("top", "--max-size", str(size), str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", path)
    assert cli("top", str(path)).stdout == out.stdout  # the default cap is far above


def test_default_cap_is_documented() -> None:
    assert _read.DEFAULT_MAX_SIZE == DEFAULT
    out = cli("top", "--help")
    assert "--max-size SIZE" in out.stdout
    assert "64 MiB" in " ".join(out.stdout.split())


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", 1), ("1024", 1024), ("512K", 512 << 10), ("64M", DEFAULT), ("64m", DEFAULT),
     ("64MiB", DEFAULT), ("64MB", DEFAULT), ("2G", 2 << 30), (" 3 k ", 3 << 10)],
)
def test_sizes(text: str, size: int) -> None:
    assert _read.parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-1", "", "x", "1.5G", "12T", "M", "1 000"])
def test_bad_max_size_is_a_usage_error(tmp_path: Path, text: str) -> None:
    out = cli("top", "--max-size", text, str(tmp_path / "cpu.pb.gz"))
    assert out.returncode == 2
    assert "usage:" in out.stderr and "Traceback" not in out.stderr
    assert "argument --max-size:" in out.stderr.splitlines()[-1]


# --- gzip members ------------------------------------------------------------------


def test_gzip_members_are_read_as_go_reads_them(tmp_path: Path) -> None:
    raw = gzip.decompress(cpu_profile(tmp_path).read_bytes())
    two = write(tmp_path, "two.pb.gz", gzip.compress(raw[:100]) + gzip.compress(raw[100:]))
    out = cli("top", str(two))
    assert out.returncode == 0, out.stderr
    assert out.stdout == pprof("-top", two)
    padded = write(tmp_path, "padded.pb.gz", gzip.compress(raw) + b"\0" * 8)
    assert_one_line_error(
        cli("top", str(padded)), padded, "decompressing profile: gzip: invalid header"
    )
    assert "flat%" not in pprof("-top", padded, check=False)  # Go: "gzip: invalid header"
