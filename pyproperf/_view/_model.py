"""A decoded profile as the report's compact model: a call tree of frames, samples on its nodes.

The page (``report.js``) does all the arithmetic the views need (label
filters, flame graph, top table, per-line values), so the model keeps what
that needs and nothing else, in a form that stays small in JSON:

* ``funcs``: one entry per function as ``go tool pprof`` groups them (by
  shown name; a nameless one by start line and object file, as ``_top``);
  ``frames``: (function, line) pairs.
* the stacks as one prefix tree of frames, root first, numbered in
  depth-first order so that a node's parent is usually the node just before
  it: ``np`` holds ``id - parent`` (mostly 1) and ``nf`` the frame.
* the samples: their tree node, their label set and one value per sample
  type, samples with the same node and labels added up (as pprof does).

A profile with more than ``max_nodes`` tree nodes is cut: the nodes with
the smallest share of every sample type (abs values) go, and what they held
is kept, under one ``(cut)`` frame below the nearest node that stays, so
the totals and every label's totals stay exact.  ``cut`` in the model says
how many nodes went and the largest share a cut node had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyproperf import _top

__all__ = ["CUT_NAME", "DEFAULT_MAX_NODES", "Model", "build"]

# Tree nodes kept before cutting: a 100,000-stack profile of ~20 frames has
# ~300,000 to 2,000,000; the page takes ~9 bytes per node (500,000: ~5 MB).
DEFAULT_MAX_NODES = 500_000
CUT_NAME = "(cut: small stacks)"


@dataclass
class Model:
    """The model, and what Python needs of it afterwards (source lines)."""

    strings: list[str] = field(default_factory=lambda: [""])
    funcs: list[int] = field(default_factory=list)  # name, file, start line; flat
    frames: list[int] = field(default_factory=list)  # function, line; flat
    parents: list[int] = field(default_factory=list)  # node i+1's parent id
    node_frames: list[int] = field(default_factory=list)  # node i+1's frame
    sample_nodes: list[int] = field(default_factory=list)
    sample_labels: list[int] = field(default_factory=list)
    sample_values: list[list[int]] = field(default_factory=list)  # per type
    label_sets: list[list[int]] = field(default_factory=lambda: [[]])  # key, value; flat
    types: list[list[str]] = field(default_factory=list)
    default_type: int = 0
    cut: dict[str, Any] | None = None
    cut_func: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    _string_ids: dict[str, int] = field(default_factory=lambda: {"": 0})

    def string(self, text: str) -> int:
        index = self._string_ids.get(text)
        if index is None:
            index = self._string_ids[text] = len(self.strings)
            self.strings.append(text)
        return index

    def to_json(self, sources: dict[int, list[Any]]) -> dict[str, Any]:
        """The object the page reads (``sources``: function id -> [first line, lines])."""
        return {
            "v": 1,
            "strings": self.strings,
            "funcs": self.funcs,
            "frames": self.frames,
            "np": _deltas(self.parents),
            "nf": self.node_frames,
            "sn": self.sample_nodes,
            "sl": self.sample_labels,
            "sv": self.sample_values,
            "ls": self.label_sets,
            "types": self.types,
            "defaultType": self.default_type,
            "cut": self.cut,
            "cutFunc": self.cut_func,
            "meta": self.meta,
            "sources": {str(k): v for k, v in sources.items()},
        }


def _deltas(parents: list[int]) -> list[int]:
    return [i + 1 - p for i, p in enumerate(parents)]


class _Tree:
    """The prefix tree of stacks while it is built: node 0 is the root."""

    def __init__(self) -> None:
        self.parent: list[int] = [-1]
        self.frame: list[int] = [-1]
        self.children: dict[tuple[int, int], int] = {}

    def child(self, node: int, frame: int) -> int:
        key = (node, frame)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = len(self.parent)
            self.parent.append(node)
            self.frame.append(frame)
        return found


def build(profile: Any, *, title: str, max_nodes: int = DEFAULT_MAX_NODES) -> Model:
    """The model of a decoded profile (``_builder.decode``)."""
    st = profile.string_table
    m = Model()
    m.types = [[st[t.type], st[t.unit]] for t in profile.sample_type]
    if not m.types:
        raise ValueError("profile has no sample types")
    m.default_type = _top.select_sample_index(profile, "")

    names = {f.id: _top.shown_name(st[f.name], st[f.system_name]) for f in profile.function}
    location_lines = {loc.id: [ln.function_id for ln in loc.line] for loc in profile.location}
    marks = _top._prune(profile, names, location_lines)  # drop_frames, as pprof
    location_frames = _location_frames(profile, m, names, location_lines)

    tree = _Tree()
    grouped = _add_samples(profile, m, tree, location_frames, marks)
    if len(tree.parent) - 1 > max_nodes:
        tree, grouped = _cut(tree, grouped, m, max_nodes)
    _renumber(tree, grouped, m)
    m.meta = _meta(profile, title)
    return m


def _add_samples(
    profile: Any, m: Model, tree: _Tree, location_frames: dict[int, list[int]],
    marks: dict[int, bool],
) -> dict[tuple[int, int], list[int]]:
    """Put every sample's stack in ``tree``: (node, label set) -> summed values."""
    st = profile.string_table
    ntypes = len(m.types)
    children, parents, frames = tree.children, tree.parent, tree.frame
    stack_nodes: dict[tuple[int, ...], int] = {}
    label_ids: dict[tuple[int, ...], int] = {(): 0}
    grouped: dict[tuple[int, int], list[int]] = {}
    for s in profile.sample:
        values = list(s.value)
        if len(values) != ntypes or not any(values):
            continue
        locations = tuple(s.location_id)
        node = stack_nodes.get(locations)
        if node is None:
            pruned = _top._pruned_stack(locations, marks) if marks else locations
            node = 0
            for lid in reversed(pruned):
                for frame in location_frames[lid]:  # _Tree.child, inline: the hot loop
                    key = (node, frame)
                    found = children.get(key)
                    if found is None:
                        found = children[key] = len(parents)
                        parents.append(node)
                        frames.append(frame)
                    node = found
            stack_nodes[locations] = node
        labels = _label_key(s, st, m)
        ls = label_ids.get(labels)
        if ls is None:
            ls = label_ids[labels] = len(m.label_sets)
            m.label_sets.append(list(labels))
        entry = grouped.get((node, ls))
        if entry is None:
            grouped[(node, ls)] = values
        else:
            for i, v in enumerate(values):
                entry[i] += v
    return grouped


