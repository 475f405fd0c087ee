"""Sinks: where a successful run's reduced curve is delivered, besides its run directory.

`hdf5` copies the run's NXcanSAS artifact; `csv` writes its `Q, I, Idev` columns. Files are
written to a temporary name in the target directory and renamed, so a reader never sees half a
file. A sink location that is an existing directory receives `<session>_<run_id>.<ext>`.
Runs in the run's worker thread (h5py and file I/O).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

import h5py
import numpy as np

from pipeline.atomic import replace_atomically
from service.contract.records import SourceRecord
from service.runtime.validation import confine

__all__ = ["SinkError", "find_nxcansas", "write_sinks"]

NXCANSAS_DATA = "/sasentry01/sasdata01"


class SinkError(Exception):
    """A sink could not be written; `ref` names it."""

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(f"sink {ref!r}: {message}")
        self.ref = ref


def find_nxcansas(artifacts_dir: Path, artifacts: Iterable[str]) -> Path | None:
    """The run's NXcanSAS file: `reduced.h5` if present, else the first `.h5` artifact."""
    h5 = [a for a in artifacts if a.endswith((".h5", ".hdf5", ".nxs"))]
    name = min(h5, key=lambda a: (Path(a).name != "reduced.h5", a), default=None)
    return None if name is None else artifacts_dir / name


def _target(location: str, session_id: str, run_id: str, ext: str) -> Path:
    path = Path(location)
    return path / f"{session_id}_{run_id}.{ext}" if path.is_dir() else path


def write_csv(source: Path, tmp: Path) -> None:
    """`Q,I,Idev` columns of an NXcanSAS file, with repr-exact floats (no precision lost)."""
    with h5py.File(source, "r") as f:
        group = f[NXCANSAS_DATA]
        columns = [np.asarray(group[name][()], dtype=np.float64) for name in ("Q", "I", "Idev")]
    table = np.column_stack(columns)
    np.savetxt(tmp, table, delimiter=",", header="Q,I,Idev", comments="", fmt="%.17g")


def write_sinks(
    sinks: Mapping[str, SourceRecord],
    *,
    artifacts_dir: Path,
    artifacts: Iterable[str],
    session_id: str,
    run_id: str,
    write_roots: Iterable[Path],
) -> list[str]:
    """Write every sink; returns the written paths. Raises `SinkError` on the first failure."""
    if not sinks:
        return []
    roots = tuple(write_roots)
    source = find_nxcansas(artifacts_dir, artifacts)
    written: list[str] = []
    for ref, sink in sinks.items():
        if source is None:
            raise SinkError(ref, "the run produced no NXcanSAS artifact to deliver")
        try:
            ext = "csv" if sink.type == "csv" else "h5"
            target = _target(sink.location, session_id, run_id, ext)
            # Confined again at write time: a symlink may have changed since the sink was set.
            confine(target, roots, what=f"sink {ref!r}")
            if sink.type == "csv":
                replace_atomically(target, partial(write_csv, source))
            else:
                replace_atomically(target, partial(shutil.copyfile, source))
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(ref, str(exc) or type(exc).__name__) from exc
        written.append(str(target))
    return written
