"""Run endpoints in-process: list, show, cancel (queued and running) and retry."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import Api, assert_problem, fail_step, finished_run, session_body, sleep_step

pytestmark = pytest.mark.anyio

RUN_KEYS = {
    "run_id", "session_id", "run_name", "mode", "effective_mode", "status", "queued_utc",
    "started_utc", "finished_utc", "elapsed_s", "dirty_steps", "skipped_steps",
    "step_durations_s", "step_states", "fallback_reason", "recovered_from_run_id", "retry_of",
    "error", "artifacts",
}  # fmt: skip


async def submit(api: Api, sid: str, **body: Any) -> str:
    r = await api.client.post(f"/v1/sessions/{sid}/process", json=body)
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


async def test_run_object_and_session_run_list(api: Api) -> None:
    assert (await api.client.post("/v1/sessions", json=session_body("s"))).status_code == 201
    run_id = await submit(api, "s")
    run = await finished_run(api, run_id)
    assert run.keys() >= RUN_KEYS
    assert run["session_id"] == "s" and run["status"] == "succeeded"
    assert run["step_states"]["nap"]["status"] == "succeeded"
    runs = (await api.client.get("/v1/sessions/s/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [run_id]


async def test_session_runs_are_listed_newest_first_a_page_at_a_time(api: Api) -> None:
    body = session_body("p", sleep_step(seconds=30, ticks=300))
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    submitted = [await submit(api, "p") for _ in range(5)]  # one runs, four wait
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        r = await api.client.get("/v1/sessions/p/runs", params=params)
        assert r.status_code == 200, r.text
        pages.append([run["run_id"] for run in r.json()["runs"]])
        if r.json()["next_before"] is None:
            break
        params["before"] = r.json()["next_before"]
    newest_first = submitted[::-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    everything = (await api.client.get("/v1/sessions/p/runs")).json()
    assert [run["run_id"] for run in everything["runs"]] == newest_first
    assert everything["next_before"] is None
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "two"}, {"before": "r-elsewhere"}):
        assert_problem(
            await api.client.get("/v1/sessions/p/runs", params=bad), 422, "INVALID_REQUEST"
        )
    for run_id in submitted:
        await api.client.post(f"/v1/runs/{run_id}/cancel", json={})


async def test_unknown_run_is_404(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/runs/r-none"),
        ("POST", "/v1/runs/r-none/cancel"),
        ("POST", "/v1/runs/r-none/retry"),
    ):
        json = {} if method == "POST" else None
        assert_problem(await api.client.request(method, path, json=json), 404, "RUN_NOT_FOUND")
    assert_problem(await api.client.get("/v1/sessions/none/runs"), 404, "SESSION_NOT_FOUND")


async def test_cancel_queued_and_running_runs(api: Api) -> None:
    body = session_body("c", sleep_step(seconds=30, ticks=300))
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    running = await submit(api, "c")
    queued = await submit(api, "c")  # one active run per session: this one waits

    r = await api.client.post(f"/v1/runs/{queued}/cancel", json={})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled"  # a queued run is cancelled at once

    r = await api.client.post(f"/v1/runs/{running}/cancel", json={})
    assert r.status_code == 202
    assert r.json()["status"] in ("cancelling", "cancelled")
    assert (await finished_run(api, running))["status"] == "cancelled"

    assert_problem(
        await api.client.post(f"/v1/runs/{running}/cancel", json={}), 409, "RUN_NOT_CANCELLABLE"
    )


async def test_retry_failed_run_gives_new_run_with_retry_of(api: Api) -> None:
    assert (
        await api.client.post("/v1/sessions", json=session_body("f", fail_step()))
    ).status_code == 201
    failed = await submit(api, "f")
    assert (await finished_run(api, failed))["status"] == "failed"
    r = await api.client.post(f"/v1/runs/{failed}/retry", json={})
    assert r.status_code == 202, r.text
    new_id = r.json()["run_id"]
    assert new_id != failed
    assert r.headers["location"] == f"/v1/runs/{new_id}"
    assert (await finished_run(api, new_id))["retry_of"] == failed


async def test_retry_of_succeeded_run_is_409(api: Api) -> None:
    assert (await api.client.post("/v1/sessions", json=session_body("ok"))).status_code == 201
    run_id = await submit(api, "ok")
    await finished_run(api, run_id)
    assert_problem(
        await api.client.post(f"/v1/runs/{run_id}/retry", json={}), 409, "RUN_NOT_RETRYABLE"
    )


async def test_every_step_state_has_status_and_duration(api: Api) -> None:
    assert (await api.client.post("/v1/sessions", json=session_body("d"))).status_code == 201
    first = await finished_run(api, await submit(api, "d"))
    again = await finished_run(api, await submit(api, "d"))  # nothing changed: nap is skipped
    for run in (first, again):
        for state in run["step_states"].values():
            assert isinstance(state["duration_s"], float) and "status" in state
    assert again["step_states"]["nap"]["status"] == "skipped"
    assert again["step_states"]["nap"]["error"] is None
