"""`geometry.check`: which differences fail a run, and what the message says."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.step import StepContext
from pipeline.steps.checks import GeometryCheck, GeometryMismatch, geometry_differences

REFERENCE = {
    "distance_m": 2.0, "pixel_size_x_m": 1e-4, "pixel_size_y_m": 1e-4, "beam_center_x_px": 0.0,
    "beam_center_y_px": 512.5, "wavelength_nm": 0.1, "shape": [1024, 1024],
}  # fmt: skip


def check(geometry: dict[str, Any] | None, source: str = "dark") -> dict[str, Any]:
    step = GeometryCheck("same", GeometryCheck.Params(source=source), {}, {"geometry": "g"})
    return dict(
        step.compute({"geometry": geometry, "reference": REFERENCE}, StepContext("same", {}))
    )


def test_equal_within_tolerance_passes_the_geometry_on() -> None:
    close = {**REFERENCE, "distance_m": 2.0 * (1 + 5e-7), "beam_center_x_px": 0.0}
    assert check(close) == {"geometry": close}
    assert check(None) == {"geometry": None}  # optional source left out


def test_every_differing_field_is_named_with_both_values() -> None:
    other = {**REFERENCE, "shape": [1024, 512], "beam_center_x_px": 1.0, "wavelength_nm": None}
    with pytest.raises(GeometryMismatch) as info:
        check(other, source="background")
    message = str(info.value)
    assert message.startswith("GEOMETRY_MISMATCH: source 'background'")
    assert "frame shape (1024x512 vs 1024x1024)" in message
    assert "beam_center_x (1 px vs 0 px)" in message and "wavelength (None vs 0.1)" in message
    assert "distance" not in message
    assert geometry_differences(REFERENCE, REFERENCE, 0.0) == []
