"""Opening files a user named, without letting the name freeze or flood the reader.

A path in a request (a pipeline file, a source, a sink's target) may name anything: a FIFO, whose
`open()` blocks until a writer appears and whose reads block forever; `/dev/zero` or
`/dev/urandom`, which never end; a directory; a socket. Every read of a user-supplied path goes
through `open_regular`:

- the file is opened with `O_NONBLOCK` (a FIFO then opens at once instead of waiting for a
  writer; for a regular file the flag changes nothing);
- its type is checked on the open descriptor (`fstat`), so a swap between a check and the open
  cannot slip a FIFO past it; anything but a regular file raises `NotRegularFileError`;
- with `max_bytes`, a larger file raises `FileTooLargeError` before a byte is read, and
  `read_regular_bytes` never reads more than `max_bytes + 1` bytes even if the file grows.

Both errors are `OSError`s (callers that already handle "cannot read this file" keep working)
and carry a one-line message naming the path. Pure standard library; usable from any thread.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = [
    "FileTooLargeError",
    "NotRegularFileError",
    "check_regular",
    "open_regular",
    "read_regular_bytes",
]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """The path names something other than a regular file (FIFO, device, directory, socket)."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(errno.EINVAL, f"{os.fspath(path)} is {kind}, not a regular file")
        self.filename = os.fspath(path)
        self.kind = kind

    def __str__(self) -> str:
        return str(self.strerror)


class FileTooLargeError(OSError):
    """The file is larger than the reader allows."""

    def __init__(self, path: str | os.PathLike[str], size: int, max_bytes: int) -> None:
        super().__init__(
            errno.EFBIG, f"{os.fspath(path)} is larger than {max_bytes} bytes ({size} bytes)"
        )
        self.filename = os.fspath(path)
        self.size = size
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"  # pragma: no cover - door, whiteout: nothing Linux makes


def check_regular(path: str | os.PathLike[str], fd: int, max_bytes: int | None = None) -> int:
    """Check the open descriptor `fd` of `path`: a regular file, at most `max_bytes` long.
    Returns its size."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, _kind(st.st_mode))
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileTooLargeError(path, st.st_size, max_bytes)
    return st.st_size


def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (at most `max_bytes` long).

    Raises `NotRegularFileError`, `FileTooLargeError`, or the `OSError` of the open itself
    (missing file, permission...). Never blocks on a FIFO. The caller closes the file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        check_regular(path, fd, max_bytes)
        # Back to blocking mode: harmless for a regular file, and what buffered readers expect.
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The whole content of the regular file `path`, refusing one over `max_bytes` — also one
    that grew past it after the size check (at most `max_bytes + 1` bytes are ever read)."""
    with open_regular(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(path, len(data), max_bytes)
    return data
