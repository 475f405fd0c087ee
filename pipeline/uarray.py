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

Lazy linear forms. Scaling by a number, adding or subtracting `UArray`s and dividing by an exact
per-pixel array (the whole normalisation chain of a detector frame) do not compute anything: the
result keeps a `LinearForm`, ``value = (Σ c_i · v_i) / d`` with ``variance = (Σ c_i² · var_i) /
d²``, whose terms point at the arrays they were built from (the raw counts, the dark frame...).
`value` and `variance` are computed on first use (and kept); `pipeline.steps.integrate` never
needs them: it sums each term into the q bins directly, reusing the sums of terms it has seen
before (the dark frame's, in every partial run). A frame thus costs one read and one pass over
its pixels, instead of a fresh pair of arrays per normalisation step. Results are computed
in float64 and stored as float32 when every operand is float32 (or counts below 2**24), as the
eager arithmetic did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
_FLOAT32_EXACT = 2**24  # the largest integer up to which every integer is a float32
_UNSET: Any = object()


def _frozen(array: ArrayLike, dtype: Any = None) -> np.ndarray:
    """`array` as a read-only ndarray (no copy when it already has the requested dtype)."""
    out = np.asarray(array, dtype=dtype)
    if out.flags.writeable:
        # A fresh array from our own arithmetic: freezing it costs nothing. An array we were
        # handed by a caller is viewed first so that its owner keeps write access to it.
        out = out.view()
        out.flags.writeable = False
    return out


def _freeze_in_place(array: np.ndarray) -> np.ndarray:
    """Make an array we own read-only (no view), so that it counts as immutable for caches."""
    array.flags.writeable = False
    return array


@dataclass(frozen=True, slots=True, eq=False)
class Term:
    """One term ``coef · value`` of a `LinearForm`; `poisson`: variance = max(value, 0)."""

    coef: float
    value: np.ndarray  # read-only; counts (any numeric dtype) or floats
    variance: np.ndarray | None  # read-only, or None (exact, or Poisson: see `poisson`)
    poisson: bool = False
    # Shared by every term derived from the same one: the Poisson variance, found once.
    derived: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def times(self, factor: float) -> Term:
        return Term(self.coef * factor, self.value, self.variance, self.poisson, self.derived)

    def natural_dtype(self) -> np.dtype[Any]:
        """The float dtype the eager arithmetic would have given this term's value."""
        v = self.value
        if v.dtype == np.float32 or (v.dtype.kind in "iub" and v.dtype.itemsize <= 2):
            return np.dtype(np.float32)
        if self.poisson and v.dtype.kind in "iub":
            wide = v.size and max(abs(int(v.max())), abs(int(v.min()))) > _FLOAT32_EXACT
            return np.dtype(np.float64 if wide else np.float32)
        return np.dtype(np.float64)

    def variance_array(self) -> np.ndarray | None:
        if not self.poisson:
            return self.variance
        known = self.derived.get("variance")
        if known is None:
            v = self.value
            if v.size == 0 or v.dtype.kind == "u" or v.min() >= 0:
                known = v
            else:
                known = _freeze_in_place(np.maximum(v, 0))
            self.derived["variance"] = known
        return known


@dataclass(frozen=True, slots=True, eq=False)
class LinearForm:
    """``value = (Σ c_i · v_i) / divisor`` and ``variance = (Σ c_i² · var_i) / divisor²``."""

    terms: tuple[Term, ...]
    divisor: np.ndarray | None = None  # exact per-pixel divisor (read-only), or None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.terms[0].value.shape)

    @property
    def exact(self) -> bool:
        return all(t.variance is None and not t.poisson for t in self.terms)

    def scaled(self, factor: float) -> LinearForm:
        terms = tuple(t.times(factor) for t in self.terms)
        return LinearForm(terms, self.divisor)

    def dtype(self) -> np.dtype[Any]:
        dtypes = [t.natural_dtype() for t in self.terms]
        if self.divisor is not None:
            dtypes.append(np.dtype(np.float32 if self.divisor.dtype == np.float32 else np.float64))
        return np.dtype(np.result_type(*dtypes))

    def evaluate_value(self) -> np.ndarray:
        acc = _weighted_sum([(t.coef, t.value) for t in self.terms])
        if self.divisor is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(acc, self.divisor, out=acc)
        return _freeze_in_place(acc.astype(self.dtype(), copy=False))

    def evaluate_variance(self) -> np.ndarray | None:
        parts = []
        for t in self.terms:
            var = t.variance_array()
            if var is not None:
                parts.append((t.coef * t.coef, var))
        if not parts:
            return None
        acc = _weighted_sum(parts)
        if self.divisor is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(acc, self.divisor, out=acc)
                np.divide(acc, self.divisor, out=acc)
        return _freeze_in_place(acc.astype(self.dtype(), copy=False))

    def signature_items(self) -> tuple[Any, ...]:
        terms = tuple((t.coef, t.value, "poisson" if t.poisson else t.variance) for t in self.terms)
        return ("linear", terms, self.divisor)


def _weighted_sum(parts: list[tuple[float, np.ndarray]]) -> FloatArray:
    """Σ c · a in float64, in one fresh array (no temporaries beyond it)."""
    (c0, a0), rest = parts[0], parts[1:]
    acc: FloatArray = np.multiply(a0, c0, dtype=np.float64)
    for c, a in rest:
        if c == 1.0:
            np.add(acc, a, out=acc)
        elif c == -1.0:
            np.subtract(acc, a, out=acc)
        else:
            tmp = np.multiply(a, c, dtype=np.float64)
            np.add(acc, tmp, out=acc)
    return acc


class UArray:
    """An immutable array of values with an optional variance array of the same shape.

    Use `UArray.poisson(counts)` for detector counts and `UArray.exact(values)` for values known
    without error. The arithmetic methods return new `UArray`s and never touch their operands;
    linear ones return lazy results (see the module docstring), computed on first use.
    """

    __slots__ = ("__weakref__", "_form", "_value", "_variance")

    def __init__(self, value: ArrayLike, variance: ArrayLike | None = None) -> None:
        frozen = _frozen(value)
        self._value: np.ndarray | None = frozen
        self._form: LinearForm | None = None
        self._variance: np.ndarray | None = None
        if variance is not None:
            var = _frozen(variance)
            if var.shape != frozen.shape:
                raise ValueError(
                    f"variance shape {var.shape} differs from value shape {frozen.shape}"
                )
            self._variance = var

    @classmethod
    def from_form(cls, form: LinearForm) -> UArray:
        """A lazy `UArray` whose value and variance are computed from `form` on first use."""
        out = cls.__new__(cls)
        out._form = form
        out._value = None
        out._variance = _UNSET
        return out

    @classmethod
    def poisson(cls, counts: ArrayLike, *, copy: bool = True) -> UArray:
        """Counts with Poisson variance (equal to the counts, clipped at zero).

        The value is float32, which holds counts exactly up to 2**24 and halves the memory
        traffic of every per-frame step (sums over bins are done in float64); larger counts (long
        sums of frames) stay exact in float64. Nothing is converted until the value is used: an
        integrated frame never is. `copy=False` hands the array over (a reader's fresh array):
        it is made read-only in place instead of being copied.
        """
        raw = np.asarray(counts)
        if raw.dtype.kind not in "iubf":
            raw = raw.astype(np.float64)
        elif copy:
            raw = raw.copy()  # never share storage with a caller's array we freeze
        if raw.flags.writeable:
            _freeze_in_place(raw)
        return cls.from_form(LinearForm((Term(1.0, raw, None, poisson=True),)))

    @classmethod
    def exact(cls, values: ArrayLike) -> UArray:
        """Values without uncertainty."""
        return cls(np.asarray(values, dtype=np.float64), None)

    # ------------------------------------------------------------------------------ contents

    @property
    def value(self) -> np.ndarray:
        value = self._value
        if value is None:
            assert self._form is not None
            value = self._value = self._form.evaluate_value()
        return value

    @property
    def variance(self) -> np.ndarray | None:
        variance = self._variance
        if variance is _UNSET:
            assert self._form is not None
            variance = self._variance = self._form.evaluate_variance()
        return variance

    @property
    def linear_form(self) -> LinearForm:
        """This array as a linear form (a single term when it was built eagerly)."""
        if self._form is not None:
            return self._form
        return LinearForm((Term(1.0, self.value, self.variance),))

    @property
    def is_lazy(self) -> bool:
        return self._form is not None

    @property
    def shape(self) -> tuple[int, ...]:
        if self._form is not None:
            return self._form.shape
        return tuple(self.value.shape)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation per element (zeros when the value is exact)."""
        if self.variance is None:
            return np.zeros_like(self.value)
        std: np.ndarray = np.sqrt(self.variance)
        return std

    def signature_items(self) -> tuple[Any, ...]:
        """What the content signature (`pipeline.signatures`) hashes: the form, or the arrays."""
        if self._form is not None:
            return self._form.signature_items()
        if self._variance is self._value:
            return ("same", self.value)
        return (self.value, self.variance)

    def __repr__(self) -> str:
        kind = "lazy" if self._form is not None else "eager"
        return f"UArray(shape={self.shape}, {kind})"

    # ---------------------------------------------------------------------------- arithmetic

    def scale(self, factor: float) -> UArray:
        """`self * factor` for an exact scalar factor (lazy)."""
        return UArray.from_form(self.linear_form.scaled(float(factor)))

    def add(self, other: Operand) -> UArray:
        """`self + other`; variances add."""
        combined = self._combine(other, 1.0)
        if combined is not None:
            return combined
        b, vb = _split(other)
        return UArray(self.value + b, _sum_var(self.variance, vb))

    def subtract(self, other: Operand) -> UArray:
        """`self - other`; variances add."""
        combined = self._combine(other, -1.0)
        if combined is not None:
            return combined
        b, vb = _split(other)
        return UArray(self.value - b, _sum_var(self.variance, vb))

    def _combine(self, other: Operand, sign: float) -> UArray | None:
        """`self + sign * other` as a lazy form when both share their divisor, else None."""
        if not isinstance(other, UArray) or other.shape != self.shape:
            return None
        a, b = self.linear_form, other.linear_form
        if a.divisor is not b.divisor:
            return None
        terms = a.terms + tuple(t.times(sign) for t in b.terms)
        return UArray.from_form(LinearForm(terms, a.divisor))

    def divide_exact(self, divisor: np.ndarray) -> UArray:
        """`self / divisor` for an exact per-pixel array of the same shape (lazy when possible)."""
        form = self.linear_form
        d = np.asarray(divisor)
        if form.divisor is None and d.shape == form.shape and d.dtype.kind == "f":
            if d.flags.writeable:
                d = _frozen(d)
            return UArray.from_form(LinearForm(form.terms, d))
        return self.divide(d)

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
    total: np.ndarray = a + b
    return total


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

    def signature_items(self) -> tuple[Any, ...]:
        return (self.q, self.i, self.idev, self.n_pixels)
