"""Back up files with worker threads: a threaded example to profile.

    python -m pyproperf run -o cpu.pb.gz tests/examples/threads.py
    python -m pyproperf top cpu.pb.gz

The main thread only starts the workers and joins them, so a profiler that
samples just the main thread (or counts its own signal handler runs) sees
nothing.  Two workers ``compress`` blocks with zlib, which runs in C with
the GIL released; one worker computes a pure-Python ``checksum`` of each
block, holding the GIL.  Each worker's CPU time is printed at the end, so
the profile can be checked against it.  About two seconds.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import zlib


def make_blocks(n: int, size: int, seed: int = 7) -> list[bytes]:
    """Compressible data: text-like blocks from a small vocabulary."""
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    words = [bytes(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(500)]
    blocks = []
    for _ in range(n):
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        blocks.append(bytes(out[:size]))
    return blocks


def compress(blocks: list[bytes], rounds: int) -> int:
    """Compress every block ``rounds`` times at level 9 (C code, GIL released)."""
    total = 0
    for _ in range(rounds):
        for block in blocks:
            total += len(zlib.compress(block, 9))
    return total


def checksum(blocks: list[bytes], rounds: int) -> int:
    """A Fletcher-style checksum in pure Python (holds the GIL)."""
    a = b = 0
    for _ in range(rounds):
        for block in blocks:
            for byte in block[::8]:
                a = (a + byte) % 65521
                b = (b + a) % 65521
    return (b << 16) | a


class Worker(threading.Thread):
    def __init__(self, name: str, job: object, *args: object) -> None:
        super().__init__(name=name)
        self.job, self.args = job, args
        self.cpu = 0.0
        self.result: object = None

    def run(self) -> None:
        start = time.thread_time()
        self.result = self.job(*self.args)  # type: ignore[operator]
        self.cpu = time.thread_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="passes over the data (default 30)")
    args = parser.parse_args(argv)
    blocks = make_blocks(64, 64 * 1024)
    workers = [
        Worker("compress-1", compress, blocks[:32], args.rounds),
        Worker("compress-2", compress, blocks[32:], args.rounds),
        Worker("checksum", checksum, blocks, args.rounds),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for w in workers:
        print(f"{w.name:<12} cpu {w.cpu:6.2f} s  result {w.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
