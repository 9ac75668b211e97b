"""Where profiles go: checked binary writers and atomic file writes.

Every output path funnels through here so that bad destinations fail
early with a precise error, and a failed write never leaves a
half-written profile that looks like a good one.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import IO, Any, Protocol

__all__ = [
    "BinaryWriter",
    "check_writer",
    "deliver",
    "open_target",
    "write_all",
    "write_file_atomic",
]


class BinaryWriter(Protocol):
    """What Go calls an io.Writer: anything with ``write(bytes)``."""

    def write(self, data: bytes | memoryview, /) -> Any: ...


def check_writer(w: object, what: str = "w") -> BinaryWriter:
    """Check that ``w`` is an open, writable binary stream, or raise.

    TypeError for objects that cannot take bytes, ValueError for closed or
    read-only streams.  Nothing is written except an empty ``b""`` probe.
    """
    write = getattr(w, "write", None)
    if not callable(write):
        raise TypeError(f"{what} must be a writable binary file object, not {type(w).__name__}")
    if isinstance(w, io.TextIOBase):
        raise TypeError(f"{what} is a text stream; open the file in binary mode ('wb')")
    if getattr(w, "closed", False):
        raise ValueError(f"{what} is closed")
    writable = getattr(w, "writable", None)
    if callable(writable):
        try:
            ok = writable()
        except ValueError as exc:  # closed file
            raise ValueError(f"{what} is closed") from exc
        if not ok:
            raise ValueError(f"{what} is not open for writing")
    try:
        write(b"")
    except TypeError as exc:
        raise TypeError(f"{what} does not accept bytes; open the file in binary mode") from exc
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} cannot be written: {exc}") from exc
    return w  # type: ignore[return-value]


def write_all(w: BinaryWriter, data: bytes) -> None:
    """Write all of ``data`` to ``w`` (raw files may take it in parts), then flush."""
    view = memoryview(data)
    while view:
        n = w.write(view)
        if n is None or n >= len(view):  # buffered streams take everything
            break
        if n <= 0:
            raise OSError("write made no progress")
        view = view[n:]
    flush = getattr(w, "flush", None)
    if callable(flush):
        flush()


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` all at once (temp file + rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pyproperf-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_target(target: object, what: str = "path") -> str | os.PathLike[str] | IO[bytes]:
    """Accept a path (str or PathLike) or a binary writer; check it now, write later."""
    if isinstance(target, (str, os.PathLike)):
        directory = os.path.dirname(os.path.abspath(os.fspath(target)))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{what}: directory does not exist: {directory}")
        return target
    return check_writer(target, what)  # type: ignore[return-value]


def deliver(target: str | os.PathLike[str] | BinaryWriter, data: bytes) -> None:
    """Write a finished profile to a path (atomically) or to a binary writer."""
    if isinstance(target, (str, os.PathLike)):
        write_file_atomic(target, data)
    else:
        write_all(target, data)
