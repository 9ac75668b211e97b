"""Where profiles go: checked binary writers and atomic file writes.

Every output path funnels through here so that bad destinations fail
early with a precise error, a failed write never leaves a half-written
profile that looks like a good one, and writing a profile never changes
what the path was: links stay links, devices stay devices, modes stay.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from typing import IO, Any, Protocol

__all__ = [
    "BinaryWriter",
    "check_path",
    "check_writer",
    "deliver",
    "open_target",
    "write_all",
    "write_file",
]


class BinaryWriter(Protocol):
    """What Go calls an io.Writer: anything with ``write(bytes)``.

    It is only ever given ``bytes`` (Go's ``Write`` gets a ``[]byte``), so a
    writer may test ``isinstance(data, bytes)`` or call ``data.decode()``.
    """

    def write(self, data: bytes, /) -> Any: ...


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


# After a short write the rest goes in pieces of at most this many bytes: each
# piece is a copy (a writer gets ``bytes``, never a view), and bounded pieces
# keep the copying linear however little a raw file takes at a time.
_PIECE = 1 << 20


def write_all(w: BinaryWriter, data: bytes) -> None:
    """Write all of ``data`` to ``w`` (raw files may take it in parts), then flush.

    Every call of ``w.write`` gets ``bytes``: the whole of ``data`` first,
    then, if the writer took only part, the rest in pieces.
    """
    if type(data) is not bytes:
        data = bytes(data)
    total = len(data)
    done = 0
    piece = data
    while piece:
        n = w.write(piece)
        if n is None or n >= len(piece):  # buffered streams take everything
            done += len(piece)
        elif n <= 0:
            raise OSError("write made no progress")
        else:
            done += n
        piece = data[done : done + _PIECE] if done < total else b""
    flush = getattr(w, "flush", None)
    if callable(flush):
        flush()


def check_path(path: str | os.PathLike[str], what: str = "path") -> str:
    """Check now that a profile can be written to ``path`` later; return it absolute.

    Errors come here, when a profile starts, not when it ends with its
    samples: an empty path (ValueError), a directory or a path ending in a
    separator (IsADirectoryError), a missing directory (FileNotFoundError),
    an existing file we may not write (PermissionError, as ``open()``), a
    directory where no file can be made (the OSError of trying: ``/proc``,
    read-only mounts) unless the file exists and is writable in place.
    The path is made absolute now: a later ``chdir`` does not move it.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str or os.PathLike[str] path, not bytes")
    if not text:
        raise ValueError(f"{what} is an empty path")
    if text.endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, f"{what} names a directory", text)
    real = os.path.realpath(text)
    st = _stat_or_none(real)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{what} is a directory", text)
    if st is not None and not os.access(real, os.W_OK):
        raise PermissionError(errno.EACCES, f"{what} is not writable", text)
    if st is not None and not stat.S_ISREG(st.st_mode):
        return os.path.abspath(text)  # a device or FIFO: written in place
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"{what}: directory does not exist", directory)
    try:
        fd, probe = _create_temp(directory)
    except OSError as exc:
        if st is not None:
            return os.path.abspath(text)  # the file itself is writable: in place
        raise type(exc)(exc.errno, f"{what}: cannot create a file in {directory}: "
                        f"{exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return os.path.abspath(text)


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` the way a careful tool does.

    * A regular file (or a new one) is replaced all at once: a temporary
      file in the same directory, then a rename, so a reader never sees
      half a profile and a failed write leaves the old file as it was.
      Where the directory does not let us make or rename files (a sticky
      ``/tmp`` holding a file another user made writable for us), the file
      is written in place, as ``open(path, "wb")`` would.
    * A symbolic link is followed: its target gets the profile, the link
      stays a link.  (A hard link is replaced, not written through.)
    * An existing file keeps its permission bits, setuid/setgid included
      (and owner, when we may set it); a new file gets ``0o666`` less the
      umask, as ``open()`` would make it.  Profiles hold command lines and
      label values, so a ``umask 077`` or a ``0600`` file must keep them
      private.  A file we may not write is an error, as for ``open()``.
    * A device or FIFO (``/dev/stdout``, a named pipe) is written in place:
      renaming over it would replace it with a regular file.  A FIFO with
      no reader is an error (ENXIO), not a wait that Ctrl-C cannot end.
    """
    real = os.path.realpath(os.fspath(path))
    st = _stat_or_none(real)
    if st is not None and not os.access(real, os.W_OK):
        raise PermissionError(errno.EACCES, "Permission denied", real)
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(real, data, fifo=stat.S_ISFIFO(st.st_mode))
        return
    try:
        fd, tmp = _create_temp(os.path.dirname(real))
    except OSError:
        if st is None:
            raise
        _write_in_place(real, data, fifo=False)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            if st is not None:
                # Before any data is in it: the old file's owner, then its mode
                # (changing the owner clears setuid and setgid bits).
                try:
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                except OSError:
                    pass  # not ours to give away: the file becomes ours
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
            write_all(f, data)
        try:
            os.replace(tmp, real)
        except PermissionError:
            if st is None:
                raise
            os.unlink(tmp)
            _write_in_place(real, data, fifo=False)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_in_place(path: str, data: bytes, *, fifo: bool) -> None:
    """Open ``path`` for writing and write ``data`` (a FIFO must have a reader now)."""
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    if fifo:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "no process is reading the FIFO", path) from None
            raise
        os.set_blocking(fd, True)
    else:
        fd = os.open(path, flags | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        write_all(f, data)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _create_temp(directory: str) -> tuple[int, str]:
    """A new empty file in ``directory`` made with mode 0o666, so the umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(directory, f".pyproperf-{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def open_target(target: object, what: str = "path") -> str | IO[bytes]:
    """Accept a path (str or PathLike) or a binary writer; check it now, write later."""
    if isinstance(target, (str, os.PathLike)):
        return check_path(target, what)
    return check_writer(target, what)  # type: ignore[return-value]


def deliver(target: str | os.PathLike[str] | BinaryWriter, data: bytes) -> None:
    """Write a finished profile to a path (see ``write_file``) or to a binary writer."""
    if isinstance(target, (str, os.PathLike)):
        write_file(target, data)
    else:
        write_all(target, data)
