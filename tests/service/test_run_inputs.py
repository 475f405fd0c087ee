"""Each run reduces the inputs it was submitted with (issue 8, item 1).

A run's sources are fixed when it is accepted (the 202), not when a worker gets to it: a burst of
samples queued behind one another is one reduction per sample, in submission order; a coalesced
submit says which samples it superseded; a run survives a restart with its own sources; and a
file rewritten after acceptance fails the run rather than succeed on data it was not given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import h5py
import msgspec
import numpy as np
import pytest
from api_support import Api, busy_worker, finished_run, run_events
from conftest import running_api

from pipeline.demodata import write_demo_data, write_sample_file
from pipeline.examples import example_text
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec
from service.http.state import service_state
from service.runtime.config import Config

SHAPE = (64, 64)
DATASETS = ("Q", "I", "Idev")
Curve = dict[str, np.ndarray]


def read_curve(path: Path) -> Curve:
    with h5py.File(path, "r") as f:
        return {name: f["/sasentry01/sasdata01"][name][()] for name in DATASETS}


def reference_curves(samples: list[Path], background: Path, dark: Path, out: Path) -> list[Curve]:
    """Each sample reduced in-process by a fresh runner (no cache, no service)."""
    spec = load_pipeline_text(example_text("saxs"))
    curves = []
    for index, sample in enumerate(samples):
        artifacts = out / f"ref{index}"
        artifacts.mkdir(parents=True)
        sources = {
            "sample": SourceSpec(type="hdf5", location=str(sample)),
            "background": SourceSpec(type="hdf5", location=str(background)),
            "dark": SourceSpec(type="hdf5", location=str(dark)),
        }
        result = ProcessingRunner(spec, artifacts_dir=artifacts).run(sources)
        assert result.exit_code == 0, result.error
        curves.append(read_curve(artifacts / "reduced.h5"))
    return curves


def assert_same_curve(got: Curve, want: Curve, what: str) -> None:
    for name in DATASETS:
        assert np.array_equal(got[name], want[name], equal_nan=True), f"{what}: {name} differs"


def run_dir(api: Api, run: dict[str, Any]) -> Path:
    return api.config.runs_dir / run["session_id"] / run["run_id"]


async def make_saxs_session(api: Api, sid: str, background: Path, dark: Path) -> None:
    body = {
        "session_id": sid,
        "pipeline": {"yaml_text": example_text("saxs")},
        "source_profile": "saxs",
    }
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    sources = {
        "sources": [
            {"ref": "background", "type": "hdf5", "location": str(background)},
            {"ref": "dark", "type": "hdf5", "location": str(dark)},
        ]
    }
    response = await api.client.put(f"/v1/sessions/{sid}/sources", json=sources)
    assert response.status_code == 200, response.text


async def submit_sample(api: Api, sid: str, path: Path) -> dict[str, Any]:
    body = {"location": str(path), "process": True}
    response = await api.client.post(f"/v1/sessions/{sid}/sample", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
async def frames(tmp_path: Path) -> list[Path]:
    """50 demo samples (64x64), then background and dark."""
    return await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=50, shape=SHAPE, seed=7)
    )


@pytest.mark.anyio
async def test_a_burst_of_50_samples_gives_the_50_reductions_in_order(
    api: Api, frames: list[Path], tmp_path: Path
) -> None:
    *samples, background, dark = frames
    await make_saxs_session(api, "burst", background, dark)
    subscription = await service_state(api.app).broker.subscribe(
        sessions=["burst"], queue_size=100_000
    )
    try:
        accepted = [await submit_sample(api, "burst", path) for path in samples]
        run_ids = [a["run_id"] for a in accepted]
        assert len(set(run_ids)) == 50
        for answer, path in zip(accepted, samples, strict=True):
            assert answer["sample"] == {"location": str(path), "type": "hdf5"}
        events: list[dict[str, Any]] = []
        with anyio.fail_after(180):
            while sum(e["type"] == "run.finished" for e in events) < 50:
                events += [msgspec.json.decode(e.raw) for e in await subscription.get_batch()]
    finally:
        subscription.close()

    started = [e["runid"] for e in events if e["type"] == "run.started"]
    assert started == run_ids, "runs of one session start in submission order"
    # A run may start while its acceptance is being synced; it is announced queued first all
    # the same, and each run's events read queued -> started -> finished.
    for run_id in run_ids:
        own = [e["type"] for e in events if e.get("runid") == run_id]
        assert own[:2] == ["run.queued", "run.started"] and own[-1] == "run.finished", own
    finished = {e["runid"]: e["data"] for e in events if e["type"] == "run.finished"}
    references = await anyio.to_thread.run_sync(
        reference_curves, samples, background, dark, tmp_path / "ref"
    )
    curves = []
    for index, (run_id, path) in enumerate(zip(run_ids, samples, strict=True)):
        assert finished[run_id]["status"] == "succeeded", finished[run_id]
        assert finished[run_id]["sample"]["location"] == str(path)
        run = (await api.client.get(f"/v1/runs/{run_id}")).json()
        assert run["sample"] == {"location": str(path), "type": "hdf5"}
        # Consecutive runs with different samples stay partial: the cache is the session's.
        assert run["effective_mode"] == ("full" if index == 0 else "partial"), run
        directory = run_dir(api, run)
        request = json.loads((directory / "run-request.json").read_text())
        assert request["sources"]["sample"]["location"] == str(path)
        summary = json.loads((directory / "summary.json").read_text())
        assert summary["sample"]["location"] == str(path)
        curve = read_curve(directory / "artifacts" / "reduced.h5")
        assert_same_curve(curve, references[index], f"run {index} ({path.name})")
        curves.append(curve["I"].tobytes())
    assert len(set(curves)) == 50, "50 samples, 50 distinct curves"


@pytest.mark.anyio
async def test_a_coalesced_submit_says_which_sample_it_superseded(
    make_api: Callable[..., AbstractAsyncContextManager[Api]], tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=3, shape=SHAPE, seed=1)
    )
    first, second, third, background, dark = files
    async with make_api(workers=1) as api, busy_worker(api):
        await make_saxs_session(api, "co", background, dark)
        queued = await submit_sample(api, "co", first)
        assert (queued["merged"], queued["coalesced"]) == (False, [])
        for path in (second, third):
            body = {"location": str(path)}  # set the sample, submit nothing
            assert (await api.client.post("/v1/sessions/co/sample", json=body)).status_code == 200
            response = await api.client.post("/v1/sessions/co/process", json={"coalesce": True})
            assert response.status_code == 202, response.text
        merged = response.json()
        assert merged["run_id"] == queued["run_id"]
        assert merged["merged"] is True
        assert merged["sample"] == {"location": str(third), "type": "hdf5"}
        superseded = [{"location": str(p), "type": "hdf5"} for p in (first, second)]
        assert merged["coalesced"] == superseded
        run = (await api.client.get(f"/v1/runs/{queued['run_id']}")).json()
        assert (run["sample"]["location"], run["coalesced"]) == (str(third), superseded)
        request = json.loads((run_dir(api, run) / "run-request.json").read_text())
        assert request["sources"]["sample"]["location"] == str(third)
        assert request["coalesced"] == superseded


@pytest.mark.anyio
async def test_the_merged_run_reduces_the_newest_sample(
    make_api: Callable[..., AbstractAsyncContextManager[Api]], tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=2, shape=SHAPE, seed=2)
    )
    first, second, background, dark = files
    async with make_api(workers=1) as api:
        async with busy_worker(api):
            await make_saxs_session(api, "co", background, dark)
            queued = await submit_sample(api, "co", first)
            await api.client.post("/v1/sessions/co/sample", json={"location": str(second)})
            response = await api.client.post("/v1/sessions/co/process", json={"coalesce": True})
            assert response.json()["run_id"] == queued["run_id"]
        run = await finished_run(api, queued["run_id"], timeout=60)
        assert run["status"] == "succeeded", run["error"]
        [reference] = await anyio.to_thread.run_sync(
            reference_curves, [second], background, dark, tmp_path / "ref"
        )
        curve = read_curve(run_dir(api, run) / "artifacts" / "reduced.h5")
        assert_same_curve(curve, reference, "merged run")


@pytest.mark.anyio
async def test_a_sample_rewritten_after_acceptance_fails_its_run(
    make_api: Callable[..., AbstractAsyncContextManager[Api]], tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=1, shape=SHAPE, seed=3)
    )
    sample, background, dark = files
    async with make_api(workers=1) as api:
        async with busy_worker(api):
            await make_saxs_session(api, "rw", background, dark)
            queued = await submit_sample(api, "rw", sample)
            # The detector writes another frame to the same path before the run starts.
            await anyio.to_thread.run_sync(lambda: write_sample_file(sample, 9, shape=SHAPE))
        events = await run_events(api.app, queued["run_id"], timeout=60)
        run = await finished_run(api, queued["run_id"])
        # A retry accepts the same inputs again, as the files are now, and reduces them.
        response = await api.client.post(f"/v1/runs/{queued['run_id']}/retry", json={})
        assert response.status_code == 202, response.text
        retried = await finished_run(api, response.json()["run_id"], timeout=60)
        assert retried["status"] == "succeeded", retried["error"]
        assert retried["sample"]["location"] == str(sample)
        [reference] = await anyio.to_thread.run_sync(
            reference_curves, [sample], background, dark, tmp_path / "ref"
        )
        curve = read_curve(run_dir(api, retried) / "artifacts" / "reduced.h5")
        assert_same_curve(curve, reference, "retried run")
    assert run["status"] == "failed"
    assert run["error"]["code"] == "SOURCE_CHANGED"
    assert str(sample) in run["error"]["message"]
    assert "rewritten" in run["error"]["message"]
    assert run["artifacts"] == [], "nothing reduced from a file the run was not given"
    [terminal] = [e for e in events if e["type"] == "run.finished"]
    assert terminal["data"]["error"]["code"] == "SOURCE_CHANGED"
    assert terminal["data"]["sample"]["location"] == str(sample)


@pytest.mark.anyio
async def test_queued_runs_keep_their_own_samples_across_a_restart(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=3, shape=SHAPE, seed=4)
    )
    *samples, background, dark = files
    config = make_config(workers=1, shutdown_grace=0.1)
    async with running_api(config) as api, busy_worker(api, cancel_on_exit=False):
        await make_saxs_session(api, "rs", background, dark)
        run_ids = [(await submit_sample(api, "rs", path))["run_id"] for path in samples]
        # The service stops with the three runs still queued: the busy run holds the only
        # worker until the shutdown cancels it, and no run starts once shutdown has begun.
    async with running_api(config) as api:
        runs = [await finished_run(api, run_id, timeout=60) for run_id in run_ids]
        references = await anyio.to_thread.run_sync(
            reference_curves, samples, background, dark, tmp_path / "ref"
        )
        for run, path, reference in zip(runs, samples, references, strict=True):
            assert run["status"] == "succeeded", run["error"]
            assert run["sample"]["location"] == str(path)
            curve = read_curve(run_dir(api, run) / "artifacts" / "reduced.h5")
            assert_same_curve(curve, reference, path.name)
        started = sorted(runs, key=lambda r: r["started_utc"])
        assert [r["run_id"] for r in started] == run_ids
