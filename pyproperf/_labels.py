"""Profiler labels: LabelSet, and which labels are active where.

The sampler runs in a signal handler or another thread and cannot read
the running code's ContextVar, so the active labels are also published
where a stack walk finds them:

* ``frame_labels`` maps a live frame to the label set in force from that
  frame inward (registered by ``labeled``/``do``; the innermost registered
  frame on a stack wins);
* ``unit_labels(ident)`` gives the labels of the unit (thread, greenlet)
  currently running on thread ``ident``, for stacks with no registered
  frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import FrameType

__all__ = ["LabelSet", "frame_labels", "unit_labels"]


class LabelSet:
    """An immutable set of (key, value) string pairs, sorted by key."""

    __slots__ = ("_hash", "pairs")

    pairs: tuple[tuple[str, str], ...]

    def __init__(self, pairs: tuple[tuple[str, str], ...] = ()) -> None:
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "_hash", hash(pairs))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LabelSet is immutable")

    def __hash__(self) -> int:
        return self._hash  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.pairs == other.pairs

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self.pairs)
        return f"LabelSet({{{inner}}})"


# Live frame -> labels in force from that frame inward.
frame_labels: dict[FrameType, LabelSet] = {}

# Thread ident -> labels of the unit running on it, when no frame says.
_unit_labels: dict[int, LabelSet] = {}


def unit_labels(ident: int) -> LabelSet | None:
    """Labels of the unit (thread, or the greenlet it runs) running on thread ``ident``."""
    return _unit_labels.get(ident)
