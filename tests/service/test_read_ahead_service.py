"""The next queued run's frame is read while the current run computes; a file rewritten after
it was read ahead still fails its run with SOURCE_CHANGED, and nothing read ahead is kept."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
import yaml
from api_support import Api, busy_worker, finished_run, sleep_step

from pipeline import hdf5io
from pipeline.demodata import write_demo_data, write_sample_file
from service.http.state import service_state

SHAPE = (48, 40)


def pipeline_text() -> str:
    """Read the sample's frame, then (first, full run only) nap until cancelled."""
    frame = {
        "id": "frame",
        "use": "hdf5.read",
        "params": {"source": "sample", "dataset": "/entry/data/data", "poisson": True},
        "outputs": {"data": "sample.counts"},
    }
    steps = [sleep_step("nap", seconds=120.0, ticks=240), frame]
    return yaml.safe_dump({"name": "ra", "sources": {"sample": {"required": True}}, "steps": steps})


async def submit_sample(api: Api, sid: str, path: Path) -> str:
    body = {"location": str(path), "process": True}
    response = await api.client.post(f"/v1/sessions/{sid}/sample", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


@pytest.mark.anyio
async def test_a_frame_rewritten_after_it_was_read_ahead_fails_its_run(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNWIRE_READ_AHEAD", raising=False)
    first, second, *_ = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=2, shape=SHAPE, seed=5)
    )
    async with make_api(workers=1) as api:
        body = {"session_id": "ra", "pipeline": {"yaml_text": pipeline_text()}}
        assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
        subscription = await service_state(api.app).broker.subscribe(
            sessions=["ra"], queue_size=10_000
        )
        try:
            # Both runs wait behind another session's run on the only worker, so the first
            # starts with the second queued: the second run's frame is read ahead while the
            # first one naps.
            async with busy_worker(api):
                running = await submit_sample(api, "ra", first)
                queued = await submit_sample(api, "ra", second)
            events: list[dict[str, Any]] = []
            with anyio.fail_after(60):
                while not any(
                    e["type"] == "step.started" and e["runid"] == running for e in events
                ):
                    events += [msgspec.json.decode(e.raw) for e in await subscription.get_batch()]
        finally:
            subscription.close()
        done = await anyio.to_thread.run_sync(hdf5io.wait_read_ahead, "ra", 60.0)
        assert done and hdf5io.read_ahead_bytes("ra") > 0, "the queued run's frame was read ahead"
        # The detector rewrites the queued run's file before that run starts.
        await anyio.to_thread.run_sync(lambda: write_sample_file(second, 9, shape=SHAPE, seed=5))
        assert (await api.client.post(f"/v1/runs/{running}/cancel", json={})).status_code == 202
        run = await finished_run(api, queued, timeout=60)
        assert run["status"] == "failed"
        assert run["error"]["code"] == "SOURCE_CHANGED"
        assert str(second) in run["error"]["message"]
        assert hdf5io.read_ahead_bytes("ra") == 0, "what was read ahead is let go"
