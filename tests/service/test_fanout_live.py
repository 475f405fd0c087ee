"""Fan-out through the whole service: many SSE subscribers each see every event of a real run.

Real uvicorn, real sockets, a `diag.emit` run emitting progress as fast as it can from its
worker thread; each subscriber's stream must equal the run's `events.ndjson` (nothing lost,
nothing repeated, same order).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from api_support import LiveServer, session_body, sse_events

from pipeline.rundir import read_ndjson

SUBSCRIBERS = 100
EMITTED = 300


@pytest.mark.anyio
async def test_100_sse_subscribers_each_receive_every_event_of_a_diag_emit_run(
    live_server: LiveServer,
) -> None:
    emit = {"id": "emit", "use": "diag.emit", "params": {"count": EMITTED, "payload_bytes": 64}}
    limits = httpx.Limits(max_connections=SUBSCRIBERS + 10)
    # Server, worker thread and 100 clients share one process (and, under coverage, a slow
    # tracer): no latency is asserted here, so httpx's 5 s default must not fail a slow start.
    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(
        base_url=live_server.base_url, limits=limits, timeout=timeout
    ) as client:
        assert (
            await client.post("/v1/sessions", json=session_body("fan", emit))
        ).status_code == 201
        received: list[list[dict[str, Any]]] = []

        async def subscribe() -> None:
            # since=0: the retained history, then live, so a subscriber that connects after
            # the run started still gets all of it.
            received.append(
                await sse_events(
                    client,
                    "/v1/sessions/fan/events?since=0",
                    headers={"Accept": "text/event-stream"},
                    until=lambda e: e["type"] in ("run.finished", "run.cancelled"),
                    timeout=60,
                )
            )

        async with anyio.create_task_group() as tg:
            for _ in range(SUBSCRIBERS):
                tg.start_soon(subscribe)
            submitted = await client.post("/v1/sessions/fan/process", json={})
            assert submitted.status_code == 202
            run_id = submitted.json()["run_id"]

    journal = read_ndjson(live_server.config.runs_dir / "fan" / run_id / "events.ndjson")
    expected = [json.loads(line)["id"] for line in journal]
    progress = [json.loads(line) for line in journal if b'"step.progress"' in line]
    assert len(progress) == EMITTED
    assert len(received) == SUBSCRIBERS
    for events in received:
        assert [e["id"] for e in events if e.get("runid") == run_id] == expected
        assert events[-1]["data"]["status"] == "succeeded"
