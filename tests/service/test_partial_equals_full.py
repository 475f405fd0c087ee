"""A partial run yields exactly what a full run on the same inputs yields (contract section 4).

MoDaCor's failure mode is partial reruns returning stale or wrong data. Here a session processes
sample 1 (full), then sample 2 (partial: geometry and bins reused from the cache); a second
session processes sample 2 from scratch (full). Their NXcanSAS curves must be identical to the
bit, and the hdf5/csv sinks must deliver that same curve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio.to_thread
import h5py
import numpy as np
import pytest
from runtime_harness import Harness, create_request, running

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from service.contract.models import SampleRequest, SinkInput, SourceInput
from service.contract.records import RunRecord
from service.runtime.config import Config

DATASETS = ("Q", "I", "Idev")


async def _finished(h: Harness, run_id: str) -> RunRecord:
    await h.recorder.wait_terminal(run_id)
    return await h.runtime.get_run(run_id)


def _curve(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f["/sasentry01/sasdata01"][name][()] for name in DATASETS}


def _reduced(h: Harness, run: RunRecord) -> Path:
    assert "reduced.h5" in run.artifacts, run.artifacts
    return h.config.runs_dir / run.session_id / run.run_id / "artifacts" / "reduced.h5"


@pytest.mark.anyio
async def test_partial_run_output_is_bit_identical_to_a_full_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    data = tmp_path / "frames"
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(data, count=2, shape=(128, 128), seed=3)
    )
    sample1, sample2, background, dark = files
    out = tmp_path / "out"
    out.mkdir()
    async with running(make_config(workers=2)) as h:
        rt = h.runtime
        for sid in ("inc", "ref"):
            await rt.create_session(
                create_request(sid, example_text("saxs"), source_profile="saxs")
            )
            await rt.put_sources(
                sid,
                [
                    SourceInput(ref="background", type="hdf5", location=str(background)),
                    SourceInput(ref="dark", type="hdf5", location=str(dark)),
                ],
            )
        await rt.put_sinks(
            "inc",
            [
                SinkInput(ref="nx", type="hdf5", location=str(out / "inc.h5")),
                SinkInput(ref="table", type="csv", location=str(out / "inc.csv")),
            ],
        )

        _, first = await rt.set_sample("inc", SampleRequest(location=str(sample1), process=True))
        assert first is not None
        warm = await _finished(h, first.run_id)
        assert (warm.status, warm.effective_mode) == ("succeeded", "full"), warm.error
        _, second = await rt.set_sample("inc", SampleRequest(location=str(sample2), process=True))
        assert second is not None
        partial = await _finished(h, second.run_id)
        assert (partial.status, partial.effective_mode) == ("succeeded", "partial"), partial.error
        assert "geometry" in partial.skipped_steps  # the costly per-pixel work was reused

        _, ref = await rt.set_sample("ref", SampleRequest(location=str(sample2), process=True))
        assert ref is not None
        full = await _finished(h, ref.run_id)
        assert (full.status, full.effective_mode) == ("succeeded", "full"), full.error

        got = await anyio.to_thread.run_sync(_curve, _reduced(h, partial))
        want = await anyio.to_thread.run_sync(_curve, _reduced(h, full))
        for name in DATASETS:
            assert got[name].dtype == want[name].dtype
            assert got[name].tobytes() == want[name].tobytes(), name
        # different samples really give different curves (the check above is not vacuous)
        first_curve = await anyio.to_thread.run_sync(_curve, _reduced(h, warm))
        assert first_curve["I"].tobytes() != want["I"].tobytes()

        # sinks hold the latest successful run's curve
        sink_curve = await anyio.to_thread.run_sync(_curve, out / "inc.h5")
        assert sink_curve["I"].tobytes() == want["I"].tobytes()
        table = np.loadtxt(out / "inc.csv", delimiter=",", skiprows=1)
        assert table.shape == (len(want["Q"]), 3)
        np.testing.assert_array_equal(table[:, 1], want["I"].astype(np.float64))
