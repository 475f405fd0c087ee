"""Consistency checks between sources: a background or dark frame taken with another geometry
than the sample's would be subtracted pixel by pixel from the wrong q, silently."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from ..errors import StepFailure
from ..step import Step, StepContext, register
from .io import SourceRef

GEOMETRY_MISMATCH = "GEOMETRY_MISMATCH"

# Keys of the `nexus.detector_geometry` dict, with the names users know them by (the NeXus
# field names) and their units, in the order a mismatch is reported.
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("shape", "frame shape", ""),
    ("distance_m", "distance", " m"),
    ("pixel_size_x_m", "x_pixel_size", " m"),
    ("pixel_size_y_m", "y_pixel_size", " m"),
    ("beam_center_x_px", "beam_center_x", " px"),
    ("beam_center_y_px", "beam_center_y", " px"),
    ("wavelength_nm", "wavelength", " nm"),
)


class GeometryMismatch(StepFailure):
    """A source's detector geometry is not the reference's. The message starts with
    `GEOMETRY_MISMATCH:` and names the source and every field that differs."""


def geometry_differences(
    geometry: Mapping[str, Any], reference: Mapping[str, Any], rtol: float
) -> list[str]:
    """One `field (value vs reference)` string per field that differs, in `_FIELDS` order.

    Shapes must be equal; numbers equal within `rtol` relative tolerance (two zeros are equal).
    """
    out: list[str] = []
    for key, label, unit in _FIELDS:
        got, want = geometry.get(key), reference.get(key)
        if key == "shape":
            if list(got or ()) != list(want or ()):
                out.append(f"{label} ({_shape(got)} vs {_shape(want)})")
        elif got is None or want is None:
            if got is not want:
                out.append(f"{label} ({got} vs {want})")
        elif not math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=0.0):
            out.append(f"{label} ({float(got):.9g}{unit} vs {float(want):.9g}{unit})")
    return out


def _shape(shape: Any) -> str:
    return "x".join(str(n) for n in shape) if shape else str(shape)


@register
class GeometryCheck(Step):
    """Fail the run when a source's detector geometry differs from the reference's (the sample's).

    Compares frame shape, distance, pixel sizes, beam centre and wavelength (relative tolerance
    `rtol`) of two `nexus.detector_geometry` outputs. The error (`GEOMETRY_MISMATCH: ...`) names
    the source and every field that differs, with both values. The output is the checked
    `geometry` itself, so steps that need it only once it is checked take it from here. An
    absent `geometry` (an optional source left out) passes as None.
    """

    name = "geometry.check"
    input_names = ("reference",)
    optional_inputs = ("geometry",)
    output_names = ("geometry",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        rtol: Annotated[
            float, msgspec.Meta(ge=0, description="Relative tolerance for the numeric fields.")
        ] = 1e-6

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, GeometryCheck.Params)
        geometry, reference = inputs.get("geometry"), inputs.get("reference")
        if geometry is None or reference is None:
            return {"geometry": geometry}
        differences = geometry_differences(geometry, reference, p.rtol)
        if differences:
            raise GeometryMismatch(
                f"{GEOMETRY_MISMATCH}: source {p.source!r} was not taken with the sample's geometry:"
                f" {', '.join(differences)} (relative tolerance {p.rtol:g})"
            )
        return {"geometry": geometry}
