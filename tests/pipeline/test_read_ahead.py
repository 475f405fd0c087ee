"""Frames read ahead for a queued run: the run gets exactly what its own read gives, only from
the very file it names, and the memory is bounded and let go."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import hdf5io
from pipeline.demodata import write_demo_data, write_sample_file
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec

SHAPE = (48, 40)
FRAME = "/entry/data/data"
MASK = "/entry/instrument/detector/pixel_mask"


@pytest.fixture(autouse=True)
def _enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNWIRE_READ_AHEAD", raising=False)


def sources(sample: Path, background: Path, dark: Path) -> dict[str, SourceSpec]:
    return {
        "sample": SourceSpec(type="hdf5", location=str(sample)),
        "background": SourceSpec(type="hdf5", location=str(background)),
        "dark": SourceSpec(type="hdf5", location=str(dark)),
    }


def curve(path: Path) -> bytes:
    with h5py.File(path, "r") as f:
        data = f["/sasentry01/sasdata01"]
        return b"".join(data[name][()].tobytes() for name in ("Q", "I", "Idev"))


def read_now(path: Path, dataset: str) -> np.ndarray:
    with hdf5io.open_hdf5(path) as handle:
        return hdf5io.read_array(handle, dataset)


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_a_run_on_frames_read_ahead_gives_the_same_curve_and_takes_them(
    tmp_path: Path, compression: str
) -> None:
    *samples, background, dark = write_demo_data(
        tmp_path / "d", count=3, shape=SHAPE, seed=4, compression=compression
    )
    spec = load_pipeline_text(example_text("saxs"))
    cache = IncrementalCache()
    runner = ProcessingRunner(spec, cache=cache, artifacts_dir=tmp_path / "a0")
    assert runner.run(sources(samples[0], background, dark)).exit_code == 0
    # The next sample's frame and mask are read while nothing else happens, then used.
    nxt = sources(samples[1], background, dark)
    assert runner.read_ahead(nxt, owner="t", refs=["sample"])
    assert hdf5io.wait_read_ahead("t", 30)
    assert hdf5io.read_ahead_bytes("t") >= 2 * SHAPE[0] * SHAPE[1]  # frame and mask
    ahead = ProcessingRunner(spec, cache=cache, artifacts_dir=tmp_path / "a1").run(nxt)
    assert ahead.exit_code == 0, ahead.error
    assert hdf5io.read_ahead_bytes("t") == 0, "the run took both arrays"
    # The same run without read-ahead (a fresh cache: same steps rerun) gives the same bytes.
    plain = ProcessingRunner(spec, artifacts_dir=tmp_path / "p1").run(nxt)
    assert plain.exit_code == 0
    assert curve(tmp_path / "a1" / "reduced.h5") == curve(tmp_path / "p1" / "reduced.h5")


def test_a_file_rewritten_after_its_read_ahead_is_read_again(tmp_path: Path) -> None:
    sample = tmp_path / "s.h5"
    write_sample_file(sample, 1, shape=SHAPE, seed=4)
    before = read_now(sample, FRAME)
    assert hdf5io.read_ahead("rw", [(str(sample), FRAME, True)])
    assert hdf5io.wait_read_ahead("rw", 30)
    assert hdf5io.read_ahead_bytes("rw") > 0
    # The detector writes the next frame to the same path.
    write_sample_file(sample, 2, shape=SHAPE, seed=4)
    after = read_now(sample, FRAME)
    assert not np.array_equal(before, after)
    # The stale array is never handed to a handle on the new file; the owner lets it go.
    assert np.array_equal(read_now(sample, FRAME), after)
    hdf5io.drop_read_ahead("rw", [str(sample)])
    assert hdf5io.read_ahead_bytes("rw") == 0


def test_read_ahead_is_bounded_and_an_owner_keeps_at_most_two_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for i in range(5):
        path = tmp_path / f"s{i}.h5"
        write_sample_file(path, i, shape=SHAPE, seed=4)
        files.append(path)
    frame_bytes = read_now(files[0], FRAME).nbytes
    # Room for two frames: a third read evicts the oldest entry.
    monkeypatch.setattr(hdf5io, "_AHEAD_MAX_BYTES", 2 * max(frame_bytes, SHAPE[0] * SHAPE[1] * 8))
    for path in files[:3]:
        assert hdf5io.read_ahead("b", [(str(path), FRAME, True)], keep=[str(p) for p in files])
        assert hdf5io.wait_read_ahead("b", 30)
    assert hdf5io.read_ahead_bytes("b") <= hdf5io._AHEAD_MAX_BYTES
    # The next run's read-ahead drops what belongs to neither it nor the run computing now.
    assert hdf5io.read_ahead("b", [(str(files[4]), FRAME, True)], keep=[str(files[3])])
    assert hdf5io.wait_read_ahead("b", 30)
    with hdf5io.open_hdf5(files[2]) as handle:
        assert hdf5io._take_ahead(handle, FRAME, True) is None
    hdf5io.drop_read_ahead("b")
    assert hdf5io.read_ahead_bytes("b") == 0


def test_read_ahead_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = tmp_path / "s.h5"
    write_sample_file(sample, 1, shape=SHAPE, seed=4)
    monkeypatch.setenv("RUNWIRE_READ_AHEAD", "0")
    assert not hdf5io.read_ahead("off", [(str(sample), FRAME, True)])
    assert hdf5io.read_ahead_bytes("off") == 0
