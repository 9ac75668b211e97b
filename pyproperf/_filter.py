"""Pick samples as ``go tool pprof`` does with -focus, -ignore, -tagfocus and -tagignore.

A port of google/pprof's filters (as vendored in Go 1.27.3:
``profile.FilterSamplesByName``, ``profile.FilterSamplesByTag`` and
``driver.compileTagFilter``), over a decoded profile.proto message, so that
``top``, ``convert`` and any other report keep the same samples Go keeps:

* ``focus=REGEX`` keeps samples with at least one frame whose function name,
  file name or mapping file matches; ``ignore=REGEX`` drops samples with any
  such frame (ignore wins).  Regexps are searched, not anchored, as Go's.
* ``tagfocus=KEY=VALUES`` keeps samples whose label KEY has a value matching
  one of the comma-separated regexps; ``tagfocus=VALUES`` (no key) keeps
  samples where *every* regexp matches some ``key:value`` of the sample.
  A VALUES that reads as a number or range (``32kb``, ``:64kb``, ``4mb:``,
  ``1:10``) matches numeric labels within it instead, in the label's unit.
  ``tagignore`` takes the same forms and drops what matches.

Regexps are Go's RE2 syntax run by Python's ``re``: POSIX classes
(``[[:alpha:]]``) and ``\\z`` are translated, ``\\d``, ``\\w``, ``\\s`` and
``\\b`` are ASCII as in Go.  What only one of the two engines accepts
(look-arounds and back-references in Python, ``\\Q…\\E`` in Go) is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pyproperf import _top
from pyproperf._top import scale

__all__ = ["Filters", "SampleFilter", "filter_samples", "num_label_units", "sample_labels"]

# Labels of one sample: string values and numeric values (with their units) per key.
StrLabels = dict[str, list[str]]
NumLabels = dict[str, list[int]]
NumUnits = dict[str, list[str]]


class Filters(NamedTuple):
    """The filters, as the text given to pprof's options ("" = not set)."""

    focus: str = ""
    ignore: str = ""
    tagfocus: str = ""
    tagignore: str = ""

    def active(self) -> list[str]:
        """pprof's "Active filters:" legend lines, empty without filters."""
        pairs = [(k, v) for k, v in zip(self._fields, self, strict=True) if v]
        if not pairs:
            return []
        lines = ["Active filters:"]
        for k, v in pairs:
            text = f"{k}={v}"
            if len(text) > 80:
                text = text[:80] + "…"
            lines.append("   " + text)
        return lines


# --- Go's regexp syntax, run by re ------------------------------------------------

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_POSIX_RE = re.compile(r"\[:(\w+):\]")


def go_regexp(pattern: str, option: str) -> re.Pattern[str]:
    """Compile a Go (RE2) regexp; ValueError ``parsing OPTION regexp: …`` if it does not."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            m = _POSIX_RE.match(pattern, i)
            if m and m.group(1) in _POSIX_CLASSES:
                out.append(_POSIX_CLASSES[m.group(1)])
                i = m.end()
                continue
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            for lead in ("^", "]"):  # "[]a]" and "[^]a]": a leading ] is a member
                if pattern.startswith(lead, i):
                    out.append(lead)
                    i += 1
            continue
        out.append(c)
        i += 1
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error as exc:
        raise ValueError(f"parsing {option} regexp: {exc}") from None


# --- labels -------------------------------------------------------------------------


def sample_labels(profile: Any, sample: Any) -> tuple[StrLabels, NumLabels, NumUnits]:
    """A sample's labels as Go decodes them: string values, numbers, and their units.

    A label with a string value is a string label; otherwise one with a
    number or a unit is numeric; one with neither is dropped.
    """
    st = profile.string_table
    strs: StrLabels = {}
    nums: NumLabels = {}
    units: NumUnits = {}
    for lab in sample.label:
        key = st[lab.key]
        if lab.str:
            strs.setdefault(key, []).append(st[lab.str])
        elif lab.num or lab.num_unit:
            values = nums.setdefault(key, [])
            if lab.num_unit:
                have = units.setdefault(key, [])
                have.extend([""] * (len(values) - len(have)))
                have.append(st[lab.num_unit])
            values.append(lab.num)
    for key, have in units.items():
        have.extend([""] * (len(nums[key]) - len(have)))
    return strs, nums, units


def num_label_units(profile: Any) -> dict[str, str]:
    """profile.NumLabelUnits: each numeric key's unit (the first one seen, else guessed)."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for sample in profile.sample:
        _strs, nums, units = sample_labels(profile, sample)
        for key in nums:
            seen.add(key)
            for unit in units.get(key, ()):
                if unit and key not in out:
                    out[key] = unit
    for key in seen:
        if not out.get(key):
            out[key] = "bytes" if key in ("alignment", "request") else key
    return out


