"""Immutable values that reduction steps pass to each other: arrays with uncertainties and curves.

`UArray` holds a value array and its variance (or no variance when the value is exact). Both
arrays are made read-only when the `UArray` is built, so a step that tried to change its input in
place would fail loudly instead of silently making a partial run differ from a full run.

Uncertainty propagation is first order and assumes the operands are independent:

- ``a ± b``: ``var = var_a + var_b``
- ``a * b``: ``var = var_a * b**2 + var_b * a**2``
- ``a / b``: ``var = (var_a + var_b * (a / b)**2) / b**2``
- ``a * c`` for an exact scalar ``c``: ``var = var_a * c**2``

Poisson counts enter with ``var = counts`` (negative counts, which a raw frame never holds, are
clipped to zero variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
_FLOAT32_EXACT = 2**24  # the largest integer up to which every integer is a float32


def _frozen(array: ArrayLike, dtype: Any = None) -> np.ndarray:
    """`array` as a read-only ndarray (no copy when it already has the requested dtype)."""
    out = np.asarray(array, dtype=dtype)
    if out.flags.writeable:
        # A fresh array from our own arithmetic: freezing it costs nothing. An array we were
        # handed by a caller is viewed first so that its owner keeps write access to it.
        out = out.view()
        out.flags.writeable = False
    return out


@dataclass(frozen=True, slots=True, eq=False)
class UArray:
    """An immutable array of values with an optional variance array of the same shape.

    Use `UArray.poisson(counts)` for detector counts and `UArray.exact(values)` for values known
    without error. The arithmetic methods return new `UArray`s and never touch their operands.
    """

    value: np.ndarray
    variance: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _frozen(self.value))
        if self.variance is not None:
            variance = _frozen(self.variance)
            if variance.shape != self.value.shape:
                raise ValueError(
                    f"variance shape {variance.shape} differs from value shape {self.value.shape}"
                )
            object.__setattr__(self, "variance", variance)

    @classmethod
    def poisson(cls, counts: ArrayLike) -> UArray:
        """Counts with Poisson variance (equal to the counts, clipped at zero).

        Counts become float32, which holds them exactly up to 2**24 and halves the memory
        traffic of every per-frame step (sums over bins are done in float64 by `np.bincount`).
        Larger counts (long sums of frames) stay exact in float64.
        """
        raw = np.asarray(counts)
        wide = raw.size and raw.dtype.itemsize > 2 and np.abs(raw).max() > _FLOAT32_EXACT
        value = np.asarray(raw, dtype=np.float64 if wide else np.float32)
        if value is counts:
            value = value.copy()  # never share storage with a caller's array we freeze
        # Value and variance are the same numbers: share one read-only buffer, no second copy.
        variance = value if value.size == 0 or value.min() >= 0 else np.maximum(value, 0)
        return cls(value, variance)

    @classmethod
    def exact(cls, values: ArrayLike) -> UArray:
        """Values without uncertainty."""
        return cls(np.asarray(values, dtype=np.float64), None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation per element (zeros when the value is exact)."""
        if self.variance is None:
            return np.zeros_like(self.value)
        return np.sqrt(self.variance)

    def scale(self, factor: float) -> UArray:
        """`self * factor` for an exact scalar factor."""
        # Python floats keep the array's dtype (NEP 50): float32 frames stay float32.
        factor = float(factor)
        value = self.value * factor
        variance = None if self.variance is None else self.variance * (factor * factor)
        return UArray(value, variance)

    def add(self, other: Operand) -> UArray:
        """`self + other`; variances add."""
        b, vb = _split(other)
        return UArray(self.value + b, _sum_var(self.variance, vb))

    def subtract(self, other: Operand) -> UArray:
        """`self - other`; variances add."""
        b, vb = _split(other)
        return UArray(self.value - b, _sum_var(self.variance, vb))

    def multiply(self, other: Operand) -> UArray:
        """`self * other`; relative variances add (first order)."""
        b, vb = _split(other)
        value = self.value * b
        parts = []
        if self.variance is not None:
            parts.append(self.variance * np.square(b))
        if vb is not None:
            parts.append(vb * np.square(self.value))
        return UArray(value, _add_all(parts))

    def divide(self, other: Operand) -> UArray:
        """`self / other`; relative variances add (first order). Division by zero gives inf/nan."""
        b, vb = _split(other)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = self.value / b
            parts = []
            if self.variance is not None:
                parts.append(self.variance)
            if vb is not None:
                parts.append(vb * np.square(value))
            summed = _add_all(parts)
            variance = None if summed is None else summed / np.square(b)
        return UArray(value, variance)


Operand = UArray | np.ndarray | float | int


def as_uarray(value: Any, what: str = "value") -> UArray:
    """Accept a `UArray`, an ndarray or a number as a `UArray` (plain values are exact)."""
    if isinstance(value, UArray):
        return value
    if isinstance(value, np.ndarray | float | int | np.number | list):
        return UArray.exact(value)
    raise TypeError(f"{what} must be an array or a number, not {type(value).__name__}")


def _split(other: Operand) -> tuple[Any, np.ndarray | None]:
    if isinstance(other, UArray):
        return other.value, other.variance
    return other, None


def _sum_var(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _add_all(parts: list[np.ndarray]) -> np.ndarray | None:
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@dataclass(frozen=True, slots=True, eq=False)
class Curve:
    """A 1-D reduced curve: bin centres `q` (1/nm), mean intensity `i`, its standard error `idev`.

    `n_pixels` is how many unmasked pixels fell in each bin (empty bins are left out).
    """

    q: np.ndarray
    i: np.ndarray
    idev: np.ndarray
    n_pixels: np.ndarray

    def __post_init__(self) -> None:
        for name in ("q", "i", "idev", "n_pixels"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if not (self.q.shape == self.i.shape == self.idev.shape == self.n_pixels.shape):
            raise ValueError("curve arrays q, i, idev, n_pixels must have the same length")

    def __len__(self) -> int:
        return int(self.q.shape[0])
