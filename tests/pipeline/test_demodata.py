"""Synthetic demo data: layout of CONTRACT section 2, determinism, the known model."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline import demodata


def test_writes_samples_background_and_dark_in_the_nexus_layout(tmp_path: Path) -> None:
    paths = demodata.write_demo_data(tmp_path, count=2, shape=(64, 48), seed=3)
    assert [p.name for p in paths] == [
        "sample_0001.h5",
        "sample_0002.h5",
        "background.h5",
        "dark.h5",
    ]
    with h5py.File(paths[0], "r") as f:
        assert f["/entry/data/data"].shape == (64, 48)
        det = f["/entry/instrument/detector"]
        for name in ("distance", "x_pixel_size", "y_pixel_size", "count_time"):
            assert "units" in det[name].attrs
        assert f["/entry/instrument/monochromator/wavelength"].attrs["units"] == "Angstrom"
        assert 0 < f["/entry/sample/transmission"][()] <= 1
        np.testing.assert_array_equal(det["pixel_mask"][()] != 0, demodata.demo_mask((64, 48), 3))
    with h5py.File(paths[-1], "r") as f:
        assert "/entry/sample/transmission" not in f  # a dark has no sample


def test_same_arguments_same_files_and_samples_differ_only_in_frame_and_exposure(
    tmp_path: Path,
) -> None:
    a = demodata.write_demo_data(tmp_path / "a", count=2, shape=(32, 32), seed=1)
    b = demodata.write_demo_data(tmp_path / "b", count=2, shape=(32, 32), seed=1)
    with h5py.File(a[0], "r") as fa, h5py.File(b[0], "r") as fb, h5py.File(a[1], "r") as f2:
        np.testing.assert_array_equal(fa["/entry/data/data"][()], fb["/entry/data/data"][()])
        assert not np.array_equal(fa["/entry/data/data"][()], f2["/entry/data/data"][()])
        det1, det2 = fa["/entry/instrument/detector"], f2["/entry/instrument/detector"]
        for name in ("distance", "x_pixel_size", "y_pixel_size", "beam_center_x", "beam_center_y"):
            assert det1[name][()] == det2[name][()]
        assert det1["count_time"][()] != det2["count_time"][()]


def test_model_intensity_is_a_sphere_form_factor() -> None:
    assert demodata.model_intensity(0.0) == demodata.I0
    assert demodata.model_intensity(1e-4) == np.float64(demodata.model_intensity(1e-4))
    # The first zero of the sphere form factor is at qR = 4.4934.
    assert demodata.model_intensity(4.4934 / demodata.SPHERE_RADIUS_NM) < 1e-6 * demodata.I0
    q = np.linspace(0.01, 2, 50)
    assert np.all(demodata.model_intensity(q) >= 0)


def test_counts_follow_the_generative_model(tmp_path: Path) -> None:
    shape = (128, 128)
    path = demodata.write_sample_file(tmp_path / "s.h5", 1, shape=shape, seed=5)
    with h5py.File(path, "r") as f:
        counts = f["/entry/data/data"][()]
    q, omega = demodata.pixel_q(shape)
    exposure = demodata.sample_exposure(1)
    expected = exposure["count_time_s"] * (
        exposure["transmission"] * (demodata.model_intensity(q) + demodata.FLAT_BACKGROUND) * omega
        + demodata.DARK_RATE
    )
    valid = ~demodata.demo_mask(shape, 5)
    # Poisson: the mean of (counts - expected)^2 / expected is 1.
    assert abs(np.mean((counts[valid] - expected[valid]) ** 2 / expected[valid]) - 1) < 0.05
    assert counts[~valid].max() == demodata.HOT_PIXEL_COUNTS  # masked pixels are spoiled
