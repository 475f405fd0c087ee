"""Geometry (q, solid angle), masks and azimuthal integration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import msgspec
import numpy as np
import pytest

import pipeline.steps  # noqa: F401
from pipeline.errors import SourceError, StepFailure
from pipeline.signatures import value_signature
from pipeline.step import REGISTRY, SourceSpec, StepContext
from pipeline.steps.integrate import Binning, make_binning
from pipeline.steps.masks import PackedMask
from pipeline.steps.masks import as_mask as _as_mask
from pipeline.uarray import UArray


def run_step(name: str, inputs: dict[str, Any], params: dict[str, Any] | None = None,
             sources: dict[str, SourceSpec] | None = None) -> Any:  # fmt: skip
    cls = REGISTRY[name]
    return cls("s", msgspec.convert(params or {}, cls.Params)).compute(
        dict(inputs), StepContext("s", sources or {})
    )


def as_mask(value: Any) -> np.ndarray:
    mask = _as_mask(value)
    assert mask is not None
    return mask


def geometry(**overrides: Any) -> dict[str, Any]:
    g = {"distance_m": 1.0, "pixel_size_x_m": 1e-3, "pixel_size_y_m": 2e-3, "beam_center_x_px": 2.5,
         "beam_center_y_px": 1.5, "wavelength_nm": 0.1, "shape": [4, 6]}  # fmt: skip
    g.update(overrides)
    return g


def q_map(g: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    out = run_step("geometry.q_map", {"geometry": g})
    return out["q"], out["solid_angle"]


def test_pixel_centres_follow_the_contract_convention() -> None:
    q, omega = q_map(geometry())
    # Pixel (row 1, column 2) spans x 2..3, y 1..2: its centre (2.5, 1.5) is the beam centre.
    assert q[1, 2] == 0.0 and omega[1, 2] == 1.0
    assert np.unravel_index(np.argmin(q), q.shape) == (1, 2)


def test_x_is_the_column_and_y_the_row() -> None:
    q, _ = q_map(geometry())
    # One column right: 1 mm off axis; one row down: 2 mm (y pixels are twice as tall).
    expected = [4 * np.pi / 0.1 * np.sin(np.arctan(r) / 2) for r in (1e-3, 2e-3)]
    np.testing.assert_allclose([q[1, 3], q[2, 2]], expected, rtol=1e-12)


def test_q_and_solid_angle_match_the_trigonometric_definition() -> None:
    g = geometry(distance_m=0.2, beam_center_x_px=-3.7, beam_center_y_px=10.2, shape=[40, 30])
    q, omega = q_map(g)
    yy, xx = np.meshgrid(np.arange(40) + 0.5, np.arange(30) + 0.5, indexing="ij")
    r = np.hypot((xx + 3.7) * 1e-3, (yy - 10.2) * 2e-3)
    two_theta = np.arctan(r / 0.2)
    np.testing.assert_allclose(q, 4 * np.pi / 0.1 * np.sin(two_theta / 2), rtol=1e-12)
    np.testing.assert_allclose(omega, np.cos(two_theta) ** 3, rtol=1e-6)
    assert not q.flags.writeable


def test_q_is_accurate_near_the_beam_centre() -> None:
    # 1 nm off axis at 1 m: q = 2π r / (λ d) to 1e-12, where 1 - cos(2θ) would lose every digit.
    q, _ = q_map(geometry(beam_center_x_px=2.5 - 1e-6, pixel_size_x_m=1e-3))
    np.testing.assert_allclose(q[1, 2], 2 * np.pi * 1e-9 / (0.1e-9 * 1.0) * 1e-9, rtol=1e-9)


def test_geometry_step_rejects_incomplete_geometry() -> None:
    g = geometry()
    del g["wavelength_nm"]
    with pytest.raises(StepFailure, match="geometry lacks wavelength_nm"):
        q_map(g)
    with pytest.raises(StepFailure, match="must be a mapping"):
        q_map([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- masks


def test_packed_mask_round_trip_and_content_signature() -> None:
    mask = np.zeros((5, 13), dtype=bool)
    mask[1, 3] = mask[4, 12] = True
    packed = PackedMask.pack(mask)
    np.testing.assert_array_equal(packed.unpack(), mask)
    assert packed.count() == 2 and packed.shape == (5, 13) and dict(packed)["shape"] == [5, 13]
    assert "masked=2" in repr(packed)
    # Equal masks from different reads sign equal: a new sample with the same mask keeps the
    # binning that depends on it.
    sig = value_signature(packed)
    assert sig is not None and sig == value_signature(PackedMask.pack(mask.copy()))
    mask[0, 0] = True
    assert value_signature(PackedMask.pack(mask)) != sig
    big = PackedMask.pack(np.zeros((1024, 1024), dtype=bool))
    assert value_signature(big) is not None  # a megapixel mask is still signed by content


def test_mask_read_from_file(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    raw = np.zeros((4, 6), dtype=np.int32)
    raw[0, 0] = 1
    raw[3, 5] = -1
    with h5py.File(path, "w") as f:
        f["/entry/instrument/detector/pixel_mask"] = raw
        f["/other"] = np.zeros(3)
    src = {"sample": SourceSpec(type="hdf5", location=str(path))}
    out = run_step("mask.read", {"geometry": geometry()}, {"source": "sample"}, src)
    np.testing.assert_array_equal(as_mask(out["mask"]), raw != 0)
    no_mask = run_step(
        "mask.read", {"geometry": geometry()}, {"source": "sample", "dataset": "/x"}, src
    )
    assert as_mask(no_mask["mask"]).shape == (4, 6) and not as_mask(no_mask["mask"]).any()
    with pytest.raises(SourceError, match="no dataset /x"):
        run_step("mask.read", {}, {"source": "sample", "dataset": "/x"}, src)
    with pytest.raises(SourceError, match="has shape"):
        run_step("mask.read", {"geometry": geometry(shape=[5, 5])}, {"source": "sample"}, src)
    with pytest.raises(SourceError, match="not 2-D"):
        run_step("mask.read", {}, {"source": "sample", "dataset": "/other"}, src)


def test_mask_threshold_and_combine() -> None:
    frame = UArray.exact([[1.0, -1.0, np.nan], [5.0, 100.0, 3.0]])
    out = as_mask(run_step("mask.threshold", {"frame": frame}, {"low": 0.0, "high": 50.0})["mask"])
    assert out.tolist() == [[False, True, True], [False, True, False]]
    a = np.array([[True, False], [False, False]])
    b = PackedMask.pack(np.array([[False, False], [False, True]]))
    combined = run_step("mask.combine", {"a": a, "b": b, "c": None})["mask"]
    assert as_mask(combined).tolist() == [[True, False], [False, True]]
    assert run_step("mask.combine", {"a": None})["mask"] is None
    with pytest.raises(StepFailure, match="differ in shape"):
        run_step("mask.combine", {"a": a, "b": np.zeros((3, 3))})
    assert _as_mask(None) is None


# ------------------------------------------------------------------------------- integration


def test_binning_spans_the_unmasked_q_range_in_equal_widths() -> None:
    q = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 10.0]])
    mask = np.array([[True, False, False], [False, False, True]])  # excludes q = 0 and q = 10
    b = make_binning(q, mask, 3)
    np.testing.assert_allclose(b.edges, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(b.centres, [1.5, 2.5, 3.5])
    assert b.counts.tolist() == [1, 1, 2]  # q = 4 (the largest) belongs to the last bin
    assert b.index.tolist() == [3, 0, 1, 2, 2, 3]  # masked pixels go to the overflow bin 3


def test_integration_mean_and_standard_error_and_mask_respected() -> None:
    q = np.array([[1.0, 1.1, 2.0, 2.1]])
    mask = np.array([[False, False, False, True]])
    bins = run_step(
        "integrate.prepare_bins", {"q": q, "mask": PackedMask.pack(mask)}, {"n_bins": 2}
    )["bins"]
    frame = UArray(np.array([[2.0, 4.0, 7.0, 1e9]]), np.array([[1.0, 3.0, 5.0, 1e9]]))
    curve = run_step("integrate.azimuthal", {"frame": frame, "bins": bins})["curve"]
    assert curve.i.tolist() == [3.0, 7.0]  # the masked 1e9 pixel is ignored
    np.testing.assert_allclose(curve.idev, [np.sqrt(4.0) / 2, np.sqrt(5.0)])
    assert curve.n_pixels.tolist() == [2, 1]
    np.testing.assert_allclose(curve.q, [1.25, 1.75])
    exact = run_step(
        "integrate.azimuthal", {"frame": np.array([[2.0, 4.0, 7.0, 0.0]]), "bins": bins}
    )
    assert exact["curve"].idev.tolist() == [0.0, 0.0]
    assert run_step("integrate.azimuthal", {"frame": None, "bins": bins})["curve"] is None


def test_empty_bins_are_left_out() -> None:
    q = np.array([0.0, 0.05, 0.92, 1.0])
    curve = run_step(
        "integrate.azimuthal", {"frame": np.ones(4), "bins": make_binning(q, None, 10)}
    )["curve"]
    assert len(curve) == 2 and curve.n_pixels.tolist() == [2, 2]


def test_integration_errors() -> None:
    with pytest.raises(StepFailure, match="every pixel is masked"):
        make_binning(np.ones(3), np.ones(3, dtype=bool), 2)
    with pytest.raises(StepFailure, match="mask shape"):
        make_binning(np.ones(3), np.ones(2, dtype=bool), 2)
    b = make_binning(np.array([1.0, 1.0]), None, 4)  # one distinct q: everything in one bin
    assert isinstance(b, Binning) and b.counts.sum() == 2
    with pytest.raises(StepFailure, match="frame shape"):
        run_step("integrate.azimuthal", {"frame": np.ones(5), "bins": b})
    with pytest.raises(StepFailure, match=r"must come from integrate\.prepare_bins"):
        run_step("integrate.azimuthal", {"frame": np.ones(2), "bins": {"index": []}})