# --- tag filters ----------------------------------------------------------------------

TagMatch = Callable[[StrLabels, NumLabels], bool]
_RANGE_RE = re.compile(r"([+-]?[0-9]+)([A-Za-z]+)?")


def _range_filter(text: str) -> Callable[[int, str], bool] | None:
    """parseTagFilterRange: ``32kb``, ``:64kb``, ``4mb:``, ``12kb:64mb``; None if not a range."""
    ranges = _RANGE_RE.findall(text)[:2]
    matches = [m.group(0) for m in _RANGE_RE.finditer(text)][:2]
    if not ranges:
        return None
    low, unit = scale(_go_int(ranges[0][0], text), ranges[0][1], ranges[0][1])

    def within(check: Callable[[float], bool]) -> Callable[[int, str], bool]:
        def match(v: int, u: str) -> bool:
            sv, su = scale(v, u, unit)
            return su == unit and check(sv)

        return match

    if len(ranges) == 1:
        if text == matches[0]:
            return within(lambda sv: sv == low)
        if text == matches[0] + ":":
            return within(lambda sv: sv >= low)
        if text == ":" + matches[0]:
            return within(lambda sv: sv <= low)
        return None
    if text != matches[0] + ":" + matches[1]:
        return None
    high, unit2 = scale(_go_int(ranges[1][0], text), ranges[1][1], unit)
    if unit != unit2:
        return None
    return within(lambda sv: low <= sv <= high)


def _go_int(digits: str, text: str) -> int:
    n = int(digits)
    if not -(1 << 63) <= n < 1 << 63:
        raise ValueError(f"number out of range in {text!r}")
    return n


def compile_tag_filter(
    option: str, text: str, units: Mapping[str, str], notes: list[str] | None = None
) -> TagMatch | None:
    """driver.compileTagFilter: a predicate over a sample's labels, None for ""."""
    if not text:
        return None
    want_key, sep, value = text.partition("=")
    if not sep:
        want_key, value = "", text
    numeric = _range_filter(value)
    if numeric is not None:
        if notes is not None:
            notes.append(f"{option}:Interpreted '{value}' as range, not regexp")
        num = numeric

        def any_value(vals: Sequence[int], key: str) -> bool:
            return any(num(v, units.get(key, "")) for v in vals)

        if not want_key:
            return lambda _s, n: any(any_value(vals, k) for k, vals in n.items())
        return lambda _s, n: want_key in n and any_value(n[want_key], want_key)
    regexps = [go_regexp(part, option) for part in value.split(",")]
    if not want_key:
        # Every regexp must match some "key:value" (pprof's historical form).
        return lambda s, _n: all(
            any(rx.search(f"{k}:{v}") for k, vals in s.items() for v in vals) for rx in regexps
        )
    return lambda s, _n: want_key in s and any(
        rx.search(v) for rx in regexps for v in s[want_key]
    )


# --- the filter -----------------------------------------------------------------------