def _location_frames(
    profile: Any, m: Model, names: dict[int, str], location_lines: dict[int, list[int]]
) -> dict[int, list[int]]:
    """Each location's frames, root-most (outermost inlined) first, as frame ids."""
    st = profile.string_table
    mapping_files = {mp.id: st[mp.filename] for mp in profile.mapping}
    functions = {f.id: f for f in profile.function}
    func_ids: dict[tuple[str, int, str], int] = {}
    frame_ids: dict[tuple[int, int], int] = {}

    def func_id(key: tuple[str, int, str], filename: str, start_line: int) -> int:
        fid = func_ids.get(key)
        if fid is None:
            fid = func_ids[key] = len(m.funcs) // 3
            m.funcs.extend((m.string(_top.printable_name(key)), m.string(filename), start_line))
        return fid

    def frame_id(fid: int, line: int) -> int:
        found = frame_ids.get((fid, line))
        if found is None:
            found = frame_ids[(fid, line)] = len(m.frames) // 2
            m.frames.extend((fid, line))
        return found

    out: dict[int, list[int]] = {}
    for loc in profile.location:
        objfile = mapping_files.get(loc.mapping_id, "")
        kept = location_lines[loc.id]  # after drop_frames: a suffix of loc.line's functions
        lines = list(loc.line)[len(loc.line) - len(kept) :]
        frames: list[int] = []
        for ln in reversed(lines):
            f = functions.get(ln.function_id)
            name = names.get(ln.function_id, "")
            start = f.start_line if f is not None else 0
            key = (name, 0, "") if name else ("", start, objfile)
            filename = st[f.filename] if f is not None else ""
            frames.append(frame_id(func_id(key, filename, start), ln.line))
        if not frames:
            frames.append(frame_id(func_id(("", 0, objfile), "", 0), 0))
        out[loc.id] = frames
    return out


