"""Run by every new Python process started under ``run --subprocesses``.

``run`` puts this directory first on ``PYTHONPATH``, so Python's ``site``
imports this file as ``sitecustomize`` at start-up, before the child's
program.  In the interpreter that runs ``run`` (same executable, same
``sys.prefix``) it joins the profiling session (``pyproperf._subprocesses``);
any other Python is left alone, without a word.  Then it runs the
``sitecustomize`` this one shadows, if the environment has one.  Any
failure is one line on stderr: the child runs unprofiled.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys


def _ours() -> bool:
    """Whether this interpreter is the one running ``run`` (else: leave it alone, silently)."""
    try:
        config = json.loads(os.environ.get("PYPROPERF_SUBPROCESSES", ""))
        return bool(sys.prefix == config["prefix"]
                    and os.path.samefile(sys.executable, config["python"]))
    except (ValueError, TypeError, KeyError, OSError):
        return False


def _start() -> None:
    if not _ours():
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if importlib.util.find_spec("pyproperf") is None:  # run from a source checkout
        sys.path.append(os.path.dirname(os.path.dirname(here)))
    from pyproperf import _subprocesses

    _subprocesses.start_from_environment()


def _chain() -> None:
    """Run the environment's own ``sitecustomize``, which this module's name hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _start()
except Exception as exc:
    print(f"pyproperf: not profiling process {os.getpid()}: {exc!r}", file=sys.stderr)
_chain()
