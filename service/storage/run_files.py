"""The files that close a run directory: `manifest.json` and `summary.json`, written together.

Each is written atomically (temp file, fsync, rename), and one fsync of the directory then makes
both renames durable: one fsync fewer than two `write_json_atomic` calls, on the path between a
run's last step and its `run.finished`. Synchronous; called from the I/O thread.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from pipeline.atomic import fsync_dir, replace_atomically
from pipeline.rundir import RunDirectory

__all__ = ["write_final_files"]

_encoder = msgspec.json.Encoder()


def _write_synced(tmp: Path, *, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_final_files(run_dir: RunDirectory, manifest: Any, summary: Any) -> None:
    """Write `manifest.json` then `summary.json` (each atomically), then fsync the directory."""
    for path, obj in ((run_dir.manifest_path, manifest), (run_dir.summary_path, summary)):
        data = msgspec.json.format(_encoder.encode(obj), indent=2) + b"\n"
        replace_atomically(path, partial(_write_synced, data=data))
    fsync_dir(run_dir.path)
