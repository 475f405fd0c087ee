"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, rename it over `path`, and
    fsync the directory so that the rename itself survives a power loss."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Encode `obj` as JSON (msgspec: Structs, dataclasses, dicts...) and write it atomically."""
    write_bytes_atomic(path, msgspec.json.format(_encoder.encode(obj), indent=2) + b"\n")


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (makes a rename or a new file in it durable). No-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. some network filesystems
        pass
    finally:
        os.close(fd)
