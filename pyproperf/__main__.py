"""Command line: ``python -m pyproperf run …`` and ``python -m pyproperf top …``.

``run`` profiles a Python program the way ``python -m cProfile`` runs one
(its own ``sys.argv``, ``__main__`` and exit status) and writes a gzipped
profile.proto; ``top`` prints the table of ``go tool pprof -top`` for any
pprof file, for people without Go.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

_RUN_USAGE = (
    "%(prog)s [-o FILE] [--hz N] [--clock {cpu,wall}] [--heap FILE] [--http ADDR]\n"
    "       (script.py | -m module) [args ...]"
)
_RUN_EPILOG = """\
Everything after the script (or -m module) goes to the program as its
sys.argv[1:].  The program runs as __main__, as with "python script.py";
its exit status is kept, and the profile is written also when it raises
or is stopped with Ctrl-C.  View the result with
"python -m pyproperf top FILE" or "go tool pprof -http=: FILE".
"""
# Options of `run` that take a value: the program starts at the first other word.
_RUN_VALUE_OPTIONS = frozenset({"-o", "--output", "--hz", "--clock", "--heap", "--http"})


def _positive_hz(text: str) -> int:
    from pyproperf._sampler import MAX_HZ

    try:
        hz = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= hz <= MAX_HZ:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_HZ}, not {hz}")
    return hz


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more, not {n}")
    return n


def _size(text: str) -> int:
    from pyproperf._read import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="python -m pyproperf",
        description="Profile Python programs into pprof files, and read pprof files.",
    )
    from pyproperf import __version__

    parser.add_argument("--version", action="version", version=f"pyproperf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        usage=_RUN_USAGE,
        help="run a Python program under the CPU (or wall-clock) profiler",
        description="Run a Python program under the profiler and write a pprof file.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    run.add_argument(
        "-o", "--output", metavar="FILE",
        help="where to write the profile (default: cpu.pb.gz, or wall.pb.gz with --clock wall)",
    )
    run.add_argument("--hz", type=_positive_hz, default=100, metavar="N",
                     help="samples per second (default: 100, as Go)")
    run.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                     help="cpu: where CPU time goes (default); wall: where threads spend "
                          "time, waiting included")
    run.add_argument("--heap", metavar="FILE",
                     help="also trace allocations (tracemalloc) and write an allocs profile "
                     "to FILE at the end: alloc_space first, inuse_* too, as go test "
                     "-memprofile writes")
    run.add_argument("--http", metavar="ADDR",
                     help="serve /debug/pprof/ on ADDR (e.g. localhost:6060) while the "
                          "program runs")
    run.add_argument("-m", dest="module", metavar="module", help="run a module, as python -m")

    top = sub.add_parser(
        "top",
        help="print the top functions of a pprof file, as go tool pprof -top",
        description="Print the table of 'go tool pprof -top' for a pprof file "
                    "(gzipped or not; any profile.proto, not only pyproperf's).",
        allow_abbrev=False,
    )
    top.add_argument("file", metavar="FILE", help="profile file (profile.proto, gzipped or not)")
    top.add_argument("-n", "--nodecount", type=_count, default=0, metavar="N",
                     help="show at most N functions (default: all above 0.5%% of the total)")
    top.add_argument("--cum", action="store_true",
                     help="sort by cumulative value (default: flat)")
    top.add_argument("--sample-index", default="", metavar="NAME",
                     help="sample type to show, by name or index (default: the profile's "
                          "default, else its last type), e.g. alloc_space")
    from pyproperf._read import DEFAULT_MAX_SIZE, format_size

    top.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                     help="read at most SIZE bytes after decompression, SIZE/16 protobuf "
                          "fields and SIZE/4 numbers; bytes, or with K, M or G, e.g. 512M "
                          f"(default: {format_size(DEFAULT_MAX_SIZE)})")
    return parser, run


def _split_run(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``run``'s words into its own options and the program (with its arguments).

    The program starts at the first word that is not one of our options (the
    script), at ``-m``'s value, or after ``--``; everything from there is the
    program's, so ``run app.py -o x`` passes ``-o x`` to app.py.
    """
    own: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return own, list(args[i + 1 :])
        if word == "-m" or (word.startswith("-m") and not word.startswith("--")):
            own.append(word)
            if word == "-m" and i + 1 < len(args):
                own.append(args[i + 1])
                i += 1
            return own, list(args[i + 1 :])
        if word in _RUN_VALUE_OPTIONS:
            own.extend(args[i : i + 2])
            i += 2
            continue
        if word.startswith("-") and word != "-":
            own.append(word)  # --opt=value, -oFILE, -h, or unknown: argparse judges
            i += 1
            continue
        return own, list(args[i:])
    return own, []


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pyproperf`` and the ``pyproperf`` script: returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser, run_parser = _parser()
    if words[:1] == ["run"]:
        own, program = _split_run(words[1:])
        ns = parser.parse_args(["run", *own])
        return _run(run_parser, ns, program)
    ns = parser.parse_args(words)
    if ns.command == "top":
        return _top(ns)
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse stops earlier
    return 2  # pragma: no cover


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace, program: list[str]) -> int:
    from pyproperf import _cli_run

    if ns.module is None:
        if not program:
            parser.error("the program to run is missing: give script.py or -m module")
        if program[0] == "-":
            parser.error("reading the program from stdin is not supported; give script.py")
        target, program_args = program[0], program[1:]
    else:
        target, program_args = ns.module, program
    if ns.output is not None:
        output = ns.output
    else:
        output = "wall.pb.gz" if ns.clock == "wall" else "cpu.pb.gz"
    for option, path in (("-o/--output", output), ("--heap", ns.heap)):
        if path is not None:
            problem = _cli_run.check_output_path(path)
            if problem:
                parser.error(f"argument {option}: {problem}")
    if ns.heap is not None and os.path.abspath(ns.heap) == os.path.abspath(output):
        parser.error("argument --heap: must differ from the CPU profile's file")
    options = _cli_run.Options(
        output=output, hz=ns.hz, clock=ns.clock, heap=ns.heap, http=ns.http
    )
    try:
        return _cli_run.run(options, target, program_args, module=ns.module is not None)
    except _cli_run.UsageError as exc:
        parser.error(str(exc))
        return 2  # pragma: no cover - parser.error exits


def _top(ns: argparse.Namespace) -> int:
    from pyproperf import _top

    try:
        profile = _top.load(ns.file, ns.max_size)
        text = _top.render(
            profile, nodecount=ns.nodecount, cum=ns.cum, sample_index=ns.sample_index
        )
    except ValueError as exc:
        print(f"pyproperf top: {ns.file}: {exc}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... top FILE | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
