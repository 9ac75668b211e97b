"""Merging profile files: ``python -m pyproperf merge`` and ``run --subprocesses``.

Both go through ``_builder.merge_profiles`` (google/pprof's
``profile.Merge``): same sample and period types required, samples with
the same locations and labels added up, comments kept once, durations
summed, the earliest start time kept.  This module reads the files (with
``_read``'s size limits: they may come from anywhere) and, for the
profiles of several processes, tags each sample with its process, so
``go tool pprof -tagfocus pid=1234`` (or ``-tags``) tells them apart.
It is small and free of CLI concerns so that other runners (a pytest
plugin merging its xdist workers) can call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pyproperf import _builder, _read

__all__ = ["ProcessProfile", "merge_files", "merge_processes"]


def merge_files(paths: Sequence[str], max_size: int = _read.DEFAULT_MAX_SIZE) -> bytes:
    """The gzipped merge of the profile files ``paths``.

    ValueError with one line naming the file at fault (unreadable, not a
    profile, too large), or saying the sample types differ.
    """
    if not paths:
        raise ValueError("no profiles to merge")
    sources = []
    for path in paths:
        try:
            sources.append(_read.read_profile(path, max_size))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return _merge(sources, None, max_size, paths)


class ProcessProfile(NamedTuple):
    """One process's profile (gzipped or raw bytes), its pid and program name."""

    data: bytes
    pid: int
    name: str


def merge_processes(profiles: Sequence[ProcessProfile], max_size: int | None = None) -> bytes:
    """The gzipped merge of several processes' profiles, each sample labelled with its
    process: ``pid`` (a numeric label, so that ``-tagfocus pid=1234`` selects it) and
    ``process`` (its program name, a string label).

    Labels of those keys a program set itself are replaced.  ValueError as
    :func:`merge_files`.
    """
    if not profiles:
        raise ValueError("no profiles to merge")
    tags: list[list[tuple[str, str | int]]] = [
        [("pid", p.pid), ("process", p.name or "?")] for p in profiles
    ]
    names = [f"pid {p.pid}" for p in profiles]
    return _merge([p.data for p in profiles], tags, max_size, names)


def _merge(
    sources: list[bytes],
    tags: list[list[tuple[str, str | int]]] | None,
    max_size: int | None,
    names: Sequence[str],
) -> bytes:
    # Decode one by one first: a bad source, or the first of other types, is named.
    first = ""
    for data, name in zip(sources, names, strict=True):
        try:
            types = _types(_builder.decode(data, max_size))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not first:
            first, first_types = name, types
        elif types != first_types:
            raise ValueError(
                f"cannot merge profiles of different types: {first} has {first_types}, "
                f"{name} has {types}"
            )
    try:
        return _builder.merge_profiles(sources, labels=tags, max_size=max_size)
    except ValueError as exc:
        raise ValueError(f"cannot merge: {exc}") from None


def _types(profile: Any) -> str:
    """``period TYPE/UNIT, samples TYPE/UNIT ...``: what must match for a merge."""
    st = profile.string_table
    samples = " ".join(f"{st[t.type]}/{st[t.unit]}" for t in profile.sample_type)
    pt = profile.period_type
    return f"[{samples}] (period {st[pt.type]}/{st[pt.unit]})"
