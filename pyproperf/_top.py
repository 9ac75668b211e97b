"""``python -m pyproperf top``: the table of ``go tool pprof -top``, without Go.

A port of what google/pprof (as vendored in Go 1.27.3) does between reading
a profile.proto and printing ``-top``: choose the sample type
(``-sample_index``), tidy function names as its default symbolization pass
does, prune ``drop_frames``, build the per-function graph (flat = value of
samples whose leaf is the function, cum = value of samples with the function
anywhere on the stack, counted once per sample), drop nodes below 0.5 % of
the total (``-nodefraction``), keep the top N (``-nodecount``), and print
with pprof's unit scaling and header lines.  Tests compare the output with
the real ``go tool pprof -top`` on the same files.

Not ported: mangled C++/Rust names (``_Z…``, ``_R…``) are shown as stored,
legacy text profile formats are not read, and symbolization against local
binaries never happens (profiles from Go programs are already symbolized).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from pyproperf import _read
from pyproperf._builder import decode_uncompressed

__all__ = ["load", "render", "scaled_label", "select_sample_index"]

NODE_FRACTION = 0.005  # pprof's -nodefraction default
EDGE_FRACTION = 0.001  # pprof's -edgefraction default

# A graph node, as pprof's NodeInfo at function granularity:
# (function name, start line, object file).  The start line and object file
# are only set for functions without a name, as pprof does.
NodeKey = tuple[str, int, str]


def load(path: str, max_size: int = _read.DEFAULT_MAX_SIZE) -> Any:
    """Read and decode a profile file; ValueError with a one-line message if unusable.

    At most ``max_size`` bytes after decompression, and the work bounded by
    it (``_read``): the file may come from anywhere.
    """
    return decode_uncompressed(_read.read_profile(path, max_size), max_size)


# --- measurement: pprof's unit scaling ----------------------------------------

# (canonical name, aliases, factor to the base unit), per unit type, with the
# default unit of the type: internal/measurement.UnitTypes.
_UnitType = tuple[list[tuple[str, tuple[str, ...], float]], tuple[str, float]]
_UNIT_TYPES: list[_UnitType] = [
    (
        [
            ("B", ("b", "byte"), 1.0),
            ("kB", ("kb", "kbyte", "kilobyte"), float(1 << 10)),
            ("MB", ("mb", "mbyte", "megabyte"), float(1 << 20)),
            ("GB", ("gb", "gbyte", "gigabyte"), float(1 << 30)),
            ("TB", ("tb", "tbyte", "terabyte"), float(1 << 40)),
            ("PB", ("pb", "pbyte", "petabyte"), float(1 << 50)),
        ],
        ("B", 1.0),
    ),
    (
        [
            ("ns", ("ns", "nanosecond"), 1.0),
            ("us", ("μs", "us", "microsecond"), 1e3),
            ("ms", ("ms", "millisecond"), 1e6),
            ("s", ("s", "sec", "second"), 1e9),
            ("hrs", ("hour", "hr"), 3600e9),
        ],
        ("s", 1e9),
    ),
    (
        [
            ("n*GCU", ("nanogcu",), 1e-9),
            ("u*GCU", ("microgcu",), 1e-6),
            ("m*GCU", ("milligcu",), 1e-3),
            ("GCU", ("gcu",), 1.0),
            ("k*GCU", ("kilogcu",), 1e3),
            ("M*GCU", ("megagcu",), 1e6),
            ("G*GCU", ("gigagcu",), 1e9),
            ("T*GCU", ("teragcu",), 1e12),
            ("P*GCU", ("petagcu",), 1e15),
        ],
        ("GCU", 1.0),
    ),
]


def _sniff(ut: _UnitType, unit: str) -> tuple[str, float] | None:
    unit = unit.lower()
    if len(unit.encode()) > 2:  # Go's len() counts bytes
        unit = unit.removesuffix("s")
    for name, aliases, factor in ut[0]:
        if unit in aliases:
            return name, factor
    return None


def _convert(ut: _UnitType, value: int, from_unit: str, to_unit: str) -> tuple[float, str] | None:
    src = _sniff(ut, from_unit)
    if src is None:
        return None
    v = float(value) * src[1]
    default_name, default_factor = ut[1]
    if to_unit in ("minimum", "auto"):
        best, best_name = 0.0, ""
        for name, _aliases, factor in ut[0]:
            if factor >= best and v / factor >= 1.0:
                best, best_name = factor, name
        if best:
            return v / best, best_name
        return v / default_factor, default_name
    dst = _sniff(ut, to_unit)
    if dst is None:
        return v / default_factor, default_name
    return v / dst[1], dst[0]


def scale(value: int, from_unit: str, to_unit: str) -> tuple[float, str]:
    """measurement.Scale: ``value`` in ``from_unit`` expressed in ``to_unit`` (or "auto")."""
    if value < 0 and -value < 1 << 63:
        v, u = scale(-value, from_unit, to_unit)
        return -v, u
    for ut in _UNIT_TYPES:
        converted = _convert(ut, value, from_unit, to_unit)
        if converted is not None:
            return converted
    if to_unit in ("count", "sample", "unit", "minimum", "auto"):
        return float(value), ""
    return float(value), to_unit


def scaled_label(value: int, from_unit: str, to_unit: str = "auto") -> str:
    """measurement.ScaledLabel: ``1.20s``, ``512kB``, ``12``."""
    v, u = scale(value, from_unit, to_unit)
    text = f"{v:.2f}".removesuffix(".00")
    if text in ("0", "-0"):
        return "0"
    return text + u


def percentage(value: int, total: int) -> str:
    """measurement.Percentage: at least two digits, five columns wide."""
    ratio = abs(value / total) * 100 if total else 0.0
    if 99.95 <= ratio <= 100.05:
        return "  100%"
    if ratio >= 1.0:
        return f"{ratio:5.2f}%"
    return f"{ratio:5.2g}%"


# --- names: what pprof's default symbolization pass does to them -------------


def _looks_like_demangled_cpp(name: str) -> bool:
    if ".<" in name or "])." in name:  # Java "Class.<init>", Go "pkg.(*T[...]).M"
        return False
    return any(c in name for c in "<>[]") or "::" in name


def _remove_matching(name: str, start: str, end: str) -> str:
    nesting = first = current = 0
    while True:
        found = [i for i in (name.find(start, current), name.find(end, current)) if i >= 0]
        if not found:
            return name
        current = min(found)
        if name[current] == start:
            nesting += 1
            if nesting == 1:
                first = current
        else:
            nesting -= 1
            if nesting < 0:
                return name
            if nesting == 0:
                name = name[:first] + name[current + 1 :]
                current = first - 1
        current += 1


def shown_name(name: str, system_name: str) -> str:
    """The name pprof shows: symbolizer.Demangle's heuristics for already-demangled names.

    A name equal to its system name (or empty) that looks like C++ — it has
    ``<``, ``>``, ``[``, ``]`` or ``::`` but no ``.<`` — loses its ``(…)``
    and ``<…>`` groups; so a bare ``<module>`` shows as empty (pprof-reference §7).
    """
    if name and system_name != name:
        return name
    name = system_name
    if _looks_like_demangled_cpp(name):
        name = _remove_matching(_remove_matching(name, "(", ")"), "<", ">")
    return name


_BRACKET = re.compile(r"\(anonymous namespace\)|operator\(\)|\(")


def _simplify_func(name: str) -> str:
    """profile.simplifyFunc: drop a leading '.' and an argument list."""
    name = name.removeprefix(".")
    for m in _BRACKET.finditer(name):
        if m.group() not in ("(anonymous namespace)", "operator()"):
            return name[: m.start()]
    return name


def _go_base(path: str) -> str:
    """filepath.Base."""
    path = path.rstrip("/")
    if not path:
        return "/"
    return path.rsplit("/", 1)[-1]


def printable_name(key: NodeKey) -> str:
    """NodeInfo.PrintableName at function granularity."""
    name, _start, objfile = key
    if name:
        return name
    if objfile:
        return f"[{_go_base(objfile)}]"
    return "<unknown>"


# --- the report ---------------------------------------------------------------


def select_sample_index(profile: Any, sample_index: str) -> int:
    """profile.SampleIndexByName: "" = default type, else an index or a type name."""
    st = profile.string_table
    types = [st[t.type] for t in profile.sample_type]
    if not types:
        raise ValueError("profile has no sample types")
    if not sample_index:
        default = st[profile.default_sample_type]
        if default and default in types:
            return types.index(default)
        return len(types) - 1
    if re.fullmatch(r"[+-]?\d+", sample_index):
        i = int(sample_index)
        if not 0 <= i < len(types):
            raise ValueError(
                f"sample_index {sample_index} is outside the range [0..{len(types) - 1}]"
            )
        return i
    no_inuse = sample_index.removeprefix("inuse_")
    for i, t in enumerate(types):
        if t in (sample_index, no_inuse):
            return i
    quoted = '"' + sample_index.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"sample_index {quoted} must be one of: [{' '.join(types)}]")


class _Graph:
    """Flat and cum per node, and the edges between nodes (for the inline marks)."""

    def __init__(self) -> None:
        self.flat: dict[NodeKey, int] = {}
        self.cum: dict[NodeKey, int] = {}
        # (caller, callee) -> [weight, every occurrence inlined]
        self.edges: dict[tuple[NodeKey, NodeKey], list[Any]] = {}

    def nodes(self) -> list[NodeKey]:
        return [n for n, c in self.cum.items() if c or self.flat.get(n, 0)]


def _build(
    stacks: Iterable[tuple[tuple[int, ...], int]],
    location_nodes: dict[int, list[NodeKey]],
    kept: set[NodeKey] | None,
) -> _Graph:
    """graph.newGraph: one pass over the (deduplicated) stacks."""
    g = _Graph()
    if all(len(keys) == 1 for keys in location_nodes.values()):
        # No inlined frames (every Python profile): edges cannot carry an
        # inline mark, so only flat and cum are needed.
        single = {lid: keys[0] for lid, keys in location_nodes.items()}
        _add_flat_and_cum(g, stacks, single, kept)
    else:
        _add_with_edges(g, stacks, location_nodes, kept)
    return g


def _add_flat_and_cum(
    g: _Graph,
    stacks: Iterable[tuple[tuple[int, ...], int]],
    single: dict[int, NodeKey],
    kept: set[NodeKey] | None,
) -> None:
    """``_build`` for locations of one node each: flat and cum only, no edges."""
    flat, cum = g.flat, g.cum
    for locations, w in stacks:
        seq = [single[lid] for lid in locations]
        if not seq:
            continue
        leaf: NodeKey | None = seq[0]
        if kept is not None:
            seq = [n for n in seq if n in kept]
            if leaf not in kept:  # pprof's "residual": the flat value is lost
                leaf = None
        for n in set(seq):
            cum[n] = cum.get(n, 0) + w
        if leaf is not None:
            flat[leaf] = flat.get(leaf, 0) + w


def _add_with_edges(
    g: _Graph,
    stacks: Iterable[tuple[tuple[int, ...], int]],
    location_nodes: dict[int, list[NodeKey]],
    kept: set[NodeKey] | None,
) -> None:
    """``_build`` for locations with inlined frames: flat, cum and the edges' inline marks."""
    flat, cum, edges = g.flat, g.cum, g.edges
    for locations, w in stacks:
        seen_nodes: set[NodeKey] = set()
        seen_edges: set[tuple[NodeKey, NodeKey]] = set()
        parent: NodeKey | None = None
        residual = False
        for lid in reversed(locations):  # root first
            keys = location_nodes[lid]
            last = len(keys) - 1
            for ni in range(last, -1, -1):  # outermost inlined frame first
                n = keys[ni]
                if kept is not None and n not in kept:
                    residual = True
                    continue
                if n not in seen_nodes:
                    seen_nodes.add(n)
                    cum[n] = cum.get(n, 0) + w
                if parent is not None and n != parent and (parent, n) not in seen_edges:
                    seen_edges.add((parent, n))
                    edge = edges.get((parent, n))
                    if edge is None:
                        edges[(parent, n)] = [w, ni != last]
                    else:
                        edge[0] += w
                        edge[1] = edge[1] and ni != last
                parent = n
                residual = False
        if parent is not None and not residual:
            flat[parent] = flat.get(parent, 0) + w


