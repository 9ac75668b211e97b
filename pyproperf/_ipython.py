"""``%load_ext pyproperf``: the ``%%pprof`` cell magic and the ``%pprof`` line magic.

``%%pprof [-o FILE] [--clock cpu|wall] [--hz N] [--heap]`` runs the cell
profiled, writes the profile (``cpu.pb.gz``, ``wall.pb.gz`` or
``heap.pb.gz`` in the working directory unless ``-o`` says), and prints
one line about it and a short ``go tool pprof -top`` table (``_top``).
In Jupyter (a kernel, not a terminal) it also shows the HTML report of
``pyproperf view`` in an iframe.  ``%pprof [options] statement`` does the same for one
statement.

The code runs as IPython's ``%%time`` runs it: transformed and compiled by
the shell (so magics and ``!commands`` inside work), in the user's
namespace, a last expression's value returned to be shown as the cell's
``Out``, and an exception raised on after the profile is written (so
"run all" stops there).  ``--heap`` profiles memory instead of CPU: the
``allocs`` profile of what the code allocated (tracemalloc), as
``run --heap`` writes it; tracemalloc's cost would distort a CPU profile
taken at the same time, so one run gives one kind.

Imported by ``pyproperf.load_ipython_extension`` only: ``import pyproperf``
never imports IPython.
"""

from __future__ import annotations

import ast
import html
import re
import shlex
import sys
from collections.abc import Callable
from types import CodeType
from typing import Any, NamedTuple, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, needs_local_scope

from pyproperf import _builder, _heap, _io, _own, _top
from pyproperf._sampler import CLOCKS, MAX_HZ, Collector, engine

_F = TypeVar("_F", bound=Callable[..., Any])


def _typed(decorator: Any) -> Callable[[_F], _F]:
    """An IPython method decorator, typed: IPython 8 (the last for Python 3.10) has no hints."""
    return cast(Callable[[_F], _F], decorator)

__all__ = ["PprofMagics", "load", "parse_options", "report_frame"]

USAGE = "%%pprof [-o FILE] [--clock cpu|wall] [--hz N] [--heap]"
TOP_ROWS = 10  # rows of the table printed under the cell

# One option at the start of the magic's line: -o FILE, --clock X, --hz N (also with "="),
# --heap, or "--" (the end of the options, for a statement starting with "-").
_OPTION = re.compile(
    r"""\s*(?:
        (?P<name>-o|--clock|--hz)(?:=|\s+|(?<=-o))(?P<value>"[^"]*"|'[^']*'|[^\s"']+)
      | (?P<flag>--heap|--)(?=\s|$)
    )""",
    re.VERBOSE,
)


class Options(NamedTuple):
    """What the magic's line asks for."""

    path: str  # where the profile goes (absolute, checked)
    shown: str  # the path as given, for messages
    clock: str  # "cpu" or "wall"
    hz: int
    heap: bool


def load(ip: Any) -> None:
    """Register the magics with the IPython shell ``ip`` (``%load_ext pyproperf``)."""
    ip.register_magics(PprofMagics)


def parse_options(line: str) -> tuple[Options, str]:
    """The options at the start of ``line`` and the rest of it (the statement); UsageError if bad.

    The statement is kept as typed: options are read only up to the first
    word that is not one.
    """
    values: dict[str, str] = {}
    heap = False
    pos = 0
    while True:
        m = _OPTION.match(line, pos)
        if m is None:
            break
        pos = m.end()
        if m.group("flag") == "--":
            break
        if m.group("flag") == "--heap":
            heap = True
            continue
        raw = m.group("value")
        values[m.group("name")] = shlex.split(raw)[0] if raw[0] in "\"'" else raw
    rest = line[pos:].strip()
    if re.match(r"-(-|[A-Za-z])", rest) and not line[:pos].rstrip().endswith("--"):
        word = rest.split(None, 1)[0]
        raise UsageError(f"%pprof: unknown option {word!r}; usage: {USAGE}")
    clock = values.get("--clock", "cpu")
    if clock not in CLOCKS:
        raise UsageError(f"%pprof: --clock must be cpu or wall, not {clock!r}")
    hz_text = values.get("--hz", "100")
    try:
        hz = int(hz_text)
    except ValueError:
        raise UsageError(f"%pprof: --hz must be a whole number, not {hz_text!r}") from None
    if not 1 <= hz <= MAX_HZ:
        raise UsageError(f"%pprof: --hz must be between 1 and {MAX_HZ}, not {hz}")
    if heap and ("--clock" in values or "--hz" in values):
        raise UsageError("%pprof: --heap profiles memory, not CPU: it takes no --clock or --hz")
    shown = values.get("-o") or ("heap.pb.gz" if heap else f"{clock}.pb.gz")
    try:
        path = _io.check_path(shown, "-o")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"%pprof: cannot write {shown}: {reason}") from None
    return Options(path, shown, clock, hz, heap), rest


