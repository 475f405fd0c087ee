"""Writers of reduced curves into the run's artifacts directory: NXcanSAS HDF5 and CSV.

Each file is written under a temporary name in the same directory and renamed into place, so
a reader (or a crash) never sees half a file. The output is the file name relative to the
artifacts directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import msgspec
import numpy as np

from .. import hdf5io
from ..atomic import replace_atomically
from ..errors import StepFailure
from ..step import Step, StepContext, register
from ..uarray import Curve


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


@register
class WriteNXcanSAS(Step):
    """Write a curve as NXcanSAS HDF5: `/sasentry01/sasdata01/{Q,I,Idev}`, Q in 1/nm."""

    name = "write.nxcansas"
    input_names = ("curve",)
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
        replace_atomically(
            path,
            lambda tmp: hdf5io.write_nxcansas(
                tmp, curve.q, curve.i, curve.idev, title=p.title, run=ctx.step_id
            ),
        )
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