def _sorted(g: _Graph, nodes: Sequence[NodeKey], by_cum: bool) -> list[NodeKey]:
    """FlatNameOrder / CumNameOrder (ties between equal names broken deterministically)."""

    def key(n: NodeKey) -> tuple[int, str, int, NodeKey]:
        flat, cum = abs(g.flat.get(n, 0)), abs(g.cum.get(n, 0))
        first, second = (cum, flat) if by_cum else (flat, cum)
        return -first, printable_name(n), -second, n

    return sorted(nodes, key=key)


def _prune(
    profile: Any, names: dict[int, str], location_lines: dict[int, list[int]]
) -> dict[int, bool]:
    """The location half of profile.Prune for ``drop_frames``/``keep_frames``.

    Trims ``location_lines`` in place and returns the locations holding a
    dropped frame: True when the whole location goes, False when its outer
    (caller) frames stay as the new leaf.
    """
    st = profile.string_table
    drop_text, keep_text = st[profile.drop_frames], st[profile.keep_frames]
    if not drop_text:
        return {}
    try:
        drop = re.compile(f"(?:{drop_text})\\Z")
        keep = re.compile(f"(?:{keep_text})\\Z") if keep_text else None
    except re.error:
        return {}  # pprof ignores a regexp it cannot compile
    cache: dict[str, bool] = {}

    def prune_from_here(name: str) -> bool:
        hit = cache.get(name)
        if hit is None:
            simple = _simplify_func(name)
            hit = cache[name] = bool(drop.match(simple)) and not (
                keep is not None and keep.match(simple)
            )
        return hit

    marks: dict[int, bool] = {}
    for lid, lines in location_lines.items():
        for i in range(len(lines) - 1, -1, -1):
            name = names.get(lines[i], "")
            if name and prune_from_here(name):
                marks[lid] = whole = i == len(lines) - 1
                if not whole:
                    del lines[: i + 1]
                break
    return marks


