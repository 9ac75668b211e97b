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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyproperf._filter import SampleFilter

__all__ = ["main"]

_RUN_USAGE = (
    "%(prog)s [-o FILE] [--hz N] [--clock {cpu,wall}] [--heap FILE] [--http ADDR]\n"
    "       [--subprocesses] [--html] (script.py | -m module | -- COMMAND) [args ...]"
)
_RUN_EPILOG = """\
Everything after the script (or -m module) goes to the program as its
sys.argv[1:].  The program runs as __main__, as with "python script.py";
its exit status is kept, and the profile is written also when it raises
or is stopped with Ctrl-C.  View the result with
"python -m pyproperf view FILE" (an HTML report; --html writes it at the
end), "python -m pyproperf top FILE" or "go tool pprof -http=: FILE".

"-- COMMAND" runs a console script of this Python found on PATH
(gunicorn, uvicorn, celery, pytest) as the program.  --subprocesses
also profiles the Python processes it starts (fork, multiprocessing,
subprocess): each writes FILE's name with its pid (cpu.<pid>.pb.gz),
and FILE gets them merged, every sample labelled pid=... process=....
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
    run.add_argument("--subprocesses", action="store_true",
                     help="also profile the Python processes the program starts (os.fork, "
                          "multiprocessing, subprocess) and merge them into FILE, labelled "
                          "by pid")
    run.add_argument("--html", action="store_true",
                     help="also write the HTML report of the profile next to it (cpu.pb.gz -> "
                          "cpu.html; see the view command)")
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
    _add_filter_options(top)
    report = top.add_mutually_exclusive_group()
    report.add_argument("--tags", action="store_true",
                        help="print the labels' values and their totals instead (pprof's -tags)")
    report.add_argument("--traces", action="store_true",
                        help="print every sample's stack and labels instead (pprof's -traces)")

    convert = sub.add_parser(
        "convert",
        help="write a pprof file as folded stacks (flamegraph.pl, inferno) or speedscope JSON",
        description="Convert a pprof file to Brendan Gregg's folded stacks or to speedscope's "
                    "JSON format (one profile per thread).",
        allow_abbrev=False,
    )
    convert.add_argument("file", metavar="FILE",
                         help="profile file (profile.proto, gzipped or not)")
    convert.add_argument("--format", required=True, choices=("collapsed", "speedscope"),
                         help="collapsed: 'root;...;leaf VALUE' lines; speedscope: JSON for "
                              "speedscope.app, one profile per thread")
    convert.add_argument("-o", "--output", metavar="OUT",
                         help="where to write (default: standard output)")
    convert.add_argument("--sample-index", default="", metavar="NAME",
                         help="sample type to write, as for top")
    convert.add_argument("--tagroot", default="", metavar="KEY[,KEY]",
                         help="collapsed only: put these labels' values (e.g. thread) as root "
                              "frames, as pprof's -tagroot")
    convert.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                         help=f"as for top (default: {format_size(DEFAULT_MAX_SIZE)})")
    _add_filter_options(convert)

    merge = sub.add_parser(
        "merge",
        help="merge pprof files of the same sample types into one, as Go's profile.Merge",
        description="Merge profiles of the same sample types into one (google/pprof's "
                    "profile.Merge): matching samples add up, comments are kept, "
                    "durations are summed.",
        allow_abbrev=False,
    )
    merge.add_argument("files", nargs="+", metavar="FILE", help="profile files to merge")
    merge.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="where to write the merged profile (gzipped)")
    merge.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                       help="per input file, as for top (default: "
                            f"{format_size(DEFAULT_MAX_SIZE)})")
    _add_view_parser(sub)
    return parser, run


def _add_view_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``view FILE [-o OUT.html] [--open]``: the HTML report (``_view``)."""
    from pyproperf._read import DEFAULT_MAX_SIZE, format_size

    view = sub.add_parser(
        "view",
        help="write a self-contained HTML report of a pprof file: flame graph, top table, "
             "label filters, threads, source",
        description="Write one HTML file (no network needed to open it) with an interactive "
                    "flame graph, a top table, label filters, a split by thread (or any label) "
                    "and the source lines of the sampled functions.",
        allow_abbrev=False,
    )
    view.add_argument("file", metavar="FILE", help="profile file (profile.proto, gzipped or not)")
    view.add_argument("-o", "--output", metavar="OUT.html",
                      help="where to write the report (default: FILE's name with .html, "
                           "e.g. cpu.pb.gz -> cpu.html, in the current directory)")
    view.add_argument("--open", action="store_true",
                      help="open the report in the web browser (Python's webbrowser module)")
    view.add_argument("--no-source", action="store_true",
                      help="do not embed source lines (by default the lines of the sampled "
                           "functions are read from the files the profile names)")
    view.add_argument("--max-nodes", type=_count, default=None, metavar="N",
                      help="call-tree nodes kept in the report; smaller ones are merged into "
                           "'(cut)' boxes, and the page says so (default: 500000, ~5 MB; "
                           "0: keep all)")
    view.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, metavar="SIZE",
                      help=f"as for top (default: {format_size(DEFAULT_MAX_SIZE)})")


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    """pprof's sample filters, for ``top`` and ``convert`` (``_filter``)."""
    p.add_argument("--focus", default="", metavar="REGEX",
                   help="only samples with a function (name or file) matching REGEX")
    p.add_argument("--ignore", default="", metavar="REGEX",
                   help="drop samples with a function (name or file) matching REGEX")
    p.add_argument("--tagfocus", default="", metavar="KEY=VALUE",
                   help="only samples whose label KEY matches VALUE: regexps, comma-separated, "
                        "or a numeric range such as 4kb:64kb (e.g. thread=MainThread)")
    p.add_argument("--tagignore", default="", metavar="KEY=VALUE",
                   help="drop samples whose label KEY matches VALUE, as --tagfocus")


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
        # ``run [options] -- COMMAND``: the word after our options was ``--``.
        command = words[1 + len(own) : 2 + len(own)] == ["--"] and ns.module is None
        return _run(run_parser, ns, program, command=command)
    ns = parser.parse_args(words)
    if ns.command == "top":
        return _top(ns)
    if ns.command == "convert":
        return _convert(ns)
    if ns.command == "merge":
        return _merge(ns)
    if ns.command == "view":
        return _view(ns)
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse stops earlier
    return 2  # pragma: no cover