def _label_key(sample: Any, st: Any, m: Model) -> tuple[int, ...]:
    """A sample's labels as sorted (key, value) string ids; numbers as ``N`` or ``N unit``."""
    pairs: list[tuple[str, str]] = []
    for lab in sample.label:
        key = st[lab.key]
        if lab.str:
            pairs.append((key, st[lab.str]))
        elif lab.num or lab.num_unit:
            unit = st[lab.num_unit]
            pairs.append((key, f"{lab.num} {unit}" if unit else str(lab.num)))
    pairs.sort()
    out: list[int] = []
    for key, value in pairs:
        out.extend((m.string(key), m.string(value)))
    return tuple(out)


def _cut(
    tree: _Tree, grouped: dict[tuple[int, int], list[int]], m: Model, max_nodes: int
) -> tuple[_Tree, dict[tuple[int, int], list[int]]]:
    """Keep the ``max_nodes`` nodes with the largest share; what the others held goes to (cut)."""
    n = len(tree.parent)
    parent = tree.parent
    share = _shares(tree, grouped, len(m.types))
    # Largest share first, ties in id order (the sort is stable): a parent's
    # share is at least its child's and its id smaller, so ancestors rank first.
    negative = [-x for x in share]
    order = sorted(range(1, n), key=negative.__getitem__)
    keep = [False] * n
    keep[0] = True
    for i in order[:max_nodes]:
        keep[i] = True
    largest_cut = share[order[max_nodes]] if len(order) > max_nodes else 0.0

    cut_func = len(m.funcs) // 3
    m.funcs.extend((m.string(CUT_NAME), 0, 0))
    cut_frame = len(m.frames) // 2
    m.frames.extend((cut_func, 0))
    m.cut_func = cut_func

    new = _Tree()
    new_id = [0] * n
    old_frames = tree.frame
    for i in range(1, n):
        p = parent[i]
        if keep[i]:
            new_id[i] = new.child(new_id[p], old_frames[i])
        elif keep[p]:
            new_id[i] = new.child(new_id[p], cut_frame)
        else:
            new_id[i] = new_id[p]
    regrouped: dict[tuple[int, int], list[int]] = {}
    for (node, ls), values in grouped.items():
        key = (new_id[node], ls)
        entry = regrouped.get(key)
        if entry is None:
            regrouped[key] = list(values)
        else:
            for t, v in enumerate(values):
                entry[t] += v
    m.cut = {
        "nodes": n - 1,
        "kept": len(new.parent) - 1,
        "largestShare": largest_cut,
    }
    return new, regrouped


def _shares(tree: _Tree, grouped: dict[tuple[int, int], list[int]], ntypes: int) -> list[float]:
    """Each node's largest share of a sample type's total (abs values, subtree included)."""
    n = len(tree.parent)
    parent = tree.parent
    share = [0.0] * n
    for t in range(ntypes):
        cum = [0.0] * n
        for (node, _ls), values in grouped.items():
            cum[node] += abs(values[t])
        for i in range(n - 1, 0, -1):  # children come after their parents
            cum[parent[i]] += cum[i]
        scale = 1.0 / (cum[0] or 1.0)
        share = list(map(max, share, [c * scale for c in cum]))
    return share


def _renumber(tree: _Tree, grouped: dict[tuple[int, int], list[int]], m: Model) -> None:
    """Number the nodes depth first (so parents are mostly the previous node) into ``m``."""
    n = len(tree.parent)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[tree.parent[i]].append(i)
    new_id = [0] * n
    order: list[int] = []
    stack = list(reversed(children[0]))
    while stack:
        i = stack.pop()
        new_id[i] = len(order) + 1
        order.append(i)
        stack.extend(reversed(children[i]))
    m.parents = [new_id[tree.parent[i]] for i in order]
    m.node_frames = [tree.frame[i] for i in order]
    ntypes = len(m.types)
    m.sample_values = [[] for _ in range(ntypes)]
    for (node, ls), values in sorted(grouped.items(), key=lambda kv: new_id[kv[0][0]]):
        m.sample_nodes.append(new_id[node])
        m.sample_labels.append(ls)
        for t in range(ntypes):
            m.sample_values[t].append(values[t])


def _meta(profile: Any, title: str) -> dict[str, Any]:
    st = profile.string_table
    period = ""
    if profile.period:
        period = f"{profile.period} {st[profile.period_type.unit]}".strip()
    return {
        "title": title,
        "comments": [st[c] for c in profile.comment],
        "timeNanos": profile.time_nanos,
        "durationNanos": profile.duration_nanos,
        "period": period,
    }
