"""Partial reruns keep working at real detector sizes: an Eiger 4M frame (2167 x 2070, 4.5 Mpx).

Its packed mask holds 70,000 uint64 words, more than arrays were once hashed up to; it is signed
by content now, so a new sample with the same mask reuses the binning and the background curve.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline import demodata
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.signatures import value_signature
from pipeline.step import SourceSpec
from pipeline.steps.masks import PackedMask

EIGER_4M = (2167, 2070)


def sources(directory: Path, sample: int) -> dict[str, SourceSpec]:
    return {
        "sample": SourceSpec(type="hdf5", location=str(directory / f"sample_{sample:04d}.h5")),
        "background": SourceSpec(type="hdf5", location=str(directory / "background.h5")),
        "dark": SourceSpec(type="hdf5", location=str(directory / "dark.h5")),
    }


def curve(path: Path) -> list[bytes]:
    with h5py.File(path, "r") as f:
        return [f[f"/sasentry01/sasdata01/{k}"][()].tobytes() for k in ("Q", "I", "Idev")]


def test_a_new_sample_at_4_5_mpx_reuses_bins_and_the_background_curve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    demodata.write_demo_data(data, count=2, shape=EIGER_4M, seed=1, compression="bslz4")
    spec = load_pipeline_text(example_text("saxs"))
    cache = IncrementalCache()
    first = ProcessingRunner(spec, cache=cache, artifacts_dir=tmp_path / "r1").run(sources(data, 1))
    assert first.exit_code == 0, first.error
    mask = first.values["detector.mask"]
    assert isinstance(mask, PackedMask) and mask.bits.size > 65_536

    second = ProcessingRunner(spec, cache=cache, artifacts_dir=tmp_path / "r2").run(
        sources(data, 2)
    )
    assert second.exit_code == 0, second.error
    # The new sample file is read for its mask ("mask", or "mask.sample" where the example
    # combines every frame's mask)...
    assert any(s == "mask" or s.startswith("mask.") for s in second.dirty_steps)
    # ...which is equal by content: the binning and the whole background branch are reused.
    for step in ("geometry", "bins", "dark.rate"):
        assert step in second.skipped_steps, (step, second.dirty_steps)
    background = [
        s for s in second.skipped_steps + second.dirty_steps if s.startswith("background")
    ]
    assert len(background) >= 5 and set(background) <= set(second.skipped_steps), background
    assert "sample.integrate" in second.dirty_steps

    # The partial run gives, bit for bit, what a full run on the new sample gives.
    full = ProcessingRunner(spec, artifacts_dir=tmp_path / "full").run(sources(data, 2))
    assert full.exit_code == 0, full.error
    assert curve(tmp_path / "r2" / "reduced.h5") == curve(tmp_path / "full" / "reduced.h5")


def test_a_changed_pixel_of_a_large_mask_changes_its_signature() -> None:
    mask = np.zeros((4096, 4096), dtype=bool)
    sig = value_signature(PackedMask.pack(mask))
    assert sig is not None and sig == value_signature(PackedMask.pack(mask.copy()))
    mask[4095, 4095] = True
    assert value_signature(PackedMask.pack(mask)) != sig
