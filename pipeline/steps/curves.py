"""Operations on reduced curves (`pipeline.uarray.Curve`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import numpy as np

from ..errors import StepFailure
from ..step import Step, StepContext, register
from ..uarray import Curve


@register
class SubtractBackground(Step):
    """Subtract a background curve: I = I_sample - scale * I_background, Idev added in quadrature.

    Both curves must share their q bins (reduce them with the same `integrate.prepare_bins`
    output). An absent background leaves the curve unchanged.
    """

    name = "curve.subtract_background"
    input_names = ("curve",)
    optional_inputs = ("background",)
    output_names = ("curve",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        scale: Annotated[float, msgspec.Meta(description="Factor applied to the background.")] = 1.0

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, SubtractBackground.Params)
        curve, background = inputs.get("curve"), inputs.get("background")
        if curve is None:
            return {"curve": None}
        if background is None:
            return {"curve": curve}
        if not isinstance(curve, Curve) or not isinstance(background, Curve):
            raise StepFailure("curve.subtract_background needs two curves from integrate.azimuthal")
        if len(curve) != len(background) or not np.array_equal(curve.q, background.q):
            raise StepFailure(
                f"background q bins differ from the sample's ({len(background)} vs {len(curve)} bins)"
            )
        i = curve.i - p.scale * background.i
        idev = np.sqrt(np.square(curve.idev) + np.square(p.scale * background.idev))
        return {"curve": Curve(curve.q, i, idev, curve.n_pixels)}
