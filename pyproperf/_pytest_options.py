"""pyproperf's pytest plugin as pytest loads it (the ``pytest11`` entry point): options only.

``pytest --pprof FILE`` profiles the session, ``--pprof-dir DIR`` each test
(``pyproperf._pytest_plugin`` does the work; docs/integrations.md says
what is measured).  Installing pyproperf puts this module in every pytest
run of the environment, so it only adds the options: the plugin proper
(and the sampler, pytest's hooks, the summary) is imported and switched on
only when an option asks for it.  Importing it imports ``pyproperf``
itself, as any submodule does (no thread, timer or signal handler;
docs/integrations.md has the measured cost and what it changes).
"""

from __future__ import annotations

import pytest

# The options that only mean something with --pprof or --pprof-dir.
_MODIFIERS = (("pprof_hz", "--pprof-hz"), ("pprof_clock", "--pprof-clock"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyproperf", "CPU profiles of the tests (pyproperf)")
    group.addoption(
        "--pprof", metavar="FILE", default=None,
        help="write one CPU profile of the whole session to FILE (gzipped profile.proto), "
        "every sample taken during a test labelled test=<node id>",
    )
    group.addoption(
        "--pprof-dir", metavar="DIR", default=None,
        help="write one CPU profile per test into DIR (made if missing)",
    )
    group.addoption(
        "--pprof-clock", choices=("cpu", "wall"), default=None,
        help="cpu: CPU time per thread (default); wall: elapsed time of every thread, "
        "waiting included",
    )
    group.addoption(
        "--pprof-hz", metavar="N", type=int, default=None,
        help="samples per second, 1-10000 (default 100)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("pprof") is None and config.getoption("pprof_dir") is None:
        for dest, flag in _MODIFIERS:
            if config.getoption(dest) is not None:
                raise pytest.UsageError(f"{flag} needs --pprof FILE or --pprof-dir DIR")
        return
    from pyproperf._pytest_plugin import activate

    activate(config)
