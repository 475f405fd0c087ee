"""The science edge cases as a service user sees them: a background taken with another geometry
fails the run with GEOMETRY_MISMATCH in its `error`, and a sample rewritten in place (size and
mtime kept) shows up in the dry-run as `source_changed:sample`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import h5py
import pytest
from api_support import Api, finished_run

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

pytestmark = pytest.mark.anyio

DETECTOR = "/entry/instrument/detector"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    write_demo_data(folder, count=1, shape=(64, 64), seed=3)
    return folder


async def saxs_session(api: Api, sid: str, sources: dict[str, Path]) -> None:
    body = {"session_id": sid, "pipeline": {"yaml_text": example_text("saxs")}}
    r = await api.client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    listed = [{"ref": ref, "type": "hdf5", "location": str(p)} for ref, p in sources.items()]
    r = await api.client.put(f"/v1/sessions/{sid}/sources", json={"sources": listed})
    assert r.status_code == 200, r.text


async def process(api: Api, sid: str) -> dict[str, Any]:
    r = await api.client.post(f"/v1/sessions/{sid}/process", json={})
    assert r.status_code == 202, r.text
    return await finished_run(api, r.json()["run_id"], timeout=60)


async def test_background_at_another_distance_fails_with_geometry_mismatch(
    api: Api, demo: Path
) -> None:
    with h5py.File(demo / "background.h5", "a") as f:
        f[f"{DETECTOR}/distance"][...] = f[f"{DETECTOR}/distance"][()] * 2
    await saxs_session(
        api, "geo", {"sample": demo / "sample_0001.h5", "background": demo / "background.h5"}
    )
    run = await process(api, "geo")
    assert run["status"] == "failed"
    error = run["error"]
    # error.code is the ExitCode name (contract); the kind of failure leads the message.
    assert error["code"] == "STEP_EXCEPTION"
    assert error["failed_step"] == "background.same_geometry"
    assert error["message"].startswith("GEOMETRY_MISMATCH:")
    assert "'background'" in error["message"] and "distance" in error["message"]
    step = run["step_states"]["background.same_geometry"]
    assert step["status"] == "failed" and "GEOMETRY_MISMATCH" in step["error"]
    assert "reduced.h5" not in run["artifacts"]


async def test_sample_rewritten_in_place_keeping_size_and_mtime_is_source_changed(
    api: Api, demo: Path
) -> None:
    sample = demo / "sample_0001.h5"
    await saxs_session(api, "inplace", {"sample": sample, "dark": demo / "dark.h5"})
    assert (await process(api, "inplace"))["status"] == "succeeded"
    r = await api.client.post("/v1/sessions/inplace/process/dry-run", json={})
    assert r.status_code == 200, r.text
    assert "sample.frame" not in r.json()["dirty_steps"]

    before = os.stat(sample)
    with h5py.File(sample, "r+") as f:
        f["/entry/data/data"][0, 0] = f["/entry/data/data"][0, 0] + 1000
    os.utime(sample, ns=(before.st_atime_ns, before.st_mtime_ns))
    deadline = time.monotonic() + 10  # ctime ticks with the kernel's coarse clock
    while os.stat(sample).st_ctime_ns == before.st_ctime_ns and time.monotonic() < deadline:
        os.utime(sample, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(sample)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    r = await api.client.post("/v1/sessions/inplace/process/dry-run", json={})
    plan = r.json()
    assert "source_changed:sample" in plan["reasons"]["sample.frame"]
    assert "dark.frame" in plan["skipped_steps"]
