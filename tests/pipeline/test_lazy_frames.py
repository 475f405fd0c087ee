"""Lazy normalised frames give the numbers the eager arithmetic gives, and sign by content."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.signatures import value_signature
from pipeline.steps.integrate import integrate, make_binning
from pipeline.uarray import UArray

RNG = np.random.default_rng(11)
SHAPE = (40, 50)


def counts(dtype: type = np.int32) -> np.ndarray:
    return RNG.poisson(30.0, size=SHAPE).astype(dtype)


def omega() -> np.ndarray:
    out = RNG.uniform(0.5, 1.0, size=SHAPE).astype(np.float32)
    out.flags.writeable = False
    return out


def normalised(c: np.ndarray, d: np.ndarray, om: np.ndarray) -> UArray:
    """The saxs chain: (c / t - d / t_d) / T / Ω."""
    dark = UArray.poisson(d).scale(1 / 10.0)
    return UArray.poisson(c).scale(1 / 1.5).subtract(dark).scale(1 / 0.8).divide_exact(om)


def test_lazy_chain_equals_the_eager_arithmetic() -> None:
    c, d, om = counts(), counts(), omega()
    lazy = normalised(c, d, om)
    assert lazy.is_lazy and lazy.shape == SHAPE
    value = ((c / 1.5 - d / 10.0) / 0.8) / om.astype(np.float64)
    variance = ((c / 1.5**2 + d / 10.0**2) / 0.8**2) / om.astype(np.float64) ** 2
    assert lazy.value.dtype == np.float32  # float32 counts and solid angle stay float32
    np.testing.assert_allclose(lazy.value, value, rtol=1e-6)
    assert lazy.variance is not None
    np.testing.assert_allclose(lazy.variance, variance, rtol=1e-6)
    assert not lazy.value.flags.writeable


def test_integrating_a_lazy_frame_equals_integrating_its_values() -> None:
    c, d, om = counts(), counts(), omega()
    q = np.hypot(*np.indices(SHAPE)).astype(np.float64)
    binning = make_binning(q, None, 12)
    lazy = normalised(c, d, om)
    eager = UArray(lazy.value.astype(np.float64), lazy.variance.astype(np.float64))  # type: ignore[union-attr]
    a, b = integrate(lazy, binning), integrate(eager, binning)
    np.testing.assert_allclose(a.i, b.i, rtol=1e-6)
    np.testing.assert_allclose(a.idev, b.idev, rtol=1e-6)
    # Integrating again (the dark term's sums now come from the binning's memo) is bit-identical.
    again = integrate(normalised(c.copy(), d, om), binning)
    assert again.i.tobytes() == integrate(normalised(c, d, om), binning).i.tobytes()


def test_negative_counts_have_zero_poisson_variance_and_wide_counts_stay_exact() -> None:
    u = UArray.poisson(np.array([-4, 9], dtype=np.int32)).scale(2.0)
    np.testing.assert_array_equal(u.variance, [0.0, 36.0])
    big = UArray.poisson(np.array([1, 2**24 + 1], dtype=np.int64)).scale(1.0)
    assert big.value.dtype == np.float64 and big.value[1] == 2**24 + 1


def test_operands_that_do_not_share_a_divisor_fall_back_to_eager_arithmetic() -> None:
    c, om = counts(), omega()
    a = UArray.poisson(c).divide_exact(om)
    b = UArray.poisson(c)
    diff = a.subtract(b)  # different divisors: computed now
    assert not diff.is_lazy
    np.testing.assert_allclose(diff.value, c / om - c, rtol=1e-5, atol=1e-4)  # float32
    twice = a.divide_exact(om)  # a second divisor: computed now
    assert not twice.is_lazy
    np.testing.assert_allclose(twice.value, c / om / om, rtol=1e-5)


def test_lazy_frames_sign_by_content() -> None:
    c, d, om = counts(), counts(), omega()
    sig = value_signature(normalised(c, d, om))
    assert sig is not None
    assert sig == value_signature(normalised(c.copy(), d.copy(), om.copy()))
    changed = c.copy()
    changed[0, 0] += 1
    assert value_signature(normalised(changed, d, om)) != sig
    assert value_signature(UArray.poisson(c).scale(2.0)) != value_signature(UArray.poisson(c))


def test_a_caller_may_keep_writing_to_an_array_it_handed_over_by_copy() -> None:
    c = counts()
    u = UArray.poisson(c)  # copy=True: the caller keeps its array
    c[0, 0] = 10_000
    assert u.value[0, 0] != 10_000
    with pytest.raises(ValueError):
        u.value[0, 0] = 1.0


def test_a_binning_reports_the_memory_its_memo_holds() -> None:
    q = np.hypot(*np.indices(SHAPE)).astype(np.float64)
    binning = make_binning(q, None, 12)
    before = binning.nbytes
    assert before >= binning.index.nbytes
    integrate(normalised(counts(), counts(), omega()), binning)
    # The bin-sorted pixel order (intp) and 1/Ω, 1/Ω² in that order (float64): 24 bytes a
    # binned pixel (all of them here), plus each chunk's few bin numbers and run offsets.
    grown = binning.nbytes - before
    assert 24 * binning.index.size <= grown <= 24 * binning.index.size + 1024