def render(
    profile: Any,
    *,
    nodecount: int = 0,
    cum: bool = False,
    sample_index: str = "",
    keep: Callable[[Any], bool] | None = None,
    active_filters: Sequence[str] = (),
) -> str:
    """The text of ``go tool pprof -top [-nodecount=N] [-cum] [-sample_index=X]``.

    ``keep`` picks the samples shown (``_filter.SampleFilter.keeps``), with
    pprof's ``Active filters:`` legend lines ``active_filters``; percentages
    stay relative to the whole profile's total, as pprof's are.
    """
    st = profile.string_table
    index = select_sample_index(profile, sample_index)
    sample_type = profile.sample_type[index]
    type_name, unit = st[sample_type.type], st[sample_type.unit]

    names = {f.id: shown_name(st[f.name], st[f.system_name]) for f in profile.function}
    location_lines = {loc.id: [ln.function_id for ln in loc.line] for loc in profile.location}
    marks = _prune(profile, names, location_lines)
    location_nodes = _location_nodes(profile, names, location_lines)
    stacks, total = _sample_stacks(profile, index, marks, keep)
    top = _trimmed_graph(stacks, location_nodes, nodecount, cum)
    out_unit = _output_unit(top.graph, top.nodes, total, unit)

    def fmt(v: int) -> str:
        return scaled_label(v, unit, out_unit)

    lines = _profile_labels(profile, type_name, unit, total, fmt)
    lines.extend(active_filters)
    lines.extend(_showing(top, total, fmt))
    lines.append(f"{'flat':>10} {'flat':>5}% {'sum':>5}% {'cum':>10} {'cum':>5}%")
    lines.extend(_rows(top, total, fmt))
    return "\n".join(lines) + "\n"


