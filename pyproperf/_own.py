"""Which of pyproperf's code only hands control to the user's code.

Heap profiles leave out what pyproperf allocates for itself (its sampler,
its threads, its HTTP answers), found by walking a traceback out from the
leaf to the first frame that is pyproperf's or the program's.  But some
pyproperf functions exist to call the user's code -- ``do``, the
decorators' wrappers, the ``Thread`` hooks, ``run``'s launcher -- and what
is allocated under them is the user's, even when the user's callable is a
builtin or a standard-library function with no frame of the program in
between.  Those functions register here (``calls_user_code``), and the
walk steps over their frames.
"""

from __future__ import annotations

from types import CodeType
from typing import Any, TypeVar

__all__ = ["calls_user_code", "is_user_call_line", "register_code"]

_F = TypeVar("_F")

# (filename, line) of every line of a registered function; the function's
# first line too (the ``def``: a frame at its entry stands there).
_lines: set[tuple[str, int]] = set()
_codes: set[CodeType] = set()


def register_code(code: CodeType) -> None:
    """Count every line of ``code`` as handing control to the user's code."""
    if code in _codes:
        return
    _codes.add(code)
    filename = code.co_filename
    _lines.add((filename, code.co_firstlineno))
    _lines.update((filename, line) for _, _, line in code.co_lines() if line)


def calls_user_code(func: _F) -> _F:
    """Decorator: ``func`` calls a callable the user gave it (see the module's docstring)."""
    code: Any = getattr(func, "__code__", None)
    if isinstance(code, CodeType):
        register_code(code)
    return func


def is_user_call_line(filename: str, line: int) -> bool:
    """Whether (filename, line) is in a function that calls the user's code."""
    return (filename, line) in _lines