@magics_class
class PprofMagics(Magics):
    """The ``pprof`` magic (line and cell)."""

    @_typed(needs_local_scope)
    @_typed(line_cell_magic)
    @_own.calls_user_code
    def pprof(self, line: str = "", cell: str | None = None, local_ns: Any = None) -> Any:
        """Profile a cell (``%%pprof``) or a statement (``%pprof``) with pyproperf.

        Usage: ``%%pprof [-o FILE] [--clock cpu|wall] [--hz N] [--heap]``, or
        ``%pprof [options] statement``.  Writes a gzipped profile.proto
        (default ``cpu.pb.gz``; ``wall.pb.gz`` with ``--clock wall``;
        ``heap.pb.gz`` with ``--heap``, an allocs profile) and prints a short
        ``go tool pprof -top`` table.  Read the file with ``go tool pprof``
        or ``python -m pyproperf top``.
        """
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        options, statement = parse_options(line)
        if cell is not None and statement:
            raise UsageError(f"%%pprof takes no statement on its line; usage: {USAGE}")
        source = cell if cell is not None else statement
        if not source.strip():
            raise UsageError(f"%pprof needs a statement; usage: {USAGE}")
        run = self._compile(source, local_ns)
        if options.heap:
            return _profiled_heap(run, options)
        return _profiled_cpu(run, options)

    def _compile(self, source: str, local_ns: Any) -> Callable[[], Any]:
        """``source`` as the shell would run it, as a function returning its last expression."""
        shell: Any = self.shell  # IPython's shell is not fully typed
        code = shell.transform_cell(source)
        tree = shell.transform_ast(shell.compile.ast_parse(code))
        last: ast.Expression | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        filename = shell.compile.cache(code, shell.execution_count, raw_code=source)
        body = shell.compile(tree, filename, "exec")
        tail = shell.compile(last, filename, "eval") if last is not None else None
        namespace = shell.user_ns

        @_own.calls_user_code
        def run() -> Any:
            __tracebackhide__ = True
            exec(body, namespace, local_ns)
            return eval(tail, namespace, local_ns) if tail is not None else None

        return run


@_own.calls_user_code
def _profiled_cpu(run: Callable[[], Any], options: Options) -> Any:
    __tracebackhide__ = True
    collector = Collector(options.hz, options.clock)
    engine.add(collector)
    try:
        return run()
    finally:
        engine.remove(collector)
        built = collector.build_counted(_from_the_code(collector.agg, run.__code__))
        seconds = built.duration_ns / 1e9
        summary = (
            f"{seconds:.2f} s, {built.samples} sample{'' if built.samples == 1 else 's'}, "
            f"{built.nanos / 1e9:.2f} s {options.clock}"
        )
        _report(options, built.data, summary)


@_own.calls_user_code
def _profiled_heap(run: Callable[[], Any], options: Options) -> Any:
    __tracebackhide__ = True
    _heap.start_heap_profile()
    try:
        return run()
    finally:
        written = _heap.render_and_stop()
        in_use = _top.scaled_label(written.inuse_bytes, "bytes")
        _report(options, written.data, f"allocs, {written.stacks} stacks, {in_use} in use")


def _from_the_code(agg: dict[Any, list[int]], runner: CodeType) -> dict[Any, list[int]]:
    """The samples with the frames of IPython and of the magic cut off the stacks.

    Stack keys are ``(code, offset, ...)``, leaf first: the frames leafward
    of ``runner`` (the function that executes the cell) are the cell's.
    Stacks without it (threads the cell started) stay whole.
    """
    out: dict[Any, list[int]] = {}
    for (key, labels, thread), values in agg.items():
        try:
            cut = key.index(runner)
        except ValueError:
            cut = len(key)
        k = (key[:cut] if cut else key, labels, thread)
        old = out.get(k)
        out[k] = values if old is None else [a + b for a, b in zip(old, values, strict=True)]
    return out


def _report(options: Options, data: bytes, summary: str) -> None:
    """Write the profile, then show what it holds under the cell."""
    try:
        _io.write_file(options.path, data)
    except OSError as exc:
        print(f"pyproperf: could not write {options.shown}: {exc}", file=sys.stderr)
        return
    print(f"pyproperf: wrote {options.shown} ({summary})")
    print(_top.render(_builder.decode(data), nodecount=TOP_ROWS), end="")
    _show_report(data, options.shown)


def _show_report(data: bytes, title: str) -> None:
    """In Jupyter, the HTML report of the profile under the cell; in a terminal, nothing."""
    shell = _shell()
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    import IPython.display

    ipd: Any = IPython.display  # not fully typed
    ipd.display(ipd.HTML(report_frame(data, title)))


def report_frame(data: bytes, title: str) -> str:
    """An ``<iframe>`` (in a ``<div>``) holding the ``pyproperf view`` report of ``data``.

    The one call of the view report (``pyproperf._view``).  The page is a
    whole document with its own Content-Security-Policy: in ``srcdoc`` it
    keeps it, and its script and style stay out of the notebook's page.
    """
    from pyproperf._view import render

    page = render(_builder.decode(data), title=title).decode("utf-8")
    # In a <div>: IPython warns about HTML that is a bare <iframe> (it suggests IFrame,
    # which loads a URL; this page exists nowhere but here).
    return (
        f'<div><iframe srcdoc="{html.escape(page, quote=True)}" title="{html.escape(title)}" '
        'style="width: 100%; height: 620px; border: 1px solid #ddd"></iframe></div>'
    )


def _shell() -> Any:
    from IPython.core import getipython

    get_ipython: Any = getipython.get_ipython  # untyped in IPython 8
    return get_ipython()