def _location_nodes(
    profile: Any, names: dict[int, str], location_lines: dict[int, list[int]]
) -> dict[int, list[NodeKey]]:
    """Each location's nodes: one per line it holds, or one for the location if none.

    A function without a name is told apart by its start line and the
    location's object file, as pprof does.
    """
    st = profile.string_table
    mapping_files = {m.id: st[m.filename] for m in profile.mapping}
    start_lines = {f.id: f.start_line for f in profile.function}
    location_files = {loc.id: mapping_files.get(loc.mapping_id, "") for loc in profile.location}
    location_nodes: dict[int, list[NodeKey]] = {}
    for lid, lines in location_lines.items():
        objfile = location_files[lid]
        keys: list[NodeKey] = []
        for fid in lines:
            name = names[fid]
            keys.append((name, 0, "") if name else ("", start_lines[fid], objfile))
        location_nodes[lid] = keys or [("", 0, objfile)]
    return location_nodes


def _sample_stacks(
    profile: Any, index: int, marks: dict[int, bool], keep: Callable[[Any], bool] | None = None
) -> tuple[list[tuple[tuple[int, ...], int]], int]:
    """The stacks (pruned by ``marks``) with their values summed, and the total.

    Only samples ``keep`` keeps count in the stacks; all count in the total.

    The total is computeTotal's: the sum of the absolute values, of the
    diff base's samples alone (label ``pprof::base=true``) if it has any.
    """
    st = profile.string_table
    total = base_total = 0
    has_base = False
    grouped: dict[tuple[int, ...], list[int]] = {}
    base_key, true_str = _string_index(st, "pprof::base"), _string_index(st, "true")
    for s in profile.sample:
        w = s.value[index]
        total += abs(w)
        if base_key and true_str and any(
            lab.key == base_key and lab.str == true_str for lab in s.label
        ):
            has_base = True
            base_total += abs(w)
        if (keep is not None and not keep(s)) or w == 0:
            continue
        locations = tuple(s.location_id)
        if marks:
            locations = _pruned_stack(locations, marks)
        entry = grouped.setdefault(locations, [0])
        entry[0] += w
    if has_base:
        total = base_total
    return [(locs, v[0]) for locs, v in grouped.items()], total


