"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def temp_path_beside(target: Path) -> Path:
    """A new, empty, uniquely named file next to `target` (same directory, so a rename is atomic).

    Not `tempfile.mkstemp`: its files are 0600, which the rename would hand on to the final file,
    so colleagues (other accounts of the beamline group) could not read summaries, artifacts or
    delivered results. Here the process umask decides, as for any file a program writes.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


def replace_atomically(target: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp_path)`, then rename the temp file onto `target`; on any failure the temp
    file is removed and `target` is left as it was. A reader never sees half a file."""
    target = Path(target)
    tmp = temp_path_beside(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file in the same directory, fsync it, rename it over `path`, and
    fsync the directory so that the rename itself survives a power loss."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)
    fsync_dir(Path(path).parent)


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
