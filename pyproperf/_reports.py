"""``top --tags`` and ``top --traces``: the text of ``go tool pprof -tags`` and ``-traces``.

Ports of google/pprof's ``report.printTags`` and ``report.printTraces`` (as
vendored in Go 1.27.3), over the samples a ``_filter.SampleFilter`` keeps,
with Go's ``text/tabwriter`` layout for the tags table.  Values are scaled
one by one (pprof's ``-unit=minimum``), percentages are of the whole
profile's total, before filters, as pprof's are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pyproperf import _text, _top
from pyproperf._filter import num_label_units, sample_labels

__all__ = ["render_tags", "render_traces"]

_SEPARATOR = "-----------+-------------------------------------------------------"


def _value_format(profile: Any, sample_index: str) -> tuple[int, str, Callable[[int], str]]:
    index = _top.select_sample_index(profile, sample_index)
    unit = profile.string_table[profile.sample_type[index].unit]
    return index, unit, lambda v: _top.scaled_label(v, unit, "minimum")


def _total(profile: Any, index: int) -> int:
    """report.computeTotal over all samples (before filters)."""
    _stacks, total = _top._sample_stacks(profile, index, {}, lambda _s: False)
    return total


def render_tags(
    profile: Any, *, sample_index: str = "", keep: Callable[[Any], bool] | None = None
) -> str:
    """The text of ``go tool pprof -tags [-sample_index=X]`` (the samples ``keep`` keeps)."""
    index, _unit, fmt = _value_format(profile, sample_index)
    units = num_label_units(profile)
    tag_map: dict[str, dict[str, int]] = {}
    tag_totals: dict[str, int] = {}
    for s in profile.sample:
        if keep is not None and not keep(s):
            continue
        w = s.value[index]
        strs, nums, _units = sample_labels(profile, s)
        items = [(k, v) for k, vals in strs.items() for v in vals]
        items += [
            (k, _top.scaled_label(v, units.get(k, ""), "minimum"))
            for k, vals in nums.items() for v in vals
        ]
        for key, text in items:
            values = tag_map.setdefault(key, {})
            values[text] = values.get(text, 0) + w
            tag_totals[key] = tag_totals.get(key, 0) + w
    total = _total(profile, index)
    out = []
    for key in sorted(tag_map):
        tag_total = tag_totals[key]
        if total > 0:
            pct = _top.percentage(tag_total, total)
            out.append(f"{key}:\t Total {fmt(tag_total)} of {fmt(total)} ({pct})")
        else:
            out.append(f"{key}:\t Total {fmt(tag_total)} of {fmt(total)}")
        values = tag_map[key]
        for text in sorted(values, key=lambda t: (-abs(values[t]), t)):
            v = values[text]
            if total > 0:
                out.append(f" \t{fmt(v)} ({_top.percentage(v, total)}):\t {text}")
            else:
                out.append(f" \t{fmt(v)}:\t {text}")
        out.append("")
    return _text.tabwrite(out, spaces_right=True)


def render_traces(
    profile: Any, *, sample_index: str = "", keep: Callable[[Any], bool] | None = None
) -> str:
    """The text of ``go tool pprof -traces [-sample_index=X]``: every kept sample, in order."""
    st = profile.string_table
    index, unit, fmt = _value_format(profile, sample_index)
    names = {f.id: _top.shown_name(st[f.name], st[f.system_name]) for f in profile.function}
    location_lines = {loc.id: [ln.function_id for ln in loc.line] for loc in profile.location}
    marks = _top._prune(profile, names, location_lines)
    location_nodes = _top._location_nodes(profile, names, location_lines)
    units = num_label_units(profile)
    total = _total(profile, index)
    out = _top._profile_labels(
        profile, st[profile.sample_type[index].type], unit, total,
        lambda v: _top.scaled_label(v, unit, "minimum"),
    )
    for s in profile.sample:
        if keep is not None and not keep(s):
            continue
        locations: Sequence[int] = tuple(s.location_id)
        if marks:
            locations = _top._pruned_stack(tuple(locations), marks)
        stack = [
            (_top.printable_name(key), i != len(keys) - 1)
            for lid in locations
            for keys in (location_nodes[lid],)
            for i, key in enumerate(keys)
        ]
        if not stack:
            continue
        out.append(_SEPARATOR)
        strs, nums, _units = sample_labels(profile, s)
        out.extend(sorted(f"{k:>10}:  {' '.join(vals)}" for k, vals in strs.items()))
        out.extend(sorted(
            f"{k:>10}:  {' '.join(_top.scaled_label(v, units.get(k, ''), 'auto') for v in vals)}"
            for k, vals in nums.items()
        ))
        for i, (name, inline) in enumerate(stack):
            value = fmt(s.value[index]) if i == 0 else ""
            out.append(f"{value:>10}   {name}{' (inline)' if inline else ''}")
    out.append(_SEPARATOR)
    return "\n".join(out) + "\n"
