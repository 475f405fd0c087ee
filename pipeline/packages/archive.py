"""Unpacking an uploaded package zip safely.

Everything is checked from the zip's central directory before a byte is written: a member
whose name is absolute, contains `..` or a drive, is a symlink (or any non-regular file), more
than `max_files` members, or more than `max_bytes` once unpacked (declared sizes) is refused
with `UnsafeArchiveError`. Writing then counts the bytes actually inflated, so a member that
lies about its size (a zip bomb) is stopped at the limit too. On any failure the destination
is removed: nothing is left behind.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .errors import UnsafeArchiveError

__all__ = ["MAX_FILES", "MAX_UNPACKED_BYTES", "extract_zip"]

MAX_FILES = 2000
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
_CHUNK = 1 << 16


def _member_path(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(
            f"zip member {name!r}: backslashes and NUL are not allowed in names"
        )
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (p.parts and ":" in p.parts[0]):
        raise UnsafeArchiveError(f"zip member {name!r} has an absolute path")
    if ".." in p.parts:
        raise UnsafeArchiveError(f"zip member {name!r} escapes the package folder ('..')")
    return p


def check_zip(zf: zipfile.ZipFile, *, max_files: int = MAX_FILES,
              max_bytes: int = MAX_UNPACKED_BYTES) -> list[zipfile.ZipInfo]:  # fmt: skip
    """The members to unpack, after every check that needs no writing."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise UnsafeArchiveError(
            f"zip has {len(infos)} members, more than the limit of {max_files}"
        )
    total = 0
    for info in infos:
        _member_path(info.filename)
        mode = info.external_attr >> 16
        # No file-type bits (zips written on Windows or by `writestr`) means a plain file.
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
            raise UnsafeArchiveError(f"zip member {info.filename!r} is {kind}")
        total += info.file_size
        if total > max_bytes:
            raise UnsafeArchiveError(f"zip unpacks to more than the limit of {max_bytes} bytes")
    return infos


def extract_zip(archive: Path, dest: Path, *, max_files: int = MAX_FILES,
                max_bytes: int = MAX_UNPACKED_BYTES) -> Path:  # fmt: skip
    """Unpack `archive` into the new directory `dest` (must not exist); returns the package
    folder inside it (`dest` itself, or its single top-level directory)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"not a readable zip: {exc}") from None
    dest.mkdir(parents=True)
    try:
        with zf:
            infos = check_zip(zf, max_files=max_files, max_bytes=max_bytes)
            written = 0
            for info in infos:
                target = dest.joinpath(*_member_path(info.filename).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchiveError(
                                f"zip unpacks to more than the limit of {max_bytes} bytes"
                            )
                        out.write(chunk)
    except UnsafeArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise UnsafeArchiveError(f"cannot unpack the zip: {exc}") from None
    entries = [e for e in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest
