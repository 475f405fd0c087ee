"""One server per data directory: an exclusive OS lock on `<data-dir>/runwire.lock`.

`runwire serve` takes the lock before it opens the store or runs recovery, and holds it for
the life of the process (contract section 1). It is `flock(LOCK_EX | LOCK_NB)` on an open
descriptor: the kernel releases it when the process ends however it ends (kill -9 included),
so there is never a stale lock to clean up by hand. The file itself stays; it holds the pid of
the last holder, which a second server names in its one-line refusal.

A second server on the same directory must touch nothing: the lock file is opened without
truncation, and the pid is written only once the lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "DataDirLock", "DataDirLocked"]

LOCK_NAME = "runwire.lock"
_MAX_PID_BYTES = 32  # a pid is a few digits; never read more than this from the file


class DataDirLocked(Exception):
    """Another live process holds the lock on `data_dir`; `pid` is its pid (None if unknown)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"data directory {data_dir} is in use by another runwire server ({holder})"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """The lock on one data directory. `acquire()` raises `DataDirLocked`; `release()` (or the
    process ending) frees it. Not re-entrant: a second `acquire()` in the same process is
    refused like any other holder (flock locks belong to open files, not processes)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting and record our pid in the file."""
        # O_CLOEXEC: a child process (a package installer, say) must not inherit the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # The pid is informative only (the lock is what excludes): on a full disk the write may
        # fail, and start-up reports the full disk itself a moment later.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def release(self) -> None:
        """Give the lock up (idempotent). The pid stays in the file: it is only a hint."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> DataDirLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
