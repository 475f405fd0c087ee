"""The run queue through a real uvicorn server: a full queue answers 429 with Retry-After,
cancel stops a running `diag.sleep` run, and two sessions run in parallel while one session's
runs stay serial."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from api_support import LiveServer, assert_problem, session_body, sleep_step, sse_events

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
LONG = sleep_step(seconds=30, ticks=300)  # cancellable every 0.1 s


@pytest.fixture
def server(
    make_live_server: Callable[..., AbstractContextManager[LiveServer]],
) -> Iterator[LiveServer]:
    with make_live_server(queue_size=2, workers=2, shutdown_grace=0.5) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        yield c


async def create(client: httpx.AsyncClient, sid: str, *steps: dict[str, Any]) -> None:
    r = await client.post("/v1/sessions", json=session_body(sid, *steps))
    assert r.status_code == 201, r.text


async def submit(client: httpx.AsyncClient, sid: str) -> str:
    r = await client.post(f"/v1/sessions/{sid}/process", json={})
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


async def wait_progress(client: httpx.AsyncClient, run_id: str) -> None:
    """Until the run reports progress from inside its step (it is running)."""
    await sse_events(
        client, f"/v1/runs/{run_id}/events", until=lambda e: e["type"] == "step.progress"
    )


async def wait_end(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    events = await sse_events(client, f"/v1/runs/{run_id}/events")
    assert events[-1]["type"] in ("run.finished", "run.cancelled", "run.interrupted")
    run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
    return run


async def test_full_queue_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    await create(client, "busy", LONG)
    await create(client, "other", LONG)
    accepted: list[str] = []
    rejected: httpx.Response | None = None
    # 2 workers and a queue of 2: at most 4 runs are accepted before the queue is full.
    for sid in ("busy", "other", "busy", "other", "busy", "other"):
        r = await client.post(f"/v1/sessions/{sid}/process", json={})
        if r.status_code == 429:
            rejected = r
            break
        assert r.status_code == 202, r.text
        accepted.append(r.json()["run_id"])
    assert rejected is not None, f"no 429 after {len(accepted)} runs"
    assert_problem(rejected, 429, "QUEUE_FULL")
    assert int(rejected.headers["retry-after"]) >= 1
    assert 2 <= len(accepted) <= 4
    for run_id in accepted:
        assert (await client.post(f"/v1/runs/{run_id}/cancel", json={})).status_code == 202


async def test_cancel_stops_a_running_sleep(client: httpx.AsyncClient) -> None:
    await create(client, "c", LONG)
    run_id = await submit(client, "c")
    await wait_progress(client, run_id)
    r = await client.post(f"/v1/runs/{run_id}/cancel", json={})
    assert r.status_code == 202
    assert r.json()["status"] in ("cancelling", "cancelled")
    run = await wait_end(client, run_id)
    assert run["status"] == "cancelled"
    assert run["step_states"]["nap"]["status"] in ("cancelled", "failed")


async def test_sessions_run_in_parallel_and_each_session_serially(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "a", LONG)
    await create(client, "b", sleep_step(seconds=0, ticks=1))
    a1 = await submit(client, "a")
    await wait_progress(client, a1)
    a2 = await submit(client, "a")
    b1 = await submit(client, "b")
    # b finishes while a1 is still running: sessions run in parallel...
    assert (await wait_end(client, b1))["status"] == "succeeded"
    assert (await client.get(f"/v1/runs/{a1}")).json()["status"] == "running"
    # ...and a2 waits for a1: runs of one session are serial.
    assert (await client.get(f"/v1/runs/{a2}")).json()["status"] == "queued"
    await client.post(f"/v1/runs/{a1}/cancel", json={})
    first = await wait_end(client, a1)
    await wait_progress(client, a2)
    second = (await client.get(f"/v1/runs/{a2}")).json()
    assert second["started_utc"] >= first["finished_utc"]
    await client.post(f"/v1/runs/{a2}/cancel", json={})
    assert (await wait_end(client, a2))["status"] == "cancelled"
