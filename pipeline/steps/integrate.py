"""Azimuthal integration: the mean of unmasked pixel values in equal-width q bins.

The work is split in two steps so that a new frame costs only three `np.bincount`s:
`integrate.prepare_bins` (depends on q, mask and `n_bins` only: rerun when the geometry or the
mask changes) assigns every pixel a bin index, and `integrate.azimuthal` sums each frame into
those bins.

For bin k with n_k unmasked pixels: I_k = Σ v / n_k and Idev_k = sqrt(Σ var) / n_k (the
standard error of the mean given per-pixel variances). Empty bins are left out of the curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from ..errors import StepFailure
from ..step import Step, StepContext, register
from ..uarray import Curve, UArray, as_uarray
from .masks import as_mask


@dataclass(frozen=True, slots=True, eq=False)
class Binning:
    """Bin index per pixel (flattened; `n_bins` marks excluded pixels), edges, centres, counts."""

    index: np.ndarray  # intp, one per pixel, in 0..n_bins (n_bins = masked or non-finite q)
    n_bins: int
    edges: np.ndarray  # n_bins + 1 edges in 1/nm
    centres: np.ndarray  # n_bins centres in 1/nm
    counts: np.ndarray  # unmasked pixels per bin
    shape: tuple[int, ...]  # frame shape the index was built for


def make_binning(q: np.ndarray, mask: np.ndarray | None, n_bins: int) -> Binning:
    """Assign each pixel to one of `n_bins` equal-width bins between the extreme unmasked q."""
    q = np.asarray(q)
    valid = np.isfinite(q)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != q.shape:
            raise StepFailure(f"mask shape {mask.shape} differs from q shape {q.shape}")
        valid &= ~mask
    if not valid.any():
        raise StepFailure("every pixel is masked: nothing to integrate")
    q_valid = q[valid]
    q_min, q_max = float(q_valid.min()), float(q_valid.max())
    if q_max <= q_min:
        q_max = q_min + 1e-12  # a single unmasked q value: one bin holding it
    width = (q_max - q_min) / n_bins
    index = np.full(q.size, n_bins, dtype=np.intp)
    flat_valid = valid.reshape(-1)
    bins = ((q.reshape(-1)[flat_valid] - q_min) / width).astype(np.intp)
    np.minimum(bins, n_bins - 1, out=bins)  # the pixel at q_max belongs to the last bin
    index[flat_valid] = bins
    counts = np.bincount(index, minlength=n_bins + 1)[:n_bins]
    edges = q_min + width * np.arange(n_bins + 1, dtype=np.float64)
    edges[-1] = q_max
    centres = 0.5 * (edges[:-1] + edges[1:])
    for array in (index, counts, edges, centres):
        array.flags.writeable = False
    return Binning(index, n_bins, edges, centres, counts, tuple(q.shape))


def integrate(frame: UArray, binning: Binning) -> Curve:
    """Mean and standard error of the frame per bin; empty bins are dropped."""
    if frame.shape != binning.shape:
        raise StepFailure(f"frame shape {frame.shape} differs from binning shape {binning.shape}")
    size = binning.n_bins + 1
    sums = np.bincount(binning.index, weights=frame.value.reshape(-1), minlength=size)
    keep = binning.counts > 0
    n = binning.counts[keep].astype(np.float64)
    mean = sums[: binning.n_bins][keep] / n
    if frame.variance is None:
        idev = np.zeros_like(mean)
    else:
        var = np.bincount(binning.index, weights=frame.variance.reshape(-1), minlength=size)
        idev = np.sqrt(var[: binning.n_bins][keep]) / n
    return Curve(binning.centres[keep], mean, idev, binning.counts[keep])


@register
class PrepareBins(Step):
    """Precompute the q bin of every pixel from q, the mask and the number of bins.

    Bins are `n_bins` equal-width intervals between the smallest and largest unmasked pixel q;
    masked pixels and pixels with non-finite q belong to no bin.
    """

    name = "integrate.prepare_bins"
    input_names = ("q",)
    optional_inputs = ("mask",)
    output_names = ("bins",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        n_bins: Annotated[
            int, msgspec.Meta(ge=1, le=1_000_000, description="Number of q bins.")
        ] = 200

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, PrepareBins.Params)
        return {"bins": make_binning(inputs["q"], as_mask(inputs.get("mask")), p.n_bins)}


@register
class Azimuthal(Step):
    """Average a frame azimuthally into the prepared q bins: I(q) with Idev.

    I is the mean of the unmasked pixel values in each bin, Idev = sqrt(sum of variances) / n.
    An absent frame gives an absent curve.
    """

    name = "integrate.azimuthal"
    input_names = ("frame", "bins")
    output_names = ("curve",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        frame, binning = inputs.get("frame"), inputs["bins"]
        if frame is None:
            return {"curve": None}
        if not isinstance(binning, Binning):
            raise StepFailure(
                f"input bins must come from integrate.prepare_bins, not {type(binning).__name__}"
            )
        return {"curve": integrate(as_uarray(frame, "frame"), binning)}
