"""CPU and wall-clock sampler (being written; API stable)."""

from __future__ import annotations

from typing import Any


def start_cpu_profile(w: Any, *, hz: int = 100, clock: str = "cpu") -> None:
    raise NotImplementedError


def stop_cpu_profile() -> None:
    return None


def cpu_profile(target: Any, *, hz: int = 100, clock: str = "cpu") -> Any:
    raise NotImplementedError


def flush() -> None:
    return None
