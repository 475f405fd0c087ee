"""Contract audit regressions (CONTRACT section 5): no duplicates when a WebSocket subscribes
again with `since`, and bounded replay memory for deleted and very many sessions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from liveserver import DiskHistory, LiveServer, drain, recv_json
from websockets.asyncio.client import ClientConnection, connect

from streaming.broker import Broker
from streaming.envelope import SESSION_DELETED, STREAM_GAP

pytestmark = pytest.mark.anyio


async def until_reply(ws: ClientConnection, request_id: int) -> list[dict[str, Any]]:
    """Messages received up to and including the reply with `request_id`."""
    got: list[dict[str, Any]] = []
    while not (got and got[-1].get("type") == "reply" and got[-1].get("id") == request_id):
        got.append(await recv_json(ws))
    return got


async def test_resubscribing_with_since_over_websocket_repeats_nothing(live: LiveServer) -> None:
    for i in range(3):
        live.broker.emit("step.progress", "a", {"i": i})
        live.broker.emit("step.progress", "b", {"i": i})
    async with connect(f"{live.ws_url}/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "sessions": ["a"], "since": "0"}))
        first = await until_reply(ws, 1)
        seqs = [(await recv_json(ws))["seq"] for _ in range(3)]
        assert len(first) == 1 and seqs == [1, 3, 5]
        # Again with since=0, adding b: only b is replayed (a was delivered already).
        await ws.send(
            json.dumps({"op": "subscribe", "id": 2, "sessions": ["a", "b"], "since": "0"})
        )
        reply = (await until_reply(ws, 2))[-1]
        assert reply["result"]["sessions"] == ["a", "b"]
        assert reply["result"]["replayed"] == 3 and reply["result"]["recovered"] is True
        assert [(await recv_json(ws))["seq"] for _ in range(3)] == [2, 4, 6]
        # Again to "*" with since=0: nothing of a or b again, c is new.
        live.broker.emit("step.progress", "c", {})
        await ws.send(json.dumps({"op": "subscribe", "id": 3, "sessions": "*", "since": "0"}))
        before = await until_reply(ws, 3)
        live.broker.emit("step.progress", "a", {"live": True})
        after = [await recv_json(ws) for _ in range(2)]
        seen = seqs + [2, 4, 6] + [m["seq"] for m in before + after if "seq" in m]
        assert len(seen) == len(set(seen)), f"duplicate events: {seen}"
        assert before[-1]["result"]["replayed"] in (0, 1)  # c's event, replayed or live
        assert sorted(seen) == list(range(1, 9))
        # Resubscribing to "*" while on "*" replays nothing either.
        await ws.send(json.dumps({"op": "subscribe", "id": 4, "sessions": "*", "since": "0"}))
        assert (await until_reply(ws, 4))[-1]["result"]["replayed"] == 0


async def test_a_deleted_sessions_replay_buffer_is_dropped_and_resume_uses_history() -> None:
    lines: list[bytes] = []
    broker = Broker(epoch="E", history=DiskHistory(lines))
    await broker.start()
    for i in range(3):
        lines.append(broker.emit("step.progress", "gone", {"i": i}).raw)
    lines.append(broker.emit(SESSION_DELETED, "gone", {}).raw)
    lines.append(broker.emit("step.progress", "kept", {}).raw)
    sub = await broker.subscribe(sessions=["kept"])
    await drain(sub, 1)  # everything above is delivered on the loop by now
    assert broker.session_buffer_count == 1  # only "kept"
    async with await broker.subscribe(sessions=["gone"], since="E-1") as resumed:
        got = await drain(resumed, 3)
        assert [e.seq for e in got] == [2, 3, 4]
        assert resumed.info is not None and resumed.info.recovered
    await broker.aclose()


async def test_without_history_a_dropped_buffer_is_reported_as_a_gap() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    for i in range(2):
        broker.emit("step.progress", "gone", {"i": i})
    broker.emit(SESSION_DELETED, "gone", {})
    sub = await broker.subscribe(sessions=["gone"])
    broker.emit("session.created", "gone", {})  # the same id, created again
    await drain(sub, 1)
    async with await broker.subscribe(sessions=["gone"], since="0") as resumed:
        got = await drain(resumed, 2)
        assert [e.type for e in got] == [STREAM_GAP, "session.created"]
        assert got[0].envelope.data["oldest_available"] == "E-4"
    await broker.aclose()


async def test_session_buffers_are_capped_and_the_evicted_range_is_a_gap() -> None:
    broker = Broker(epoch="E", max_session_buffers=3)
    await broker.start()
    watch = await broker.subscribe()
    for sid in ("s1", "s2", "s3", "s4", "s5"):
        broker.emit("step.progress", sid, {})
    await drain(watch, 5)
    assert broker.session_buffer_count == 3
    async with await broker.subscribe(sessions=["s1"], since="0") as old:
        got = await drain(old, 1)
        assert got[0].type == STREAM_GAP and old.info is not None and not old.info.recovered
    async with await broker.subscribe(sessions=["s5"], since="0") as recent:
        assert [e.seq for e in await drain(recent, 1)] == [5]
        assert recent.info is not None and recent.info.recovered
    await broker.aclose()


async def test_subscribing_to_a_malformed_session_id_is_an_error_reply(live: LiveServer) -> None:
    async with connect(f"{live.ws_url}/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "sessions": ["bad id!"]}))
        reply = await recv_json(ws)
        assert reply["ok"] is False and reply["error"]["code"] == "INVALID_REQUEST"
        assert "sessions[0]" in reply["error"]["message"]
        await ws.send(json.dumps({"op": "subscribe", "id": 2, "sessions": ["ok.id_1-x"]}))
        assert (await recv_json(ws))["ok"] is True  # the connection stays
