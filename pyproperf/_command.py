"""``run -- COMMAND``: find a console script (gunicorn, uvicorn, celery, pytest) to run in-process.

A console script installed by pip is a small Python file whose ``#!``
line names the interpreter of its environment.  When that interpreter is
the one running pyproperf, the script is run as ``run script`` runs any
script, inside this process and under the profiler.  Anything else (a
shell script, a binary, a script of another Python, which would not find
its packages here) is refused with one line rather than run unprofiled.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

__all__ = ["resolve"]


def resolve(word: str) -> str:
    """The script to run for ``COMMAND`` (a path); ValueError with one line if there is none.

    A word naming an existing file, or with a ``/`` in it, is a path, as
    before ``run -- script.py`` meant a script; anything else is looked up
    on ``PATH`` as a shell would.
    """
    if "/" in word or os.path.isfile(word):
        return word  # a script given by path: run as before, Python or not is its business
    found = shutil.which(word)
    if found is None:
        raise ValueError(f"{word}: command not found on PATH")
    if _same_file(found, sys.executable):
        raise ValueError(
            f"{word} is this Python itself: give its script or module to run directly "
            "(run [options] script.py ... or run [options] -m module ...)"
        )
    interpreter = _shebang_interpreter(found)
    if interpreter is None:
        raise ValueError(f"{word} ({found}) is not a Python script: no '#!' line naming python")
    if not _is_this_python(interpreter):
        raise ValueError(
            f"{word} ({found}) runs {interpreter}, not this Python ({sys.executable}): "
            "install pyproperf in its environment, or run the command with that Python"
        )
    return found


def _shebang_interpreter(path: str) -> str | None:
    """The interpreter a ``#!`` line names (``env NAME`` looked up on PATH), if any."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    try:
        words = shlex.split(first[2:].decode("utf-8", "replace"))
    except ValueError:
        return None
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return shutil.which(names[0]) if names else None
    return words[0]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_this_python(interpreter: str) -> bool:
    """The same interpreter file, in the same environment (directory) as ``sys.executable``."""
    exe = sys.executable
    same_file = _same_file(interpreter, exe)
    same_dir = os.path.realpath(os.path.dirname(os.path.abspath(interpreter))) == \
        os.path.realpath(os.path.dirname(os.path.abspath(exe)))
    return same_file and same_dir
