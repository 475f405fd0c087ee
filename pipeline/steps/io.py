"""Reading steps: HDF5 datasets and attributes, `.npy` arrays, JSON values, NeXus detector geometry.

A reader whose `source` names a source that is not registered (an optional source left out)
returns None for every output; steps downstream pass that absence on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import numpy as np

from .. import hdf5io
from ..errors import SourceError
from ..safeio import open_regular, read_regular_bytes
from ..step import Step, StepContext, register
from ..uarray import UArray
from .sources import HDF5_TYPES, JSON_TYPES, NPY_TYPES, source_path

# A JSON source is metadata (a calibration, a sample table): anything larger is a mistake.
MAX_JSON_BYTES = 64 << 20

SourceRef = Annotated[str, msgspec.Meta(description="Source ref to read from (e.g. `sample`).")]


@register
class Hdf5Read(Step):
    """Read an HDF5 dataset (a 3-D stack of frames can be summed to one 2-D frame).

    With `poisson: true` the output is a `UArray` of counts with Poisson variance (float32,
    float64 for counts beyond 2**24); otherwise the array as stored. A missing optional source gives None.
    """

    name = "hdf5.read"
    output_names = ("data",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        dataset: Annotated[str, msgspec.Meta(description="Path of the dataset in the file.")]
        sum_frames: Annotated[
            bool, msgspec.Meta(description="Sum a 3-D dataset over its first axis.")
        ] = True
        poisson: Annotated[
            bool, msgspec.Meta(description="Return counts with Poisson variance (a UArray).")
        ] = False
        optional: Annotated[
            bool, msgspec.Meta(description="A missing dataset gives None instead of an error.")
        ] = False

    def read_ahead_items(self) -> tuple[tuple[str, str, bool], ...]:
        p = self.params
        assert isinstance(p, Hdf5Read.Params)
        return ((p.source, p.dataset, p.sum_frames),)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, Hdf5Read.Params)
        path = source_path(ctx, p.source, HDF5_TYPES)
        if path is None:
            return {"data": None}
        with hdf5io.open_hdf5(path) as handle:
            if p.optional and p.dataset not in handle:
                return {"data": None}
            array = hdf5io.read_array(handle, p.dataset, sum_frames=p.sum_frames)
        if p.poisson:
            # The array is ours (just read): hand it over rather than copy it.
            return {"data": UArray.poisson(array, copy=False)}
        array.flags.writeable = False
        return {"data": array}


@register
class Hdf5Attr(Step):
    """Read one attribute of an HDF5 group or dataset (strings come back as str)."""

    name = "hdf5.attr"
    output_names = ("value",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        path: Annotated[str, msgspec.Meta(description="Path of the group or dataset.")]
        attr: Annotated[str, msgspec.Meta(description="Attribute name.")]

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, Hdf5Attr.Params)
        path = source_path(ctx, p.source, HDF5_TYPES)
        if path is None:
            return {"value": None}
        with hdf5io.open_hdf5(path) as handle:
            return {"value": hdf5io.read_attr(handle, p.path, p.attr)}


@register
class NpyRead(Step):
    """Read a numpy `.npy` file (no pickles)."""

    name = "npy.read"
    output_names = ("data",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, NpyRead.Params)
        path = source_path(ctx, p.source, NPY_TYPES)
        if path is None:
            return {"data": None}
        try:
            # Non-blocking, type-checked open: a FIFO or device named as the source is refused.
            with open_regular(path) as handle:
                array = np.load(handle, allow_pickle=False)
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: no such file") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise SourceError(f"{path}: not a readable .npy file ({exc})") from exc
        if not isinstance(array, np.ndarray):
            raise SourceError(f"{path}: holds several arrays (.npz); give one .npy file")
        array.flags.writeable = False
        return {"data": array}


@register
class JsonRead(Step):
    """Read a JSON file, optionally one member of it by a dotted key path (`a.b.0`)."""

    name = "json.read"
    output_names = ("value",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        key: Annotated[
            str | None, msgspec.Meta(description="Dotted path into the document; whole if null.")
        ] = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, JsonRead.Params)
        path = source_path(ctx, p.source, JSON_TYPES)
        if path is None:
            return {"value": None}
        try:
            value: Any = json.loads(read_regular_bytes(path, MAX_JSON_BYTES))
        except FileNotFoundError as exc:
            raise SourceError(f"{path}: no such file") from exc
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: not readable JSON ({exc})") from exc
        if p.key:
            for part in p.key.split("."):
                if isinstance(value, dict) and part in value:
                    value = value[part]
                elif (
                    isinstance(value, list)
                    and part.lstrip("-").isdigit()
                    and -len(value) <= int(part) < len(value)
                ):
                    value = value[int(part)]
                else:
                    raise SourceError(f"{path}: no member {p.key!r} (stopped at {part!r})")
        return {"value": value}


@register
class DetectorGeometry(Step):
    """Read detector geometry and exposure metadata from a NeXus file, honouring `units`.

    Outputs two small dicts. `geometry`: `distance_m`, `pixel_size_x_m`, `pixel_size_y_m`,
    `beam_center_x_px`, `beam_center_y_px` (x = column, y = row), `wavelength_nm`, `shape`
    ([rows, columns] of the frame). `exposure`: `count_time_s`, `transmission` (1 when absent).
    Keeping them apart means a new sample with another count time leaves `geometry` unchanged,
    so the steps that depend only on it are not rerun.
    """

    name = "nexus.detector_geometry"
    output_names = ("geometry", "exposure")

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        detector: Annotated[
            str, msgspec.Meta(description="NXdetector group holding distance, pixel sizes, ...")
        ] = "/entry/instrument/detector"
        wavelength: Annotated[
            str, msgspec.Meta(description="Wavelength dataset (units m, nm or Angstrom).")
        ] = "/entry/instrument/monochromator/wavelength"
        frame: Annotated[
            str, msgspec.Meta(description="Frame dataset whose last two axes give the shape.")
        ] = "/entry/data/data"
        transmission: Annotated[
            str, msgspec.Meta(description="Optional sample transmission dataset (default 1).")
        ] = "/entry/sample/transmission"

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, DetectorGeometry.Params)
        path = source_path(ctx, p.source, HDF5_TYPES)
        if path is None:
            return {"geometry": None, "exposure": None}
        det = p.detector.rstrip("/")
        with hdf5io.open_hdf5(path) as h:
            frame = hdf5io.get_dataset(h, p.frame)
            if len(frame.shape) not in (2, 3):
                raise SourceError(f"{path}: dataset {p.frame} is not 2-D or 3-D ({frame.shape})")
            geometry = {
                "distance_m": hdf5io.read_quantity(h, f"{det}/distance", hdf5io.LENGTH_TO_M),
                "pixel_size_x_m": hdf5io.read_quantity(
                    h, f"{det}/x_pixel_size", hdf5io.LENGTH_TO_M
                ),
                "pixel_size_y_m": hdf5io.read_quantity(
                    h, f"{det}/y_pixel_size", hdf5io.LENGTH_TO_M
                ),
                "beam_center_x_px": hdf5io.read_scalar(h, f"{det}/beam_center_x"),
                "beam_center_y_px": hdf5io.read_scalar(h, f"{det}/beam_center_y"),
                "wavelength_nm": hdf5io.read_quantity(h, p.wavelength, hdf5io.WAVELENGTH_TO_NM),
                "shape": [int(n) for n in frame.shape[-2:]],
            }
            transmission = hdf5io.read_scalar(h, p.transmission) if p.transmission in h else 1.0
            exposure = {
                "count_time_s": hdf5io.read_quantity(
                    h, f"{det}/count_time", hdf5io.TIME_TO_S, default_units="s"
                ),
                "transmission": transmission,
            }
        for key in ("distance_m", "pixel_size_x_m", "pixel_size_y_m", "wavelength_nm"):
            if not geometry[key] > 0:  # type: ignore[operator]
                raise SourceError(f"{path}: {key} must be positive, got {geometry[key]}")
        if not exposure["count_time_s"] > 0:
            raise SourceError(f"{path}: {det}/count_time must be positive")
        if not 0 < exposure["transmission"] <= 1:
            raise SourceError(f"{path}: {p.transmission} must be in (0, 1], got {transmission}")
        return {"geometry": geometry, "exposure": exposure}
