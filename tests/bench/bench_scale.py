"""Detector sizes and compressions, run by hand: `python tests/bench/bench_scale.py [--quick]`.

For each frame size (1, 4.5 and 16.8 Mpx) and storage (uncompressed, gzip, bitshuffle-LZ4 as an
Eiger writes it), in the same process and on the same files, median of `--repeats` samples:

- partial: the saxs example through `ProcessingRunner` with a warm `IncrementalCache`, a new
  sample file each run (what a beamline does all day);
- full: the same without a cache;
- floor: `h5py` reading the frame (same compression), then the minimum arithmetic this reduction
  needs with everything that does not depend on the sample precomputed (bin index, 1/Ω, 1/Ω²,
  the dark and background curves): `frame · (1/Ω)` and `frame · (1/Ω²)` in float64 and two
  weighted `np.bincount`s;
- pyFAI: `h5py` read + `AzimuthalIntegrator.integrate1d(frame, 200, mask=..., unit="q_nm^-1",
  method=("no", "histogram", "cython"), correctSolidAngle=True, error_model="poisson")`
  (pyFAI from the `bench` extra; skipped when missing).

Floor, pyFAI and the partial run are interleaved sample by sample, so that all three meet the
same load; it prints their medians, the medians of the per-sample ratios partial/floor and
partial/pyFAI, the full run (median of up to 3), then the partial run's per-step medians at
each size (where the time goes).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline import demodata
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec
from pipeline.steps.geometry import pixel_q_and_solid_angle
from pipeline.steps.integrate import make_binning

SIZES = {"1Mpx": (1024, 1024), "4.5Mpx": (2167, 2070), "16.8Mpx": (4096, 4096)}
FRAME = "/entry/data/data"
N_BINS = 200


def write_data(root: Path, shape: tuple[int, int], compression: str, samples: int) -> Path:
    """Demo data (samples + background + dark) stored with `compression`."""
    folder = root / f"{shape[0]}x{shape[1]}-{compression}"
    demodata.write_demo_data(folder, count=samples, shape=shape, seed=0, compression=compression)
    return folder


def sources(folder: Path, i: int) -> dict[str, SourceSpec]:
    return {
        "sample": SourceSpec(type="hdf5", location=str(folder / f"sample_{i:04d}.h5")),
        "background": SourceSpec(type="hdf5", location=str(folder / "background.h5")),
        "dark": SourceSpec(type="hdf5", location=str(folder / "dark.h5")),
    }


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def check(result: Any) -> Any:
    assert result.exit_code == 0, result.error
    return result


def make_floor(folder: Path, shape: tuple[int, int]) -> Callable[[int], None]:
    """The floor for sample i: h5py read + two multiplications + two weighted bincounts."""
    q, omega = pixel_q_and_solid_angle(demodata.demo_geometry(shape))
    binning = make_binning(q, demodata.demo_mask(shape), N_BINS)
    r1 = 1.0 / omega.reshape(-1).astype(np.float64)
    r2 = r1 * r1
    weights = np.empty(r1.size, dtype=np.float64)

    def floor(i: int) -> None:
        with h5py.File(folder / f"sample_{i:04d}.h5", "r") as f:
            frame = f[FRAME][()].reshape(-1)
        np.multiply(frame, r1, out=weights)
        np.bincount(binning.index, weights=weights, minlength=N_BINS + 1)
        np.multiply(frame, r2, out=weights)
        np.bincount(binning.index, weights=weights, minlength=N_BINS + 1)

    return floor


def make_pyfai(folder: Path, shape: tuple[int, int]) -> Callable[[int], None] | None:
    """pyFAI for sample i: h5py read + integrate1d (histogram, cython), or None without pyFAI."""
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:
        try:
            from pyFAI.azimuthalIntegrator import AzimuthalIntegrator  # older pyFAI
        except ImportError:
            return None
    g = demodata.demo_geometry(shape)
    ai = AzimuthalIntegrator(
        dist=g["distance_m"],
        poni1=g["beam_center_y_px"] * g["pixel_size_y_m"],
        poni2=g["beam_center_x_px"] * g["pixel_size_x_m"],
        pixel1=g["pixel_size_y_m"],
        pixel2=g["pixel_size_x_m"],
        wavelength=g["wavelength_nm"] * 1e-9,
    )
    mask = demodata.demo_mask(shape)
    method = ("no", "histogram", "cython")

    def pyfai(i: int) -> None:
        with h5py.File(folder / f"sample_{i:04d}.h5", "r") as f:
            frame = f[FRAME][()].reshape(shape)
        ai.integrate1d(frame, N_BINS, mask=mask, unit="q_nm^-1", method=method,
                       correctSolidAngle=True, error_model="poisson")  # fmt: skip

    pyfai(1)  # warm-up: pyFAI builds its geometry arrays once
    return pyfai


def bench_one(folder: Path, shape: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Floor, pyFAI and partial run interleaved per sample (the same load for all three)."""
    spec = load_pipeline_text(example_text("saxs"))
    floor, pyfai = make_floor(folder, shape), make_pyfai(folder, shape)
    cache = IncrementalCache()
    check(
        ProcessingRunner(spec, cache=cache, artifacts_dir=folder / "warm").run(sources(folder, 1))
    )
    times: dict[str, list[float]] = {"floor": [], "pyfai": [], "partial": [], "full": []}
    steps: dict[str, list[float]] = {}
    for i in range(2, repeats + 2):
        times["floor"].append(timed(lambda i=i: floor(i)))
        if pyfai is not None:
            times["pyfai"].append(timed(lambda i=i: pyfai(i)))
        runner = ProcessingRunner(spec, cache=cache, artifacts_dir=folder / f"inc{i}")
        t0 = time.perf_counter()
        result = check(runner.run(sources(folder, i)))
        times["partial"].append((time.perf_counter() - t0) * 1000)
        for step in result.dirty_steps:
            steps.setdefault(step, []).append(result.step_durations_s[step] * 1000)
    for i in range(2, min(repeats, 3) + 2):
        runner = ProcessingRunner(spec, artifacts_dir=folder / f"full{i}")
        times["full"].append(timed(lambda r=runner, i=i: check(r.run(sources(folder, i)))))
    out: dict[str, Any] = {k: statistics.median(v) if v else None for k, v in times.items()}
    # Ratios of each sample's paired measurements (robust to load drifting during the run).
    out["vs_floor"] = statistics.median(
        p / f for p, f in zip(times["partial"], times["floor"], strict=True)
    )
    out["vs_pyfai"] = (
        statistics.median(p / f for p, f in zip(times["partial"], times["pyfai"], strict=True))
        if times["pyfai"] else None
    )  # fmt: skip
    out["steps"] = {k: statistics.median(v) for k, v in steps.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"of {', '.join(SIZES)}")
    parser.add_argument("--compressions", default="none,gzip,bslz4")
    parser.add_argument("--repeats", type=int, default=5, help="samples per measurement")
    parser.add_argument("--quick", action="store_true", help="1 Mpx only, 3 repeats")
    args = parser.parse_args()
    sizes = ["1Mpx"] if args.quick else args.sizes.split(",")
    repeats = 3 if args.quick else args.repeats
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, "
          f"numpy {np.__version__}, h5py {h5py.__version__}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'size':>8} {'storage':>7} {'partial':>9} {'full':>9} {'floor':>9} {'pyFAI':>9} "
          f"{'part/floor':>10} {'part/pyFAI':>10}")  # fmt: skip
    profiles: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            shape = SIZES[size]
            for compression in args.compressions.split(","):
                folder = write_data(Path(tmp), shape, compression, repeats + 1)
                r = bench_one(folder, shape, repeats)
                profiles[f"{size} {compression}"] = r["steps"]
                pyfai_text = "-" if r["pyfai"] is None else f"{r['pyfai']:7.1f}ms"
                ratio_pyfai = "-" if r["vs_pyfai"] is None else f"{r['vs_pyfai']:9.2f}x"
                print(f"{size:>8} {compression:>7} {r['partial']:7.1f}ms {r['full']:7.1f}ms "
                      f"{r['floor']:7.1f}ms {pyfai_text:>9} {r['vs_floor']:9.2f}x "
                      f"{ratio_pyfai:>10}", flush=True)  # fmt: skip
                for child in folder.iterdir():  # free the disk before the next storage
                    if child.is_file():
                        child.unlink()
    print("\npartial run, per step (median ms; steps that ran):")
    for key, steps in profiles.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1]))
        print(f"  {key}: {parts}")


if __name__ == "__main__":
    main()
