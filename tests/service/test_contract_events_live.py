"""Contract audit (section 5 and 7) on the full service over real sockets: every event's
envelope and data as a client sees it over SSE, one terminal event per run, each run's events
in its `events.ndjson`, and a WebSocket re-subscribe with `since` repeating nothing."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from api_support import LiveServer, fail_step, session_body, sleep_step, sse_events
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.anyio

ENVELOPE = {"specversion", "id", "source", "type", "time", "datacontenttype", "sessionid", "seq",
            "data"}  # fmt: skip
TERMINAL = {"run.finished", "run.cancelled", "run.interrupted"}
DATA_KEYS: dict[str, tuple[set[str], set[str]]] = {  # type -> (required, allowed) data keys
    "step.progress": ({"step"}, {"step", "fraction", "message"}),
    "step.finished": ({"step", "status", "duration_s"}, {"step", "status", "duration_s", "error"}),
    "run.finished": (
        {"status", "elapsed_s", "dirty_steps", "skipped_steps"},
        {"status", "elapsed_s", "dirty_steps", "skipped_steps", "fallback_reason", "error"},
    ),
}


def check_envelope(event: dict[str, Any], epoch: str) -> None:
    run = event.get("runid")
    assert set(event) == ENVELOPE | ({"subject", "runid"} if run else set()), event
    assert event["specversion"] == "1.0" and event["datacontenttype"] == "application/json"
    assert event["id"] == f"{epoch}-{event['seq']}"
    assert event["source"] == f"/v1/sessions/{event['sessionid']}"
    assert event["time"].endswith("Z")
    if run:
        assert event["subject"] == run
    required, allowed = DATA_KEYS.get(event["type"], (set(), None))
    assert required <= set(event["data"]), event
    if allowed is not None:
        assert set(event["data"]) <= allowed, event
    if event["type"] == "step.finished":
        assert event["data"]["status"] in {"succeeded", "skipped", "failed"}
    if event["type"] == "run.finished":
        assert event["data"]["status"] in {"succeeded", "failed"}


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(10):
        return json.loads(await ws.recv())


async def test_every_event_meets_the_contract_and_is_in_its_run_log(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        good = session_body("good", sleep_step("nap", 0.0, ticks=3))
        assert (await client.post("/v1/sessions", json=good)).status_code == 201
        bad = session_body("bad", fail_step())
        assert (await client.post("/v1/sessions", json=bad)).status_code == 201
        run_ids = []
        for sid in ("good", "bad"):
            r = await client.post(f"/v1/sessions/{sid}/process", json={})
            assert r.status_code == 202
            run_ids.append(r.json()["run_id"])
        terminal: dict[str, int] = {}

        def both_done(event: dict[str, Any]) -> bool:
            if event["type"] in TERMINAL:
                terminal[event["runid"]] = terminal.get(event["runid"], 0) + 1
            return set(terminal) == set(run_ids)

        events = await sse_events(client, "/v1/events?since=0", until=both_done)
    epoch = events[0]["id"].rpartition("-")[0]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    for event in events:
        check_envelope(event, epoch)
    for run_id in run_ids:
        stream = [e for e in events if e.get("runid") == run_id]
        assert [e["type"] for e in stream][:2] == ["run.queued", "run.started"]
        assert [e["type"] for e in stream if e["type"] in TERMINAL] == [stream[-1]["type"]]
        sid = stream[0]["sessionid"]
        log = live_server.config.data_dir / "runs" / sid / run_id / "events.ndjson"
        assert [json.loads(line) for line in log.read_bytes().splitlines()] == stream
    progress = [e["data"] for e in events if e["type"] == "step.progress"]
    assert len(progress) == 3 and all(p["step"] == "nap" for p in progress)
    bad_end = [e for e in events if e["type"] == "run.finished" and e["sessionid"] == "bad"]
    assert bad_end[0]["data"]["status"] == "failed"


async def test_websocket_resubscribe_with_since_repeats_nothing(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url) as client:
        for sid in ("s1", "s2"):
            body = session_body(sid, sleep_step())
            assert (await client.post("/v1/sessions", json=body)).status_code == 201
    async with connect(f"{live_server.ws_url}/v1/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "sessions": ["s1"], "since": "0"}))
        first = await recv_json(ws)
        got = [await recv_json(ws) for _ in range(first["result"]["replayed"])]
        await ws.send(
            json.dumps({"op": "subscribe", "id": 2, "sessions": ["s1", "s2"], "since": "0"})
        )
        second = await recv_json(ws)
        assert second["id"] == 2 and second["result"]["sessions"] == ["s1", "s2"]
        got += [await recv_json(ws) for _ in range(second["result"]["replayed"])]
        assert {e["sessionid"] for e in got} == {"s1", "s2"}
        await ws.send(json.dumps({"op": "ping", "id": 3}))
        assert (await recv_json(ws))["id"] == 3  # nothing else (no repeat) was queued before
        seqs = [e["seq"] for e in got]
        assert len(seqs) == len(set(seqs))
