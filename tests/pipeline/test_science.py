"""The science test: the bundled `saxs` example recovers the known I(q) of the demo data.

Frames are drawn (Poisson, seeded) from `pipeline.demodata.model_intensity` with known geometry,
count times, transmissions, dark current and flat background. The example pipeline, loaded from
its YAML and run by the real runner, must give a curve that matches the model within the noise:
reduced chi-square near 1 using the `Idev` it reports.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import time
import warnings
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
from pipeline.runstate import RunResult
from pipeline.step import SourceSpec
from service.cli import main

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


def expected_per_bin(
    q_bins: np.ndarray, offset: float = 0.0, mask: np.ndarray | None = None
) -> np.ndarray:
    """The estimator's expectation: the model averaged over the unmasked pixels of each bin.

    Computed independently of the pipeline's code (trigonometric q, `np.linspace` edges).
    `mask` (True = masked) defaults to the demo files' own mask.
    """
    q_pix, _ = demodata.pixel_q(SHAPE)
    valid = ~(demodata.demo_mask(SHAPE, seed=7) if mask is None else mask)
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
    for step in ("geometry", "mask.combine", "bins", "background_curve", "dark.rate"):
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
    # Every file's mask counts, so all three lose theirs.
    srcs = {}
    for ref, name in (
        ("sample", "sample_0001.h5"),
        ("background", "background.h5"),
        ("dark", "dark.h5"),
    ):
        unmasked = tmp_path / f"unmasked_{name}"
        unmasked.write_bytes((demo_dir / name).read_bytes())
        with h5py.File(unmasked, "a") as f:
            del f["/entry/instrument/detector/pixel_mask"]
        srcs[ref] = SourceSpec(type="hdf5", location=str(unmasked))
    (tmp_path / "out").mkdir()
    q, i, idev = run_saxs(demo_dir, tmp_path / "out", srcs)
    # Without the mask, hot pixels and the dead gap dominate: far outside the noise.
    assert np.max(np.abs(i - demodata.model_intensity(q)) / idev) > 100


# --- every frame's own mask, geometry checks, in-place rewrites, NXcanSAS provenance ---------

DETECTOR = "/entry/instrument/detector"


def copy_of(demo_dir: Path, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"copy_{name}"
    path.write_bytes((demo_dir / name).read_bytes())
    return path


def run_full(srcs: dict[str, SourceSpec], out: Path) -> RunResult:
    out.mkdir(exist_ok=True)
    return ProcessingRunner(load_pipeline_text(example_text("saxs")), artifacts_dir=out).run(srcs)


@pytest.mark.parametrize("ref", ["background", "dark"])
def test_a_pixel_masked_only_in_the_background_or_dark_file_is_left_out_of_every_curve(
    demo_dir: Path, tmp_path: Path, ref: str
) -> None:
    # Five hot pixels, spread over q, that only the background (or dark) file masks.
    base_mask = demodata.demo_mask(SHAPE, seed=7)
    candidates = np.flatnonzero(~base_mask.reshape(-1))
    hot = candidates[np.linspace(0, candidates.size - 1, 7).astype(int)[1:-1]]
    name = {"background": "background.h5", "dark": "dark.h5"}[ref]
    path = copy_of(demo_dir, tmp_path, name)
    with h5py.File(path, "a") as f:
        counts, mask = f["/entry/data/data"][()], f[f"{DETECTOR}/pixel_mask"][()]
        counts.reshape(-1)[hot] = demodata.HOT_PIXEL_COUNTS
        mask.reshape(-1)[hot] = 1
        f["/entry/data/data"][...] = counts
        f[f"{DETECTOR}/pixel_mask"][...] = mask
    with h5py.File(demo_dir / "sample_0001.h5", "r") as f:  # the sample does not mask them
        assert not f[f"{DETECTOR}/pixel_mask"][()].reshape(-1)[hot].any()
    srcs = sources(demo_dir)
    srcs[ref] = SourceSpec(type="hdf5", location=str(path))

    result = run_full(srcs, tmp_path / "out")
    assert result.exit_code == 0, result.error
    union = base_mask.copy()
    union.reshape(-1)[hot] = True
    for curve in ("sample.curve", "background.curve"):
        assert int(result.values[curve].n_pixels.sum()) == int((~union).sum()), curve
    with h5py.File(tmp_path / "out" / "reduced.h5", "r") as f:
        q, i, idev = (f[f"/sasentry01/sasdata01/{k}"][()] for k in ("Q", "I", "Idev"))
    assert 0.7 < reduced_chi2(i, idev, expected_per_bin(q, mask=union)) < 1.4


def test_a_background_taken_at_another_distance_fails_the_run_naming_source_and_field(
    demo_dir: Path, tmp_path: Path
) -> None:
    path = copy_of(demo_dir, tmp_path, "background.h5")
    with h5py.File(path, "a") as f:
        f[f"{DETECTOR}/distance"][...] = f[f"{DETECTOR}/distance"][()] * 1.25
    srcs = sources(demo_dir)
    srcs["background"] = SourceSpec(type="hdf5", location=str(path))
    result = run_full(srcs, tmp_path / "out")
    assert result.exit_code == 2 and result.error is not None
    assert result.error.failed_step == "background.same_geometry"
    message = result.error.message
    assert message.startswith("GEOMETRY_MISMATCH:"), message
    assert "'background'" in message and "distance" in message
    assert "wavelength" not in message  # only what differs is named
    assert "reduced.h5" not in result.artifacts


def test_geometry_within_the_tolerance_passes_and_every_differing_field_is_named(
    demo_dir: Path, tmp_path: Path
) -> None:
    close = copy_of(demo_dir, tmp_path, "dark.h5")
    with h5py.File(close, "a") as f:  # 1e-8 relative: rounding, not another geometry
        f[f"{DETECTOR}/beam_center_x"][...] = f[f"{DETECTOR}/beam_center_x"][()] * (1 + 1e-8)
    srcs = sources(demo_dir)
    srcs["dark"] = SourceSpec(type="hdf5", location=str(close))
    assert run_full(srcs, tmp_path / "ok").exit_code == 0

    far = copy_of(demo_dir, tmp_path, "background.h5")
    with h5py.File(far, "a") as f:
        f[f"{DETECTOR}/beam_center_y"][...] = f[f"{DETECTOR}/beam_center_y"][()] + 3
        wavelength = "/entry/instrument/monochromator/wavelength"
        f[wavelength][...] = f[wavelength][()] * 1.01
    srcs = sources(demo_dir)
    srcs["background"] = SourceSpec(type="hdf5", location=str(far))
    result = run_full(srcs, tmp_path / "bad")
    assert result.error is not None
    assert "beam_center_y" in result.error.message and "wavelength" in result.error.message
    assert "distance" not in result.error.message


def rewrite_in_place_keeping_size_and_mtime(path: Path) -> None:
    """Change one pixel's counts inside the file, then restore its mtime (as some copy tools
    and detector software do). The data set is contiguous, so the size stays the same."""
    before = os.stat(path)
    with h5py.File(path, "r+") as f:
        data = f["/entry/data/data"]
        data[0, 0] = data[0, 0] + 1000
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # The kernel stamps ctime with a coarse clock: wait (on the condition, bounded) until it
    # moved, which it has long done unless the file was written a tick ago.
    deadline = time.monotonic() + 10
    while os.stat(path).st_ctime_ns == before.st_ctime_ns and time.monotonic() < deadline:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_ctime_ns != before.st_ctime_ns


def test_a_file_rewritten_in_place_with_size_and_mtime_kept_is_seen_as_changed(
    demo_dir: Path, tmp_path: Path
) -> None:
    live = copy_of(demo_dir, tmp_path, "sample_0001.h5")
    srcs = sources(demo_dir)
    srcs["sample"] = SourceSpec(type="hdf5", location=str(live))
    runner = ProcessingRunner(
        load_pipeline_text(example_text("saxs")), cache=IncrementalCache(), artifacts_dir=tmp_path
    )
    assert runner.run(srcs).exit_code == 0
    assert runner.run(srcs, dry_run=True).plan.dirty_steps == ["write"]  # nothing else changed

    rewrite_in_place_keeping_size_and_mtime(live)
    plan = runner.run(srcs, dry_run=True).plan
    assert "source_changed:sample" in plan.reasons["sample.frame"]
    result = runner.run(srcs)
    assert result.exit_code == 0 and "sample.frame" in result.dirty_steps
    assert "background.frame" in result.skipped_steps


def test_nxcansas_file_holds_mask_run_id_and_provenance(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srcs = sources(demo_dir)
    args = ["run", "saxs", "--out", str(tmp_path / "runs")]
    for ref, spec in srcs.items():
        args += ["--source", f"{ref}={spec.location}"]
    assert main(args) == 0
    capsys.readouterr()
    (run_dir,) = (tmp_path / "runs").iterdir()
    with h5py.File(run_dir / "artifacts" / "reduced.h5", "r") as f:
        check_nxcansas_structure(f)
        entry = f["sasentry01"]
        assert entry["run"][()].decode() == run_dir.name
        data = entry["sasdata01"]
        assert data.attrs["mask"] == "Mask"
        assert data["Mask"].shape == data["I"].shape and not data["Mask"][()].any()
        process = entry["sasprocess01"]
        assert (process.attrs["NX_class"], process.attrs["canSAS_class"]) == (
            "NXprocess",
            "SASprocess",
        )
        text = {k: v[()].decode() for k, v in process.items() if v.dtype.kind in "SO"}
        assert text["runwire_version"] == importlib.metadata.version("runwire")
        assert (text["pipeline"], text["pipeline_version"]) == (
            "saxs",
            load_pipeline_text(example_text("saxs")).version,
        )
        for ref, spec in srcs.items():
            assert text[f"source_{ref}"] == str(Path(spec.location).resolve())
            want = hashlib.sha256(Path(spec.location).read_bytes()).hexdigest()
            assert text[f"source_{ref}_sha256"] == want


def check_nxcansas_structure(f: h5py.File) -> None:
    """What the NXcanSAS application definition requires, checked by hand (NeXus NXcanSAS.nxdl.xml:
    SASentry with @version, definition, title, run; SASdata with @signal=I, @I_axes, @Q_indices,
    @mask naming a field of I's shape; Q with 1/nm units; I with @uncertainties naming Idev)."""
    entry_name = f.attrs["default"]
    entry = f[entry_name]
    assert (entry.attrs["NX_class"], entry.attrs["canSAS_class"]) == ("NXentry", "SASentry")
    assert entry.attrs["version"] == "1.1" and entry["definition"][()] == b"NXcanSAS"
    assert entry["title"][()] and entry["run"].shape == ()
    data = entry[entry.attrs["default"]]
    assert (data.attrs["NX_class"], data.attrs["canSAS_class"]) == ("NXdata", "SASdata")
    assert (
        data.attrs["signal"] == "I" and data.attrs["I_axes"] == "Q" and data.attrs["Q_indices"] == 0
    )
    assert data["Q"].attrs["units"] in ("1/m", "1/nm", "1/angstrom")
    assert data["I"].attrs["uncertainties"] == "Idev" and data["Idev"].shape == data["I"].shape
    assert data["Q"].shape == data["I"].shape == data[data.attrs["mask"]].shape
    assert data[data.attrs["mask"]].dtype.kind in "biu"


def test_pynxtools_nxcansas_validator_accepts_the_file(demo_dir: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecations are not ours to fail on
        validation = pytest.importorskip(
            "pynxtools.dataconverter.validation", reason="pynxtools is not installed"
        )
    out = tmp_path / "r-nxcansas" / "artifacts"
    out.mkdir(parents=True)
    result = ProcessingRunner(load_pipeline_text(example_text("saxs")), artifacts_dir=out).run(
        sources(demo_dir)
    )
    assert result.exit_code == 0
    path = out / "reduced.h5"
    with warnings.catch_warnings(), h5py.File(path, "r") as f:
        warnings.simplefilter("ignore")
        assert validation.validate_hdf_group_against("NXcanSAS", f["sasentry01"], str(path))


def test_runwire_run_reports_a_geometry_mismatch_in_one_line_and_the_summary(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dark = copy_of(demo_dir, tmp_path, "dark.h5")
    with h5py.File(dark, "a") as f:  # a dark frame of another detector: 16 columns fewer
        data = f["/entry/data/data"][()]
        del f["/entry/data/data"]
        f["/entry/data/data"] = data[:, :-16]
    args = ["run", "saxs", "--source", f"sample={demo_dir / 'sample_0001.h5'}",
            "--source", f"dark={dark}", "--out", str(tmp_path / "runs")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "GEOMETRY_MISMATCH" in err and "Traceback" not in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 2
    assert summary["error"]["failed_step"] == "dark.same_geometry"
    assert summary["error"]["message"].startswith("GEOMETRY_MISMATCH: source 'dark'")
    assert (
        f"frame shape ({SHAPE[0]}x{SHAPE[1] - 16} vs {SHAPE[0]}x{SHAPE[1]})"
        in summary["error"]["message"]
    )