class _Top(NamedTuple):
    """The graph as ``-top`` shows it, and what it says about the nodes left out."""

    graph: _Graph
    nodes: list[NodeKey]  # the rows, sorted
    orig_count: int  # nodes after the node fraction, before -nodecount
    dropped_nodes: int  # nodes below the node fraction
    edge_cutoff: int  # edges below it mark no inlining


def _trimmed_graph(
    stacks: list[tuple[tuple[int, ...], int]],
    location_nodes: dict[int, list[NodeKey]],
    nodecount: int,
    cum: bool,
) -> _Top:
    """report.newTrimmedGraph: drop nodes below the node fraction, keep the top ``nodecount``."""
    g = _build(stacks, location_nodes, None)
    nodes = g.nodes()
    total_value = sum(g.flat.get(n, 0) for n in nodes)
    node_cutoff = abs(int(float(total_value) * NODE_FRACTION))
    edge_cutoff = abs(int(float(total_value) * EDGE_FRACTION))
    dropped_nodes = 0
    if node_cutoff > 0:
        kept = {n for n in nodes if abs(g.cum.get(n, 0)) >= node_cutoff}
        if len(kept) != len(nodes):
            dropped_nodes = len(nodes) - len(kept)
            g = _build(stacks, location_nodes, kept)
            nodes = g.nodes()
    orig_count = len(nodes)
    nodes = _sorted(g, nodes, cum)
    if nodecount > 0 and nodecount < len(nodes):
        g = _build(stacks, location_nodes, set(nodes[:nodecount]))
        nodes = _sorted(g, g.nodes(), cum)
    return _Top(g, nodes, orig_count, dropped_nodes, edge_cutoff)


def _showing(top: _Top, total: int, fmt: Callable[[int], str]) -> list[str]:
    """The lines after the profile's labels: what is shown, and what was dropped."""
    g, nodes = top.graph, top.nodes
    shown = sum(g.flat.get(n, 0) for n in nodes)
    lines = [
        f"Showing nodes accounting for {fmt(shown)}, "
        f"{percentage(shown, total).strip()} of {fmt(total)} total"
    ]
    if total:
        if top.dropped_nodes:
            plural = "s" if top.dropped_nodes > 1 else ""
            cutoff = fmt(abs(int(float(total) * NODE_FRACTION)))
            lines.append(f"Dropped {top.dropped_nodes} node{plural} (cum <= {cutoff})")
        if 0 < len(nodes) < top.orig_count:
            lines.append(f"Showing top {len(nodes)} nodes out of {top.orig_count}")
    return lines


