"""Pixel masks: True (or nonzero) where a pixel is excluded.

Mask steps output a `PackedMask`: the mask bit-packed into uint64 words (a 1024x1024 mask is
16,384 words). Besides being 8x smaller than a bool array, a packed mask is small enough to be
signed by its content, so a new sample file carrying the same mask does not invalidate the
binning that depends on it (early cutoff). Every step taking a mask also accepts a plain array.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import msgspec
import numpy as np

from .. import hdf5io
from ..errors import SourceError, StepFailure
from ..step import Step, StepContext, register
from ..uarray import UArray
from .io import SourceRef
from .sources import HDF5_TYPES, source_path


class PackedMask(Mapping[str, Any]):
    """An immutable bit-packed boolean mask; a read-only mapping `{"shape", "bits"}`.

    Being a small mapping of plain values lets the runner's content signatures see through it.
    """

    __slots__ = ("_bits", "_shape")

    def __init__(self, shape: tuple[int, ...], bits: np.ndarray) -> None:
        self._shape = tuple(int(n) for n in shape)
        bits.flags.writeable = False
        self._bits = bits

    @classmethod
    def pack(cls, mask: np.ndarray) -> PackedMask:
        """Pack a boolean (or nonzero = True) array."""
        flat = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
        pad = (-flat.size) % 8
        if pad:
            flat = np.concatenate([flat, np.zeros(pad, dtype=np.uint8)])
        return cls(np.shape(mask), flat.view(np.uint64))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def bits(self) -> np.ndarray:
        return self._bits

    def unpack(self) -> np.ndarray:
        """The mask as a read-only bool array of `shape`."""
        size = int(np.prod(self._shape))
        out = np.unpackbits(self._bits.view(np.uint8), count=size).view(bool).reshape(self._shape)
        out.flags.writeable = False
        return out

    def count(self) -> int:
        """How many pixels are masked."""
        return int(np.unpackbits(self._bits.view(np.uint8)).sum())

    def __getitem__(self, key: str) -> Any:
        if key == "shape":
            return list(self._shape)
        if key == "bits":
            return self._bits
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("shape", "bits"))

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"PackedMask(shape={self._shape}, masked={self.count()})"


def as_mask(value: Any) -> np.ndarray | None:
    """A mask input (`PackedMask`, bool/int array, or None) as a bool array (or None)."""
    if value is None:
        return None
    if isinstance(value, PackedMask):
        return value.unpack()
    if isinstance(value, UArray):
        value = value.value
    mask: np.ndarray = np.asarray(value) != 0
    return mask


@register
class MaskRead(Step):
    """Read a pixel mask (nonzero = masked) from an HDF5 source.

    When the dataset is absent and a `geometry` input is given, the result is an all-False mask of
    the frame's shape (nothing masked); without `geometry`, an absent dataset is an error.
    """

    name = "mask.read"
    optional_inputs = ("geometry",)
    output_names = ("mask",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        source: SourceRef
        dataset: Annotated[str, msgspec.Meta(description="Mask dataset (nonzero = masked).")] = (
            "/entry/instrument/detector/pixel_mask"
        )

    def read_ahead_items(self) -> tuple[tuple[str, str, bool], ...]:
        p = self.params
        assert isinstance(p, MaskRead.Params)
        return ((p.source, p.dataset, False),)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, MaskRead.Params)
        geometry = inputs.get("geometry")
        path = source_path(ctx, p.source, HDF5_TYPES)
        if path is None:
            return {"mask": None}
        with hdf5io.open_hdf5(path) as handle:
            if p.dataset not in handle:
                if geometry is None:
                    raise SourceError(f"{path}: no dataset {p.dataset}")
                return {"mask": PackedMask.pack(np.zeros(tuple(geometry["shape"]), dtype=bool))}
            raw = hdf5io.read_array(handle, p.dataset, sum_frames=False)
        if raw.ndim != 2:
            raise SourceError(f"{path}: mask {p.dataset} is not 2-D (shape {raw.shape})")
        if geometry is not None and list(raw.shape) != list(geometry["shape"]):
            raise SourceError(
                f"{path}: mask {p.dataset} has shape {raw.shape}, frame is {tuple(geometry['shape'])}"
            )
        return {"mask": PackedMask.pack(raw != 0)}


@register
class MaskThreshold(Step):
    """Mask pixels whose value is below `low` or above `high` (e.g. dead or saturated pixels)."""

    name = "mask.threshold"
    input_names = ("frame",)
    output_names = ("mask",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        low: Annotated[float | None, msgspec.Meta(description="Mask values below this.")] = None
        high: Annotated[float | None, msgspec.Meta(description="Mask values above this.")] = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, MaskThreshold.Params)
        frame = inputs["frame"]
        values = frame.value if isinstance(frame, UArray) else np.asarray(frame)
        mask = ~np.isfinite(values)
        if p.low is not None:
            mask |= values < p.low
        if p.high is not None:
            mask |= values > p.high
        return {"mask": PackedMask.pack(mask)}


@register
class MaskCombine(Step):
    """Combine masks: a pixel is masked when any input masks it (absent inputs are ignored)."""

    name = "mask.combine"
    input_names = ("a",)
    optional_inputs = ("b", "c")
    output_names = ("mask",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        packed: list[PackedMask] = []
        for key in ("a", "b", "c"):
            value = inputs.get(key)
            if isinstance(value, PackedMask):
                packed.append(value)
            elif (array := as_mask(value)) is not None:
                packed.append(PackedMask.pack(array))
        if not packed:
            return {"mask": None}
        shapes = {m.shape for m in packed}
        if len(shapes) > 1:
            raise StepFailure(f"masks differ in shape: {sorted(shapes)}")
        bits = packed[0].bits.copy()
        for m in packed[1:]:
            bits |= m.bits  # OR of the packed words: 64 pixels per operation
        return {"mask": PackedMask(packed[0].shape, bits)}