class SampleFilter:
    """Which samples pass ``filters``: build once per profile, then ask per sample.

    The regexps see what pprof's see: function names after its
    symbolization clean-up (``_top.shown_name``), and the locations and
    stacks after ``drop_frames`` pruning.  ``function_names`` (function id ->
    name) replaces the names.
    """

    def __init__(
        self,
        profile: Any,
        filters: Filters,
        *,
        function_names: Mapping[int, str] | None = None,
    ) -> None:
        st = profile.string_table
        focus = go_regexp(filters.focus, "focus") if filters.focus else None
        ignore = go_regexp(filters.ignore, "ignore") if filters.ignore else None
        self.notes: list[str] = []
        units = num_label_units(profile) if filters.tagfocus or filters.tagignore else {}
        self._tagfocus = compile_tag_filter("tagfocus", filters.tagfocus, units, self.notes)
        self._tagignore = compile_tag_filter("tagignore", filters.tagignore, units, self.notes)
        self._profile = profile
        # location id -> True (focused) / False (ignored); absent: neither.
        self._marks: dict[int, bool] = {}
        self._name_filter = focus is not None or ignore is not None
        self.focus_matched = focus is None
        self.ignore_matched = ignore is None
        self.tagfocus_matched = self._tagfocus is None
        self.tagignore_matched = self._tagignore is None
        self._prune_marks: dict[int, bool] = {}
        if not self._name_filter:
            return
        names = function_names
        if names is None:
            names = {f.id: _top.shown_name(st[f.name], st[f.system_name]) for f in profile.function}
        location_lines = {loc.id: [ln.function_id for ln in loc.line] for loc in profile.location}
        self._prune_marks = _top._prune(profile, dict(names), location_lines)
        files = {f.id: st[f.filename] for f in profile.function}
        mapping_files = {m.id: st[m.filename] for m in profile.mapping}
        cache: dict[tuple[re.Pattern[str], str], bool] = {}

        def hit(rx: re.Pattern[str], text: str) -> bool:
            found = cache.get((rx, text))
            if found is None:
                found = cache[(rx, text)] = rx.search(text) is not None
            return found

        def matches(rx: re.Pattern[str], loc: Any) -> bool:
            for fid in location_lines[loc.id]:
                if fid in names and (hit(rx, names[fid]) or hit(rx, files.get(fid, ""))):
                    return True
            mfile = mapping_files.get(loc.mapping_id)
            return mfile is not None and hit(rx, mfile)

        for loc in profile.location:
            if ignore is not None and matches(ignore, loc):
                self.ignore_matched = True
                self._marks[loc.id] = False
            elif focus is None or matches(focus, loc):
                self.focus_matched = True
                self._marks[loc.id] = True

    def keeps(self, sample: Any) -> bool:
        """Whether ``sample`` passes."""
        if self._name_filter:
            focused = False
            locations = tuple(sample.location_id)
            if self._prune_marks:
                locations = _top._pruned_stack(locations, self._prune_marks)
            for lid in locations:
                mark = self._marks.get(lid)
                if mark is False:
                    return False
                focused = focused or mark is True
            if not focused:
                return False
        if self._tagfocus is None and self._tagignore is None:
            return True
        strs, nums, _units = sample_labels(self._profile, sample)
        focused = self._tagfocus is None or self._tagfocus(strs, nums)
        ignored = self._tagignore is not None and self._tagignore(strs, nums)
        self.tagfocus_matched = self.tagfocus_matched or focused
        self.tagignore_matched = self.tagignore_matched or ignored
        return focused and not ignored

    def warnings(self) -> list[str]:
        """pprof's "… expression matched no samples" lines, for the filters that did not match."""
        out = []
        for name, matched in (("Focus", self.focus_matched), ("Ignore", self.ignore_matched),
                              ("TagFocus", self.tagfocus_matched),
                              ("TagIgnore", self.tagignore_matched)):
            if not matched:
                out.append(f"{name} expression matched no samples")
        return out


def filter_samples(
    profile: Any, filters: Filters, *, function_names: Mapping[int, str] | None = None
) -> list[Any]:
    """The samples of ``profile`` that pass ``filters``, in profile order."""
    keep = SampleFilter(profile, filters, function_names=function_names)
    return [s for s in profile.sample if keep.keeps(s)]