def _run(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, program: list[str],
    *, command: bool = False,
) -> int:
    from pyproperf import _cli_run

    target, program_args = _program_target(parser, ns, program, command=command)
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
    if ns.html:
        from pyproperf._view import html_path_for

        problem = _cli_run.check_output_path(html_path_for(output))
        if problem:
            parser.error(f"argument --html: {html_path_for(output)}: {problem}")
    options = _cli_run.Options(
        output=output, hz=ns.hz, clock=ns.clock, heap=ns.heap, http=ns.http,
        subprocesses=ns.subprocesses, html=ns.html,
    )
    try:
        return _cli_run.run(options, target, program_args, module=ns.module is not None)
    except _cli_run.UsageError as exc:
        parser.error(str(exc))
        return 2  # pragma: no cover - parser.error exits


def _program_target(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, program: list[str],
    *, command: bool,
) -> tuple[str, list[str]]:
    """The script (or module) to run and its arguments; usage errors exit 2."""
    if ns.module is not None:
        return ns.module, program
    if not program:
        parser.error("the program to run is missing: give script.py or -m module")
    if program[0] == "-":
        parser.error("reading the program from stdin is not supported; give script.py")
    target = _resolve_command(program[0]) if command else program[0]
    return target, program[1:]


def _resolve_command(word: str) -> str:
    """``run -- COMMAND``: the script to run; exits 2 with one line if there is none."""
    from pyproperf import _command

    try:
        return _command.resolve(word)
    except ValueError as exc:
        print(f"pyproperf run: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _merge(ns: argparse.Namespace) -> int:
    from pyproperf import _io, _merge

    try:
        _io.check_path(ns.output, "-o/--output")
        data = _merge.merge_files(ns.files, ns.max_size)
        _io.write_file(ns.output, data)
    except (ValueError, TypeError) as exc:
        print(f"pyproperf merge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pyproperf merge: {ns.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _sample_filter(ns: argparse.Namespace, profile: Any) -> tuple[SampleFilter | None, list[str]]:
    """The SampleFilter of ``ns``'s filter options (None without any), and pprof's legend."""
    from pyproperf import _filter

    filters = _filter.Filters(ns.focus, ns.ignore, ns.tagfocus, ns.tagignore)
    if filters == _filter.Filters():
        return None, []
    return _filter.SampleFilter(profile, filters), filters.active()


def _top(ns: argparse.Namespace) -> int:
    from pyproperf import _reports, _top

    try:
        profile = _top.load(ns.file, ns.max_size)
        sample_filter, active = _sample_filter(ns, profile)
        keep = sample_filter.keeps if sample_filter is not None else None
        if ns.tags:
            text = _reports.render_tags(profile, sample_index=ns.sample_index, keep=keep)
        elif ns.traces:
            text = _reports.render_traces(profile, sample_index=ns.sample_index, keep=keep)
        else:
            text = _top.render(
                profile, nodecount=ns.nodecount, cum=ns.cum, sample_index=ns.sample_index,
                keep=keep, active_filters=active,
            )
    except ValueError as exc:
        print(f"pyproperf top: {ns.file}: {exc}", file=sys.stderr)
        return 2
    _filter_notes(sample_filter)
    _write_stdout(text)
    return 0


def _filter_notes(sample_filter: SampleFilter | None) -> None:
    """pprof's notes on stderr: a range read as such, a filter that matched nothing."""
    if sample_filter is not None:
        for note in [*sample_filter.notes, *sample_filter.warnings()]:
            print(note, file=sys.stderr)


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... top FILE | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _convert(ns: argparse.Namespace) -> int:
    from pyproperf import __version__, _convert, _io, _top

    tagroot = [k for k in ns.tagroot.split(",") if k]
    try:
        if ns.output is not None:
            _io.check_path(ns.output, "-o/--output")
        profile = _top.load(ns.file, ns.max_size)
        sample_filter, _active = _sample_filter(ns, profile)
        text = _convert.convert(
            profile, ns.format, sample_index=ns.sample_index,
            keep=sample_filter.keeps if sample_filter is not None else None,
            tagroot=tagroot, source=ns.file,
            exporter=f"pyproperf {__version__}",
        )
    except (ValueError, TypeError) as exc:
        print(f"pyproperf convert: {ns.file}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # -o: a directory that does not exist, a file we may not write
        print(f"pyproperf convert: {exc.strerror or exc}", file=sys.stderr)
        return 2
    _filter_notes(sample_filter)
    if ns.output is None:
        _write_stdout(text)
        return 0
    try:
        _io.write_file(ns.output, text.encode())
    except OSError as exc:
        print(f"pyproperf convert: {ns.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _view(ns: argparse.Namespace) -> int:
    """``view``: read FILE, write the report whole, say where; open it if asked."""
    from pyproperf import _io, _view

    output = ns.output
    if output is None:
        output = os.path.basename(_view.html_path_for(ns.file))
    try:
        output = _io.check_path(output, "-o/--output")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"pyproperf view: {ns.output or output}: {reason}", file=sys.stderr)
        return 2
    if os.path.realpath(ns.file) == os.path.realpath(output):
        print(f"pyproperf view: {ns.file}: the report would replace the profile; give -o",
              file=sys.stderr)
        return 2
    try:
        max_nodes = _view.DEFAULT_MAX_NODES if ns.max_nodes is None else ns.max_nodes
        size = _view.write_report(
            ns.file, output, max_size=ns.max_size, source=not ns.no_source,
            max_nodes=max_nodes or sys.maxsize,
        )
    except ValueError as exc:
        print(f"pyproperf view: {ns.file}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pyproperf view: {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({_view.size_text(size)})", file=sys.stderr)
    if ns.open:
        import pathlib
        import webbrowser

        if not webbrowser.open(pathlib.Path(output).as_uri()):
            print("pyproperf view: no web browser found; open the file yourself",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
