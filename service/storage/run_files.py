"""The files that close a run directory: `manifest.json` and `summary.json`, written together.

Each is written atomically (temp file, rename: a reader sees the old file or the new one, never
a part), and neither is fsynced: these writes sit between a run's last step and its
`run.finished`, where each fsync cost about 1 ms (it commits the filesystem journal, and with it
the run's artifacts and event journal). Durability comes from the store instead: the same
commit that records the run's final status saves the manifest (`SessionStore.save_run`), and
restart recovery rewrites either file from the store when a power loss took it
(`service.runtime.recovery`). A process crash loses nothing (the files are in the page cache).
Synchronous; called from the I/O thread.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from pipeline.atomic import replace_atomically
from pipeline.rundir import RunDirectory

__all__ = ["write_final_files"]

_encoder = msgspec.json.Encoder()


def _write(tmp: Path, *, data: bytes) -> None:
    tmp.write_bytes(data)


def write_final_files(run_dir: RunDirectory, manifest: Any, summary: Any) -> None:
    """Write `manifest.json` then `summary.json`, each atomically, not fsynced (see above)."""
    for path, obj in ((run_dir.manifest_path, manifest), (run_dir.summary_path, summary)):
        data = msgspec.json.format(_encoder.encode(obj), indent=2) + b"\n"
        replace_atomically(path, partial(_write, data=data))
