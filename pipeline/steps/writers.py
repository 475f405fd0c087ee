"""Writers of reduced curves into the run's artifacts directory: NXcanSAS HDF5 and CSV.

Each file is written under a temporary name in the same directory and renamed into place, so
a reader (or a crash) never sees half a file. The output is the file name relative to the
artifacts directory.

The NXcanSAS file also records its provenance: the run id in `/sasentry01/run`, the curve's
`Mask` (`@mask`: 1 where a point is not to be used), and a `sasprocess01` group naming
runwire's version, the pipeline and every source file with its sha256.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import h5py
import msgspec
import numpy as np

from .. import nxcansas
from ..atomic import replace_atomically
from ..errors import StepFailure
from ..provenance import source_sha256
from ..step import SourceSpec, Step, StepContext, register
from ..uarray import Curve


@functools.cache
def runwire_version() -> str:
    """The installed distribution's version ("unknown" when running from a bare checkout)."""
    try:
        return importlib.metadata.version("runwire")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _target(ctx: StepContext, filename: str) -> tuple[Path, str]:
    if ctx.artifacts_dir is None:
        raise StepFailure("this run has no artifacts directory to write into")
    rel = PurePosixPath(filename)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in filename:
        raise StepFailure(f"filename {filename!r} must be a relative path inside the artifacts")
    path = Path(ctx.artifacts_dir, *rel.parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, rel.as_posix()


def _curve(inputs: Mapping[str, Any]) -> Curve:
    curve = inputs.get("curve")
    if not isinstance(curve, Curve):
        raise StepFailure(f"input curve must be a reduced curve, not {type(curve).__name__}")
    return curve


def _add_provenance(
    f: h5py.File, curve: Curve, ctx: StepContext, sources: Mapping[str, SourceSpec]
) -> None:
    """Add `Mask`/`@mask` and `sasprocess01` to a file being written by
    `nxcansas.write_nxcansas` (its `extra` callback: the file is created and opened once)."""
    entry = f["sasentry01"]
    data = entry["sasdata01"]
    # NXcanSAS: the mask has the shape of I; True = this point is not to be used.
    excluded = (np.asarray(curve.n_pixels) == 0) | ~np.isfinite(np.asarray(curve.i))
    # Stored as int8 0/1: pynxtools' validator reads the field as NX_NUMBER.
    nxcansas.put_dataset(data, "Mask", excluded.astype(np.int8))
    nxcansas.put_attr(data, "mask", "Mask")
    process = entry.create_group("sasprocess01")
    nxcansas.put_attr(process, "NX_class", "NXprocess")
    nxcansas.put_attr(process, "canSAS_class", "SASprocess")
    nxcansas.put_dataset(process, "name", "runwire")
    nxcansas.put_dataset(process, "date", datetime.now(UTC).isoformat(timespec="seconds"))
    label = ctx.run
    nxcansas.put_dataset(
        process,
        "description",
        f"runwire {runwire_version()}, pipeline {label.pipeline_name} "
        f"{label.pipeline_version}, run {label.run_id or '(none)'}",
    )
    nxcansas.put_dataset(process, "runwire_version", runwire_version())
    nxcansas.put_dataset(process, "pipeline", label.pipeline_name)
    nxcansas.put_dataset(process, "pipeline_version", label.pipeline_version)
    for ref in sorted(sources):
        location = os.path.abspath(sources[ref].location)
        nxcansas.put_dataset(process, f"source_{ref}", location)
        nxcansas.put_dataset(
            process, f"source_{ref}_sha256", source_sha256(location, ctx.raise_if_cancelled)
        )


@register
class WriteNXcanSAS(Step):
    """Write a curve as NXcanSAS HDF5: `/sasentry01/sasdata01/{Q,I,Idev,Mask}`, Q in 1/nm.

    `/sasentry01/run` holds the run id. `Mask` (named by `sasdata01/@mask`) is True where a
    point is not to be used. `sasentry01/sasprocess01` names runwire's version, the pipeline's
    name and version, and each source file (`source_REF`) with its sha256
    (`source_REF_sha256`).
    """

    name = "write.nxcansas"
    input_names = ("curve",)
    # The runner starts hashing the run's sources when the run starts (`pipeline.provenance`).
    prefetch_source_hashes = True
    output_names = ("path",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        filename: Annotated[
            str, msgspec.Meta(description="File name inside the run's artifacts directory.")
        ] = "reduced.h5"
        title: Annotated[str, msgspec.Meta(description="Entry title.")] = "runwire reduction"

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, WriteNXcanSAS.Params)
        curve = _curve(inputs)
        path, rel = _target(ctx, p.filename)
        run_id = ctx.run.run_id or ""

        def write(tmp: Path) -> None:
            nxcansas.write_nxcansas(
                tmp, curve.q, curve.i, curve.idev, title=p.title, run=run_id,
                extra=lambda f: _add_provenance(f, curve, ctx, ctx.sources),
            )  # fmt: skip

        replace_atomically(path, write)
        return {"path": rel}


@register
class WriteCSV(Step):
    """Write a curve as CSV with a header line `q_1/nm,I,Idev,n_pixels`."""

    name = "write.csv"
    input_names = ("curve",)
    output_names = ("path",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        filename: Annotated[
            str, msgspec.Meta(description="File name inside the run's artifacts directory.")
        ] = "reduced.csv"

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, WriteCSV.Params)
        curve = _curve(inputs)
        path, rel = _target(ctx, p.filename)
        table = np.column_stack([curve.q, curve.i, curve.idev, curve.n_pixels])

        def write(tmp: Path) -> None:
            np.savetxt(
                tmp,
                table,
                delimiter=",",
                header="q_1/nm,I,Idev,n_pixels",
                comments="",
                fmt=["%.10g", "%.10g", "%.10g", "%d"],
            )

        replace_atomically(path, write)
        return {"path": rel}
