"""Normalisation of frames: dark current, counting time, flux and transmission, solid angle.

Frames are `UArray`s (plain arrays are taken as exact). Each step divides or subtracts and
propagates the variance (`pipeline.uarray`). An absent frame (an optional source not given)
gives an absent result, so the background branch of a pipeline simply disappears without one.
Exposure values come from the `exposure` dict of `nexus.detector_geometry`
(`count_time_s`, `transmission`) unless a param overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import numpy as np

from ..errors import StepFailure
from ..step import Step, StepContext, register
from ..uarray import UArray, as_uarray


def _exposure_value(
    exposure: Mapping[str, Any] | None, key: str, override: float | None, step: str
) -> float:
    if override is not None:
        value = float(override)
    elif exposure is not None and key in exposure:
        value = float(exposure[key])
    else:
        raise StepFailure(f"{step}: no {key} (give an exposure input or the param)")
    if not value > 0:
        raise StepFailure(f"{step}: {key} must be positive, got {value}")
    return value


@register
class NormaliseTime(Step):
    """Divide a frame by its counting time: counts become a count rate (1/s)."""

    name = "normalise.time"
    input_names = ("frame",)
    optional_inputs = ("exposure",)
    output_names = ("result",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        count_time: Annotated[
            float | None, msgspec.Meta(description="Counting time in s; overrides the exposure.")
        ] = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, NormaliseTime.Params)
        frame = inputs.get("frame")
        if frame is None:
            return {"result": None}
        t = _exposure_value(inputs.get("exposure"), "count_time_s", p.count_time, self.name)
        return {"result": as_uarray(frame, "frame").scale(1.0 / t)}


@register
class NormaliseTransmission(Step):
    """Divide a frame by the sample transmission (0 < T <= 1)."""

    name = "normalise.transmission"
    input_names = ("frame",)
    optional_inputs = ("exposure",)
    output_names = ("result",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        transmission: Annotated[
            float | None, msgspec.Meta(description="Transmission; overrides the exposure.")
        ] = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, NormaliseTransmission.Params)
        frame = inputs.get("frame")
        if frame is None:
            return {"result": None}
        exposure = inputs.get("exposure")
        override = p.transmission
        if override is None and (exposure is None or "transmission" not in exposure):
            override = 1.0  # no transmission measured: the beam was not attenuated
        t = _exposure_value(exposure, "transmission", override, self.name)
        return {"result": as_uarray(frame, "frame").scale(1.0 / t)}


@register
class NormaliseFlux(Step):
    """Divide a frame by the incident flux (monitor counts), from a `flux` input or the param."""

    name = "normalise.flux"
    input_names = ("frame",)
    optional_inputs = ("flux",)
    output_names = ("result",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        flux: Annotated[
            float | None, msgspec.Meta(description="Incident flux; used when no flux input.")
        ] = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, NormaliseFlux.Params)
        frame = inputs.get("frame")
        if frame is None:
            return {"result": None}
        flux_in = inputs.get("flux")
        if isinstance(flux_in, UArray | np.ndarray):
            return {"result": as_uarray(frame, "frame").divide(flux_in)}
        value = flux_in if flux_in is not None else p.flux
        if value is None:
            raise StepFailure(f"{self.name}: no flux (give a flux input or the param)")
        flux = _exposure_value(None, "flux", value, self.name)
        return {"result": as_uarray(frame, "frame").scale(1.0 / flux)}


@register
class NormaliseDark(Step):
    """Subtract a dark frame (same units as the frame, e.g. both count rates); absent dark: no-op."""

    name = "normalise.dark"
    input_names = ("frame",)
    optional_inputs = ("dark",)
    output_names = ("result",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        frame, dark = inputs.get("frame"), inputs.get("dark")
        if frame is None:
            return {"result": None}
        uframe = as_uarray(frame, "frame")
        if dark is None:
            return {"result": uframe}
        udark = as_uarray(dark, "dark")
        if udark.shape != uframe.shape:
            raise StepFailure(f"dark shape {udark.shape} differs from frame shape {uframe.shape}")
        return {"result": uframe.subtract(udark)}


@register
class NormaliseSolidAngle(Step):
    """Divide a frame by each pixel's solid angle relative to a pixel at the beam centre."""

    name = "normalise.solid_angle"
    input_names = ("frame", "solid_angle")
    output_names = ("result",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        frame, solid_angle = inputs.get("frame"), inputs["solid_angle"]
        if frame is None:
            return {"result": None}
        uframe = as_uarray(frame, "frame")
        omega = np.asarray(solid_angle)
        if omega.shape != uframe.shape:
            raise StepFailure(
                f"solid angle shape {omega.shape} differs from frame shape {uframe.shape}"
            )
        # Lazy (no per-pixel work here): integrate.azimuthal sums the frame's terms divided by
        # the solid angle straight into the q bins (pipeline.uarray, LinearForm).
        return {"result": uframe.divide_exact(omega)}