def _rows(top: _Top, total: int, fmt: Callable[[int], str]) -> list[str]:
    """One row per node: flat, flat %, sum %, cum, cum %, name and inline mark."""
    g = top.graph
    inlined: dict[NodeKey, set[bool]] = {}
    for (_src, dst), (weight, inline) in g.edges.items():
        if abs(weight) >= top.edge_cutoff:
            inlined.setdefault(dst, set()).add(inline)
    rows = []
    flat_sum = 0
    for n in top.nodes:
        flat, cumv = g.flat.get(n, 0), g.cum.get(n, 0)
        flat_sum += flat
        marks_in = inlined.get(n, set())
        inl = ""
        if True in marks_in:
            inl = " (partial-inline)" if False in marks_in else " (inline)"
        rows.append(
            f"{fmt(flat):>10} {percentage(flat, total)} {percentage(flat_sum, total)} "
            f"{fmt(cumv):>10} {percentage(cumv, total)}  {printable_name(n)}{inl}"
        )
    return rows


def _string_index(st: Sequence[str], text: str) -> int:
    try:
        return list(st).index(text)
    except ValueError:
        return 0


def _pruned_stack(locations: tuple[int, ...], marks: dict[int, bool]) -> tuple[int, ...]:
    """The sample half of profile.Prune: cut the stack at the rootmost pruned frame."""
    found_user = False
    for i in range(len(locations) - 1, -1, -1):
        mark = marks.get(locations[i])
        if mark is None:
            found_user = True
            continue
        if not found_user:
            continue
        return locations[i + 1 :] if mark else locations[i:]
    return locations


def _output_unit(g: _Graph, nodes: Sequence[NodeKey], total: int, unit: str) -> str:
    """report.selectOutputUnit for the default ``-unit=minimum``."""
    if not nodes:
        return "minimum"
    min_value = 0
    for n in nodes:
        v = abs(g.flat.get(n, 0)) or abs(g.cum.get(n, 0))
        if v > 0 and (min_value == 0 or v < min_value):
            min_value = v
    max_value = total
    if min_value == 0:
        min_value = max_value
    _, min_unit = scale(min_value, unit, "minimum")
    _, max_unit = scale(max_value, unit, "minimum")
    out = min_unit
    if min_unit != max_unit and min_value * 100 < max_value:
        _, out = scale(100 * min_value, unit, "minimum")
    return out or unit


def _profile_labels(
    profile: Any, type_name: str, unit: str, total: int, fmt: Any
) -> list[str]:
    """report.ProfileLabels: File, Build ID, comments, Type, Doc, Time, Duration."""
    st = profile.string_table
    out: list[str] = []
    if profile.mapping:
        m = profile.mapping[0]
        if st[m.filename]:
            out.append("File: " + _go_base(st[m.filename]))
        if st[m.build_id]:
            out.append("Build ID: " + st[m.build_id])
    out.extend(st[c] for c in profile.comment if not st[c].startswith("#"))
    out.append("Type: " + type_name)
    if st[profile.doc_url]:
        out.append("Doc: " + st[profile.doc_url])
    if profile.time_nanos:
        out.append("Time: " + _format_time(profile.time_nanos))
    if profile.duration_nanos:
        duration = scaled_label(profile.duration_nanos, "nanoseconds")
        total_ns, total_unit = scale(total, unit, "nanoseconds")
        ratio = ""
        if total_unit == "ns" and total_ns != 0:
            ns = int(total_ns) if abs(total_ns) < 2.0**63 else -(1 << 63)  # Go's int64(x) on amd64
            ratio = "(" + percentage(ns, profile.duration_nanos) + ")"
        out.append(f"Duration: {duration}, Total samples = {fmt(total)} {ratio}")
    return out


def _format_time(nanos: int) -> str:
    """Go's ``2006-01-02 15:04:05 MST`` layout in local time."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(nanos // 1_000_000_000))
    except (OverflowError, OSError, ValueError):
        return f"{nanos} ns since the Unix epoch"
