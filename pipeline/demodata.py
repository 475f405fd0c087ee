"""Synthetic NeXus detector frames drawn from a known analytic I(q), for demos and the science test.

Every file has the layout of CONTRACT section 2. The generative model per pixel, with relative
solid angle Ω = cos³ 2θ, dark current D, flat background B and model intensity I(q):

- sample k:    counts ~ Poisson(t_k · (T_k · (I(q) + B) · Ω + D))
- background:  counts ~ Poisson(t_b · (T_b · B · Ω + D))
- dark:        counts ~ Poisson(t_d · D)

so that dark subtraction, time and transmission normalisation, solid-angle division, azimuthal
averaging and background subtraction recover I(q). Samples differ in count time and
transmission only: a new sample changes the frame but never the geometry.

q is computed here with trigonometric functions, independently of `pipeline.steps.geometry`,
so that the science test cross-checks the geometry code.

Frames are stored as a detector would (`compression`): `none`, int32, contiguous; `gzip`,
int32, deflate level 1 in chunks of whole rows (about 256 KiB each, so that a frame decompresses
on every core); `bslz4`, as a DECTRIS Eiger writes it: a uint32 stack of one frame,
`(1, rows, cols)`, one chunk per frame, bitshuffle-LZ4 (`hdf5plugin.Bitshuffle(cname="lz4")`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

COMPRESSIONS = ("none", "gzip", "bslz4")
MAX_SIDE = 4096  # the largest frame side `runwire demo-data --shape` accepts

SPHERE_RADIUS_NM = 4.0
I0 = 2000.0  # counts/s per beam-centre pixel at q -> 0, at unit transmission
FLAT_BACKGROUND = 20.0  # B, counts/s per beam-centre pixel
DARK_RATE = 1.0  # D, counts/s per pixel
DISTANCE_M = 2.0
WAVELENGTH_NM = 0.1
PIXEL_SIZE_1024_M = 75e-6  # pixel size for a 1024-wide detector; scaled so q range is the same
BACKGROUND_TIME_S, BACKGROUND_TRANSMISSION = 2.0, 0.9
DARK_TIME_S = 10.0
HOT_PIXEL_COUNTS = 1_000_000


def model_intensity(q: np.ndarray | float) -> np.ndarray:
    """The demo sample's I(q) (q in 1/nm): a sphere form factor of radius 4 nm times `I0`."""
    x = np.asarray(q, dtype=np.float64) * SPHERE_RADIUS_NM
    with np.errstate(divide="ignore", invalid="ignore"):
        amplitude = 3.0 * (np.sin(x) - x * np.cos(x)) / x**3
    # The series limit near x = 0, where the closed form loses all its digits.
    small = np.abs(x) < 1e-2
    amplitude = np.where(small, 1.0 - x * x / 10.0, amplitude)
    return I0 * amplitude * amplitude


def demo_geometry(shape: tuple[int, int] = (1024, 1024)) -> dict[str, Any]:
    """The geometry dict (`nexus.detector_geometry` output) of demo files of this shape."""
    rows, cols = shape
    return {
        "distance_m": DISTANCE_M,
        "pixel_size_x_m": PIXEL_SIZE_1024_M * 1024 / cols,
        "pixel_size_y_m": PIXEL_SIZE_1024_M * 1024 / rows,
        "beam_center_x_px": 0.52 * cols + 0.3,
        "beam_center_y_px": 0.47 * rows + 0.2,
        "wavelength_nm": WAVELENGTH_NM,
        "shape": [rows, cols],
    }


def sample_exposure(index: int) -> dict[str, float]:
    """Count time and transmission of demo sample `index` (1-based)."""
    return {
        "count_time_s": 1.0 + 0.1 * ((index - 1) % 10),
        "transmission": 0.7 + 0.01 * ((index - 1) % 10),
    }


