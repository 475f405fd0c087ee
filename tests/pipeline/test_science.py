"""The science test: the bundled `saxs` example recovers the known I(q) of the demo data.

Frames are drawn (Poisson, seeded) from `pipeline.demodata.model_intensity` with known geometry,
count times, transmissions, dark current and flat background. The example pipeline, loaded from
its YAML and run by the real runner, must give a curve that matches the model within the noise:
reduced chi-square near 1 using the `Idev` it reports.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline import demodata
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec

SHAPE = (256, 256)
N_BINS = 200  # the example's default


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    demodata.write_demo_data(directory, count=2, shape=SHAPE, seed=7)
    return directory


def sources(
    directory: Path, sample: int = 1, *, background: bool = True, dark: bool = True
) -> dict[str, SourceSpec]:
    out = {"sample": SourceSpec(type="hdf5", location=str(directory / f"sample_{sample:04d}.h5"))}
    if background:
        out["background"] = SourceSpec(type="hdf5", location=str(directory / "background.h5"))
    if dark:
        out["dark"] = SourceSpec(type="hdf5", location=str(directory / "dark.h5"))
    return out


def run_saxs(
    directory: Path, out: Path, srcs: dict[str, SourceSpec], runner: ProcessingRunner | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if runner is None:
        runner = ProcessingRunner(load_pipeline_text(example_text("saxs")), artifacts_dir=out)
    result = runner.run(srcs)
    assert result.exit_code == 0, result.error
    assert "reduced.h5" in result.artifacts
    with h5py.File(out / "reduced.h5", "r") as f:
        data = f["/sasentry01/sasdata01"]
        return data["Q"][()], data["I"][()], data["Idev"][()]


def expected_per_bin(q_bins: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """The estimator's expectation: the model averaged over the unmasked pixels of each bin.

    Computed independently of the pipeline's code (trigonometric q, `np.linspace` edges).
    """
    q_pix, _ = demodata.pixel_q(SHAPE)
    valid = ~demodata.demo_mask(SHAPE, seed=7)
    q = q_pix[valid]
    edges = np.linspace(q.min(), q.max(), N_BINS + 1)
    index = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, N_BINS - 1)
    sums = np.bincount(index, weights=demodata.model_intensity(q) + offset, minlength=N_BINS)
    counts = np.bincount(index, minlength=N_BINS)
    centres = 0.5 * (edges[:-1] + edges[1:])
    keep = counts > 0
    np.testing.assert_allclose(centres[keep], q_bins, rtol=1e-9)
    return sums[keep] / counts[keep]


def reduced_chi2(i: np.ndarray, idev: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(((i - expected) / idev) ** 2))


def test_reduction_recovers_the_model_within_the_noise(demo_dir: Path, tmp_path: Path) -> None:
    q, i, idev = run_saxs(demo_dir, tmp_path, sources(demo_dir))
    assert len(q) > 150  # enough bins for chi-square to mean something
    chi2 = reduced_chi2(i, idev, expected_per_bin(q))
    assert 0.7 < chi2 < 1.4, chi2
    # Loosely also against the analytic curve at the bin centres (binning smears sharp features).
    near = np.abs(i - demodata.model_intensity(q)) < 5 * idev + 0.02 * demodata.model_intensity(q)
    assert near.mean() > 0.9


def test_every_sample_reduces_to_the_same_curve_despite_other_count_time_and_transmission(
    demo_dir: Path, tmp_path: Path
) -> None:
    assert demodata.sample_exposure(1) != demodata.sample_exposure(2)
    q, i, idev = run_saxs(demo_dir, tmp_path, sources(demo_dir, sample=2))
    assert 0.7 < reduced_chi2(i, idev, expected_per_bin(q)) < 1.4


def test_without_background_the_flat_background_remains(demo_dir: Path, tmp_path: Path) -> None:
    q, i, idev = run_saxs(demo_dir, tmp_path, sources(demo_dir, background=False))
    expected = expected_per_bin(q)
    assert reduced_chi2(i, idev, expected) > 10  # the background matters...
    chi2 = reduced_chi2(i, idev, expected_per_bin(q, offset=demodata.FLAT_BACKGROUND))
    assert 0.7 < chi2 < 1.4  # ...and is exactly the flat level B


def test_without_dark_the_dark_current_biases_the_curve(demo_dir: Path, tmp_path: Path) -> None:
    q, i, idev = run_saxs(demo_dir, tmp_path, sources(demo_dir, dark=False))
    # Uncorrected dark rate D survives as D/T_sample - D/T_background (solid angle ~1 here).
    bias = demodata.DARK_RATE * (
        1 / demodata.sample_exposure(1)["transmission"] - 1 / demodata.BACKGROUND_TRANSMISSION
    )
    weights = 1 / idev**2
    residual = i - expected_per_bin(q)
    mean = float(np.sum(residual * weights) / np.sum(weights))
    sigma = float(np.sqrt(1 / np.sum(weights)))
    assert abs(mean - bias) < 4 * sigma
    assert abs(mean) > 8 * sigma  # the dark correction is visible


def test_incremental_run_after_a_new_sample_reuses_geometry_and_equals_a_full_run(
    demo_dir: Path, tmp_path: Path
) -> None:
    spec = load_pipeline_text(example_text("saxs"))
    live = ProcessingRunner(spec, cache=IncrementalCache(), artifacts_dir=tmp_path / "live")
    (tmp_path / "live").mkdir()
    run_saxs(demo_dir, tmp_path / "live", sources(demo_dir, sample=1), live)
    result = live.run(sources(demo_dir, sample=2))
    assert result.exit_code == 0
    # The expensive per-pixel work and the background branch are reused for a new sample.
    for step in ("geometry", "bins", "background.integrate", "dark.rate"):
        assert step in result.skipped_steps, (step, result.dirty_steps)
    assert "sample.integrate" in result.dirty_steps
    (tmp_path / "fresh").mkdir()
    full = run_saxs(demo_dir, tmp_path / "fresh", sources(demo_dir, sample=2))
    with h5py.File(tmp_path / "live" / "reduced.h5", "r") as f:
        partial = [f[f"/sasentry01/sasdata01/{k}"][()] for k in ("Q", "I", "Idev")]
    for a, b in zip(partial, full, strict=True):
        assert a.tobytes() == b.tobytes()  # bit-identical


def test_the_example_declares_what_the_contract_says() -> None:
    text = example_text("saxs")
    assert text.count("n_bins") == 1
    spec = load_pipeline_text(text)
    assert spec.sources == {"sample": True, "background": False, "dark": False}
    assert "geometry" in [step.id for step in spec.pipeline.steps]


def test_the_file_mask_is_what_keeps_bad_pixels_out(demo_dir: Path, tmp_path: Path) -> None:
    unmasked = tmp_path / "sample_unmasked.h5"
    unmasked.write_bytes((demo_dir / "sample_0001.h5").read_bytes())
    with h5py.File(unmasked, "a") as f:
        del f["/entry/instrument/detector/pixel_mask"]
    srcs = sources(demo_dir)
    srcs["sample"] = SourceSpec(type="hdf5", location=str(unmasked))
    (tmp_path / "out").mkdir()
    q, i, idev = run_saxs(demo_dir, tmp_path / "out", srcs)
    # Without the mask, hot pixels and the dead gap dominate: far outside the noise.
    assert np.max(np.abs(i - demodata.model_intensity(q)) / idev) > 100
