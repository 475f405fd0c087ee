"""Run directories: everything one run leaves on disk (contract section 7).

```
<run_id>/
  run-request.json   what was asked (written once, atomically)
  events.ndjson      one CloudEvents envelope per line, appended and flushed as events happen
  summary.json       the run's outcome (atomic; also for failed, cancelled, interrupted runs)
  manifest.json      {"run_id", "artifacts": [{"path", "size", "sha256", "media_type"}]}
  artifacts/         files written by the run's writer steps
```

A crash can tear the last line of `events.ndjson`; `read_ndjson` ignores such a line.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import secrets
import threading
import time
from pathlib import Path
from typing import IO, Any

from .atomic import fsync_dir, write_json_atomic

REQUEST = "run-request.json"
SUMMARY = "summary.json"
EVENTS = "events.ndjson"
MANIFEST = "manifest.json"
ARTIFACTS = "artifacts"

# Media types mimetypes does not know (or gets wrong) for our artifacts.
_MEDIA_TYPES = {
    ".h5": "application/x-hdf5",
    ".hdf5": "application/x-hdf5",
    ".nxs": "application/x-hdf5",
    ".csv": "text/csv",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".npy": "application/octet-stream",
    ".png": "image/png",
    ".txt": "text/plain",
}


def new_run_id() -> str:
    """A run id sortable by creation time (UTC, to the second), then random: `r-20261123T040512-3fa9c2d1`."""
    return "r-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def media_type(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _MEDIA_TYPES:
        return _MEDIA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(str(path))
    return guessed or "application/octet-stream"


def artifact_paths(root: str | Path) -> list[str]:
    """The files under `root`, as sorted POSIX paths relative to it; writers' temporary files
    (hidden, or ending in `.tmp`) are left out. A missing `root` has none."""
    root = Path(root)
    found: list[str] = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") or name.endswith(".tmp"):
                continue  # a writer's temporary file
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class RunDirectory:
    """One run's directory. Appending events is thread-safe (one lock, one open file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run_id = self.path.name
        # Packages the run used (`{name, version, vendored}`), listed in `manifest.json`.
        self.packages: list[dict[str, Any]] = []
        self.artifacts_dir = self.path / ARTIFACTS
        self._events: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def request_path(self) -> Path:
        return self.path / REQUEST

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def create(self) -> RunDirectory:
        """Create the directory and its `artifacts/` (idempotent)."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.path.parent)
        return self

    def write_request(self, obj: Any) -> None:
        write_json_atomic(self.request_path, obj)

    def write_summary(self, obj: Any) -> None:
        write_json_atomic(self.summary_path, obj)

    def append_event(self, raw: bytes) -> None:
        """Append one event (an encoded envelope, no newline) as one line, flushed at once.

        Flushed to the OS, not fsynced: a process crash loses nothing; a power loss may lose
        the tail, which a torn-line-tolerant reader copes with.
        """
        line = raw.rstrip(b"\n") + b"\n"
        with self._lock:
            if self._events is None:
                self._events = open_for_append(self.events_path)
            self._events.write(line)
            self._events.flush()

    def close(self) -> None:
        """Close the events file (fsyncing it). Appending again reopens it."""
        with self._lock:
            if self._events is not None:
                try:
                    self._events.flush()
                    os.fsync(self._events.fileno())
                finally:
                    self._events.close()
                    self._events = None

    def manifest(self) -> dict[str, Any]:
        """The manifest of the files now under `artifacts/` (paths relative to it, sorted)."""
        entries: list[dict[str, Any]] = []
        for rel in artifact_paths(self.artifacts_dir):
            full = self.artifacts_dir / rel
            entries.append({"path": rel, "size": full.stat().st_size, "sha256": sha256_file(full),
                            "media_type": media_type(full)})  # fmt: skip
        out: dict[str, Any] = {"run_id": self.run_id, "artifacts": entries}
        if self.packages:
            out["packages"] = self.packages
        return out

    def write_manifest(self) -> dict[str, Any]:
        """Write `manifest.json` atomically; returns it."""
        manifest = self.manifest()
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_for_append(path: str | Path) -> IO[bytes]:
    """Open an NDJSON journal for appending, first cutting off a torn last line.

    A crash mid-append leaves a line without its newline. Appending after it would glue the next
    event onto the fragment and lose both; the fragment was never a complete event (lines are
    written before they are published), so it is dropped.
    """
    handle = open(path, "ab")  # noqa: SIM115 - the caller owns it
    try:
        end = handle.tell()
        if end:
            with open(path, "rb") as reader:
                reader.seek(max(0, end - 1))
                if reader.read(1) != b"\n":
                    keep = _end_of_last_line(reader, end)
                    handle.truncate(keep)
                    handle.seek(keep)
    except BaseException:
        handle.close()
        raise
    return handle


def _end_of_last_line(reader: IO[bytes], end: int, chunk: int = 65536) -> int:
    """Offset just after the last newline before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        reader.seek(start)
        block = reader.read(pos - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def read_ndjson(path: str | Path) -> list[bytes]:
    """The complete lines of an NDJSON file (without newlines; blank lines skipped).

    A last line without its newline is a torn write (a crash mid-append) and is ignored.
    A missing file reads as empty.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # The element after the last newline is b"" for a complete file, else the torn tail.
    return [line for line in lines[:-1] if line.strip()]
