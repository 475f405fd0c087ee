"""Detector geometry per pixel: scattering vector magnitude q and relative solid angle.

Conventions (CONTRACT section 2, docs/science.md): pixel (row i, column j) has its centre at
x = j + 0.5, y = i + 0.5 in pixel units; the beam centre is (beam_center_x, beam_center_y) in the
same units; 2θ = atan(r / distance); q = 4π/λ · sin θ (1/nm with λ in nm); the solid angle of a
pixel relative to a pixel at the beam centre is cos³ 2θ (flat detector normal to the beam).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import StepFailure
from ..step import Step, StepContext, register

GEOMETRY_KEYS = (
    "distance_m",
    "pixel_size_x_m",
    "pixel_size_y_m",
    "beam_center_x_px",
    "beam_center_y_px",
    "wavelength_nm",
    "shape",
)


def pixel_q_and_solid_angle(geometry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """q (1/nm, float64) and relative solid angle cos³ 2θ (float32) for every pixel of the frame.

    Works with R = sqrt(d² + r²) instead of trigonometric functions: cos 2θ = d / R and
    sin² θ = (1 - cos 2θ) / 2 = r² / (2 R (R + d)), the last form free of the cancellation that
    `1 - cos` suffers near the beam centre.
    """
    missing = [k for k in GEOMETRY_KEYS if k not in geometry]
    if missing:
        raise StepFailure(f"geometry lacks {', '.join(missing)}")
    rows, cols = (int(n) for n in geometry["shape"])
    d = float(geometry["distance_m"])
    # Offsets from the beam centre in metres along x (columns) and y (rows); broadcasting a
    # column vector against a row vector builds r² without materialising index grids.
    x = (np.arange(cols, dtype=np.float64) + 0.5 - float(geometry["beam_center_x_px"])) * float(
        geometry["pixel_size_x_m"]
    )
    y = (np.arange(rows, dtype=np.float64) + 0.5 - float(geometry["beam_center_y_px"])) * float(
        geometry["pixel_size_y_m"]
    )
    # The same operations in the same order as the plain expressions (so the same bits), but in
    # place: three frame-sized float64 buffers instead of nine (fresh pages cost as much as the
    # arithmetic at 1 Mpx).
    r2 = np.add.outer(y * y, x * x)
    big_r = np.add(r2, d * d)
    np.sqrt(big_r, out=big_r)  # R
    q = np.multiply(2.0, big_r)
    work = np.add(big_r, d)
    q *= work  # 2 R (R + d)
    np.divide(r2, q, out=q)
    np.sqrt(q, out=q)  # sin θ
    q *= 4.0 * np.pi / float(geometry["wavelength_nm"])
    cos_2theta = np.divide(d, big_r, out=big_r)
    np.multiply(cos_2theta, cos_2theta, out=work)
    work *= cos_2theta
    # float32 like the frames it divides (values near 1: 7 significant digits are plenty), so the
    # per-frame division stays in float32.
    solid_angle = work.astype(np.float32)
    q.flags.writeable = False
    solid_angle.flags.writeable = False
    return q, solid_angle


@register
class GeometryMap(Step):
    """Compute q (1/nm) and relative solid angle (cos³ 2θ) per pixel from a geometry dict.

    The input is the `geometry` output of `nexus.detector_geometry`. This step depends on that
    small dict only, so it is skipped while the geometry is unchanged.
    """

    name = "geometry.q_map"
    input_names = ("geometry",)
    output_names = ("q", "solid_angle")

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        geometry = inputs["geometry"]
        if not isinstance(geometry, Mapping):
            raise StepFailure(f"input geometry must be a mapping, not {type(geometry).__name__}")
        q, solid_angle = pixel_q_and_solid_angle(geometry)
        return {"q": q, "solid_angle": solid_angle}
