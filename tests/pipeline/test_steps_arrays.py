"""Array arithmetic, normalisation and curve steps: values, propagated uncertainties, no mutation."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.steps  # noqa: F401
from pipeline.errors import StepFailure
from pipeline.step import REGISTRY, StepContext
from pipeline.uarray import Curve, UArray, as_uarray


def run_step(name: str, inputs: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
    cls = REGISTRY[name]
    step = cls("s", msgspec.convert(params or {}, cls.Params))
    return step.compute(dict(inputs), StepContext("s", {}))


def ua(value: list[float], variance: list[float] | None) -> UArray:
    return UArray(
        np.array(value, dtype=np.float64), None if variance is None else np.array(variance)
    )


# -------------------------------------------------------------------------------- UArray maths


def test_poisson_variance_equals_counts_and_is_read_only() -> None:
    counts = np.array([0, 1, 100], dtype=np.int32)
    u = UArray.poisson(counts)
    np.testing.assert_array_equal(u.value, [0, 1, 100])
    np.testing.assert_array_equal(u.variance, [0, 1, 100])
    assert not u.value.flags.writeable
    counts[0] = 5  # the caller's array stays theirs
    assert u.value[0] == 0
    np.testing.assert_array_equal(UArray.poisson(np.array([-2.0, 3.0])).variance, [0.0, 3.0])


def test_uarray_keeps_callers_arrays_writeable() -> None:
    mine = np.ones(3)
    UArray(mine, mine)
    mine[0] = 2.0  # still allowed


def test_uarray_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="variance shape"):
        UArray(np.ones(3), np.ones(2))


@pytest.mark.parametrize(
    ("name", "value", "variance"),
    [
        ("array.add", [12.0], [4.0 + 9.0]),
        ("array.subtract", [8.0], [4.0 + 9.0]),
        ("array.multiply", [20.0], [4.0 * 2.0**2 + 9.0 * 10.0**2]),
        ("array.divide", [5.0], [(4.0 + 9.0 * 5.0**2) / 2.0**2]),
    ],
)
def test_binary_operations_propagate_variance(
    name: str, value: list[float], variance: list[float]
) -> None:
    a, b = ua([10.0], [4.0]), ua([2.0], [9.0])
    result = run_step(name, {"a": a, "b": b})["result"]
    np.testing.assert_allclose(result.value, value)
    np.testing.assert_allclose(result.variance, variance)
    # Operands untouched.
    assert a.value.tolist() == [10.0]
    np.testing.assert_array_equal(b.variance, [9.0])


def test_binary_with_absent_b_is_identity_and_absent_a_is_absent() -> None:
    a = ua([1.0, 2.0], [1.0, 2.0])
    for name in ("array.add", "array.subtract", "array.multiply", "array.divide"):
        assert run_step(name, {"a": a, "b": None})["result"] is a
        assert run_step(name, {"a": None, "b": a})["result"] is None


def test_plain_arrays_and_numbers_are_exact_operands() -> None:
    result = run_step("array.multiply", {"a": np.array([1.0, 2.0]), "b": 3})["result"]
    assert result.value.tolist() == [3.0, 6.0] and result.variance is None
    with pytest.raises(StepFailure, match="shapes differ"):
        run_step("array.add", {"a": np.ones(3), "b": np.ones(2)})
    with pytest.raises(TypeError, match="must be an array or a number"):
        as_uarray("text")


def test_scale_and_poisson_steps() -> None:
    result = run_step("array.scale", {"a": ua([2.0], [4.0])}, {"factor": 3.0, "offset": 1.0})[
        "result"
    ]
    assert result.value.tolist() == [7.0] and result.variance.tolist() == [36.0]
    assert run_step("array.scale", {"a": None})["result"] is None
    result = run_step("array.poisson", {"counts": np.array([4, 9])})["result"]
    assert result.std.tolist() == [2.0, 3.0]
    assert run_step("array.poisson", {"counts": None})["result"] is None


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(0.1, 1e4), b=st.floats(0.1, 1e4), va=st.floats(0, 1e3), vb=st.floats(0, 1e3),
    op=st.sampled_from(["add", "subtract", "multiply", "divide"]),
)  # fmt: skip
def test_propagation_matches_first_order_formula(
    a: float, b: float, va: float, vb: float, op: str
) -> None:
    """Var f(a, b) = (df/da)^2 var_a + (df/db)^2 var_b for independent a, b."""
    grads = {"add": (1, 1), "subtract": (1, -1), "multiply": (b, a), "divide": (1 / b, -a / b**2)}
    ga, gb = grads[op]
    result = getattr(ua([a], [va]), op)(ua([b], [vb]))
    np.testing.assert_allclose(result.variance, [ga**2 * va + gb**2 * vb], rtol=1e-9, atol=1e-300)


# ------------------------------------------------------------------------------- normalisation


def test_time_transmission_and_flux_normalisation() -> None:
    frame = ua([100.0], [100.0])
    rate = run_step("normalise.time", {"frame": frame, "exposure": {"count_time_s": 4.0}})["result"]
    assert rate.value.tolist() == [25.0] and rate.variance.tolist() == [100.0 / 16]
    override = run_step("normalise.time", {"frame": frame, "exposure": None}, {"count_time": 2.0})
    assert override["result"].value.tolist() == [50.0]
    tr = run_step("normalise.transmission", {"frame": frame, "exposure": {"transmission": 0.5}})
    assert tr["result"].value.tolist() == [200.0] and tr["result"].variance.tolist() == [400.0]
    no_tr = run_step("normalise.transmission", {"frame": frame, "exposure": {"count_time_s": 1}})
    assert no_tr["result"].value.tolist() == [100.0]
    flux = run_step("normalise.flux", {"frame": frame}, {"flux": 10.0})["result"]
    assert flux.value.tolist() == [10.0]
    np.testing.assert_allclose(flux.variance, [1.0])
    flux_in = run_step("normalise.flux", {"frame": frame, "flux": ua([10.0], [1.0])})["result"]
    np.testing.assert_allclose(flux_in.variance, [(100.0 + 1.0 * 10.0**2) / 100.0])


def test_normalisation_errors_and_absent_frames() -> None:
    frame = ua([1.0], [1.0])
    with pytest.raises(StepFailure, match="no count_time_s"):
        run_step("normalise.time", {"frame": frame, "exposure": {}})
    with pytest.raises(StepFailure, match="count_time_s must be positive"):
        run_step("normalise.time", {"frame": frame, "exposure": {"count_time_s": 0}})
    with pytest.raises(StepFailure, match="no flux"):
        run_step("normalise.flux", {"frame": frame})
    for name in ("normalise.time", "normalise.transmission", "normalise.flux", "normalise.dark"):
        assert run_step(name, {"frame": None})["result"] is None
    assert (
        run_step("normalise.solid_angle", {"frame": None, "solid_angle": np.ones(1)})["result"]
        is None
    )


def test_dark_subtraction_and_solid_angle_division() -> None:
    frame = ua([10.0, 20.0], [10.0, 20.0])
    dark = ua([1.0, 2.0], [0.5, 0.5])
    out = run_step("normalise.dark", {"frame": frame, "dark": dark})["result"]
    assert out.value.tolist() == [9.0, 18.0] and out.variance.tolist() == [10.5, 20.5]
    assert run_step("normalise.dark", {"frame": frame, "dark": None})["result"] is frame
    with pytest.raises(StepFailure, match="dark shape"):
        run_step("normalise.dark", {"frame": frame, "dark": ua([1.0], [1.0])})
    omega = np.array([0.5, 1.0], dtype=np.float32)
    out = run_step("normalise.solid_angle", {"frame": frame, "solid_angle": omega})["result"]
    assert out.value.tolist() == [20.0, 20.0] and out.variance.tolist() == [40.0, 20.0]
    assert frame.value.tolist() == [10.0, 20.0]
    with pytest.raises(StepFailure, match="solid angle shape"):
        run_step("normalise.solid_angle", {"frame": frame, "solid_angle": np.ones(3)})


# ---------------------------------------------------------------------------------------- curves


def test_background_subtraction_of_curves() -> None:
    q = np.array([0.1, 0.2])
    sample = Curve(q, np.array([10.0, 8.0]), np.array([3.0, 1.0]), np.array([5, 5]))
    background = Curve(q, np.array([2.0, 2.0]), np.array([4.0, 1.0]), np.array([5, 5]))
    out = run_step(
        "curve.subtract_background", {"curve": sample, "background": background}, {"scale": 1.0}
    )
    result = out["curve"]
    assert result.i.tolist() == [8.0, 6.0]
    np.testing.assert_allclose(result.idev, [5.0, np.sqrt(2.0)])
    assert (
        run_step("curve.subtract_background", {"curve": sample, "background": None})["curve"]
        is sample
    )
    assert run_step("curve.subtract_background", {"curve": None})["curve"] is None
    other = Curve(np.array([0.1, 0.3]), np.zeros(2), np.zeros(2), np.ones(2))
    with pytest.raises(StepFailure, match="background q bins differ"):
        run_step("curve.subtract_background", {"curve": sample, "background": other})
    with pytest.raises(StepFailure, match="needs two curves"):
        run_step("curve.subtract_background", {"curve": sample, "background": np.ones(2)})
    with pytest.raises(ValueError, match="same length"):
        Curve(q, np.ones(3), np.ones(2), np.ones(2))


def test_large_counts_stay_exact() -> None:
    small = UArray.poisson(np.array([3, 2**24], dtype=np.int64))
    assert small.value.dtype == np.float32
    big = UArray.poisson(np.array([3, 2**24 + 1], dtype=np.int64))
    assert big.value.dtype == np.float64 and big.value[1] == 2**24 + 1