@lru_cache(maxsize=2)
def pixel_q(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """q (1/nm) and cos³ 2θ per pixel, from 2θ = atan(r / d) and q = 4π/λ sin θ directly.

    Kept for the last two shapes (read-only), since every file of a data set needs them.
    """
    q, omega = _pixel_q(shape)
    q.flags.writeable = omega.flags.writeable = False
    return q, omega


def _pixel_q(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    g = demo_geometry(shape)
    rows, cols = shape
    yy, xx = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    dx = (xx - g["beam_center_x_px"]) * g["pixel_size_x_m"]
    dy = (yy - g["beam_center_y_px"]) * g["pixel_size_y_m"]
    two_theta = np.arctan(np.hypot(dx, dy) / g["distance_m"])
    q = 4 * np.pi / g["wavelength_nm"] * np.sin(two_theta / 2)
    return q, np.cos(two_theta) ** 3


def demo_mask(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The pixel mask (True = masked): beamstop disk, a module gap and scattered hot pixels."""
    g = demo_geometry(shape)
    rows, cols = shape
    yy, xx = np.ogrid[:rows, :cols]
    radius = 0.025 * cols
    mask: np.ndarray = (xx + 0.5 - g["beam_center_x_px"]) ** 2 + (
        yy + 0.5 - g["beam_center_y_px"]
    ) ** 2 < radius**2
    gap = int(0.6 * rows)
    mask[gap : gap + max(rows // 64, 1), :] = True
    rng = np.random.default_rng([seed, 999])
    hot = rng.choice(rows * cols, size=max(rows * cols // 2000, 1), replace=False)
    mask.reshape(-1)[hot] = True
    return mask


def frame_storage(
    compression: str, shape: tuple[int, int]
) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    """(dtype, stored shape, `create_dataset` keywords) of a frame stored with `compression`."""
    rows, cols = shape
    if compression == "none":
        return np.int32, shape, {}
    if compression == "gzip":
        rows_per_chunk = max(1, min(rows, 65_536 // max(cols, 1)))
        return np.int32, shape, {"chunks": (rows_per_chunk, cols), "compression": "gzip",
                                 "compression_opts": 1}  # fmt: skip
    if compression == "bslz4":
        return np.uint32, (1, rows, cols), {"chunks": (1, rows, cols),
                                           **hdf5plugin.Bitshuffle(cname="lz4")}  # fmt: skip
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")


def _write_file(
    path: Path,
    counts: np.ndarray,
    shape: tuple[int, int],
    mask: np.ndarray,
    count_time: float,
    transmission: float | None,
    compression: str = "none",
) -> None:
    g = demo_geometry(shape)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        dtype, stored, options = frame_storage(compression, shape)
        data.create_dataset("data", data=counts.astype(dtype).reshape(stored), **options)
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        # Mixed units on purpose: readers must honour the `units` attribute of each dataset.
        for name, value, units in (
            ("distance", g["distance_m"] * 1e3, "mm"),
            ("x_pixel_size", g["pixel_size_x_m"] * 1e3, "mm"),
            ("y_pixel_size", g["pixel_size_y_m"], "m"),
            ("count_time", count_time, "s"),
        ):
            det.create_dataset(name, data=value).attrs["units"] = units
        det.create_dataset("beam_center_x", data=g["beam_center_x_px"]).attrs["units"] = "pixel"
        det.create_dataset("beam_center_y", data=g["beam_center_y_px"]).attrs["units"] = "pixel"
        det.create_dataset("pixel_mask", data=mask.astype(np.int32))
        mono = inst.create_group("monochromator")
        mono.attrs["NX_class"] = "NXmonochromator"
        mono.create_dataset("wavelength", data=g["wavelength_nm"] * 10).attrs["units"] = "Angstrom"
        if transmission is not None:
            sample = entry.create_group("sample")
            sample.attrs["NX_class"] = "NXsample"
            sample.create_dataset("transmission", data=transmission)
    os.replace(tmp, path)


def _spoil_masked(counts: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> None:
    """Give masked pixels values that would visibly spoil a reduction that ignored the mask."""
    rows = shape[0]
    gap = int(0.6 * rows)
    counts[gap : gap + max(rows // 64, 1), :] = 0  # a dead module gap reads zero
    flat = counts.reshape(-1)
    flat[mask.reshape(-1) & (flat > 0)] = HOT_PIXEL_COUNTS  # hot pixels, beamstop edge glow


def write_sample_file(
    path: Path,
    index: int,
    *,
    shape: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    compression: str = "none",
) -> Path:
    """Write demo sample number `index` (1-based) to `path` and return it."""
    q, omega = pixel_q(shape)
    mask = demo_mask(shape, seed)
    exp = sample_exposure(index)
    t, tr = exp["count_time_s"], exp["transmission"]
    rate = tr * (model_intensity(q) + FLAT_BACKGROUND) * omega + DARK_RATE
    counts = np.random.default_rng([seed, index]).poisson(t * rate).astype(np.int32)
    _spoil_masked(counts, mask, shape)
    _write_file(path, counts, shape, mask, t, tr, compression)
    return path


def write_demo_data(
    directory: str | os.PathLike[str],
    *,
    count: int = 3,
    shape: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    compression: str = "none",
) -> list[Path]:
    """Write `sample_0001.h5` ... `sample_NNNN.h5`, `background.h5` and `dark.h5` into `directory`.

    Returns the paths in that order. The same arguments always give the same files (and the same
    counts whatever the `compression`).
    """
    frame_storage(compression, (1, 1))  # an unknown compression fails before anything is written
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shape = (int(shape[0]), int(shape[1]))
    paths = [
        write_sample_file(
            out / f"sample_{k:04d}.h5", k, shape=shape, seed=seed, compression=compression
        )
        for k in range(1, count + 1)
    ]
    _, omega = pixel_q(shape)
    mask = demo_mask(shape, seed)
    bg_rate = BACKGROUND_TRANSMISSION * FLAT_BACKGROUND * omega + DARK_RATE
    bg = np.random.default_rng([seed, 0, 1]).poisson(BACKGROUND_TIME_S * bg_rate).astype(np.int32)
    _spoil_masked(bg, mask, shape)
    _write_file(out / "background.h5", bg, shape, mask, BACKGROUND_TIME_S,
                BACKGROUND_TRANSMISSION, compression)  # fmt: skip
    dark = (
        np.random.default_rng([seed, 0, 2])
        .poisson(DARK_TIME_S * DARK_RATE, size=shape)
        .astype(np.int32)
    )
    _write_file(out / "dark.h5", dark, shape, mask, DARK_TIME_S, None, compression)
    return [*paths, out / "background.h5", out / "dark.h5"]
