"""Shared fixtures: every test must leave the process as it found it."""

from __future__ import annotations

import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from pyproperf import _labels, _sampler
from tests.pprof_tool import pprof_binary

# A suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so
# would every program the tests start: Python then installs no KeyboardInterrupt handler
# and the Ctrl-C tests wait forever for programs that ignore it.  Give the suite (and so
# its children) the disposition a terminal gives.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _go_pprof_available() -> None:
    """A missing ``go tool pprof`` fails the run: it is how every profile is checked."""
    try:
        pprof_binary()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"go tool pprof is not available: {exc}", pytrace=False)


@pytest.fixture(autouse=True)
def _process_left_clean() -> Iterator[None]:
    """No armed timer (ITIMER_PROF or our per-thread one) or foreign SIGPROF handler, no leaked
    thread; tracemalloc, labels as found."""
    handler = signal.getsignal(signal.SIGPROF)
    timer = signal.getitimer(signal.ITIMER_PROF)
    threads = set(threading.enumerate())
    tracing = tracemalloc.is_tracing()
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"threads left running: {extra}"
    assert signal.getitimer(signal.ITIMER_PROF) == timer, "ITIMER_PROF left armed"
    signals = _sampler.engine.signals
    assert not signals.armed and signals._timer is None, "SIGPROF timer left armed"
    assert signal.getsignal(signal.SIGPROF) == handler, "SIGPROF handler not restored"
    assert tracemalloc.is_tracing() == tracing, "tracemalloc state changed"
    assert not _labels.frame_labels, f"labels left registered: {_labels.frame_labels}"
