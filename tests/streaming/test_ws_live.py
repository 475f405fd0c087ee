"""WebSocket over a real socket: ops and replies, replay order, bad messages, close codes,
and a stalled reader cut off while a reading client misses nothing."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import anyio
import pytest
from liveserver import LiveServer, live_server, recv_json, wait_until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streaming.broker import Broker

pytestmark = pytest.mark.anyio


async def request(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return await recv_json(ws)


async def test_subscribe_reply_precedes_the_replay_then_live_events(live: LiveServer) -> None:
    for i in range(5):
        live.broker.emit("step.progress", "s", {"i": i})
    live.broker.emit("step.progress", "other", {})
    async with connect(f"{live.ws_url}/ws") as ws:
        reply = await request(ws, {"op": "subscribe", "id": 1, "sessions": ["s"], "since": "0"})
        assert reply == {
            "type": "reply", "id": 1, "ok": True,
            "result": {"sessions": ["s"], "epoch": "E", "top_seq": 6, "replayed": 5,
                       "recovered": True},
        }  # fmt: skip
        replayed = [await recv_json(ws) for _ in range(5)]
        assert [e["seq"] for e in replayed] == [1, 2, 3, 4, 5]
        assert all(e["specversion"] == "1.0" for e in replayed)
        live.broker.emit("step.progress", "s", {"i": 5})
        assert (await recv_json(ws))["seq"] == 7


async def test_session_path_subscribes_at_once_and_resumes(live: LiveServer) -> None:
    first = [live.broker.emit("step.progress", "s", {"i": i}) for i in range(3)]
    async with connect(f"{live.ws_url}/sessions/s/events?since={first[0].id}") as ws:
        reply = await recv_json(ws)
        assert reply["id"] is None and reply["result"]["replayed"] == 2
        assert [(await recv_json(ws))["seq"] for _ in range(2)] == [2, 3]


async def test_unsubscribe_and_ping(live: LiveServer) -> None:
    async with connect(f"{live.ws_url}/ws") as ws:
        await request(ws, {"op": "subscribe", "sessions": ["a", "b"]})
        reply = await request(ws, {"op": "unsubscribe", "id": "u", "sessions": ["a"]})
        assert reply["result"] == {"sessions": ["b"]}
        live.broker.emit("step.progress", "a", {})
        live.broker.emit("step.progress", "b", {})
        assert (await recv_json(ws))["sessionid"] == "b"
        assert await request(ws, {"op": "ping", "id": 9}) == {
            "type": "reply",
            "id": 9,
            "ok": True,
            "result": {"pong": True},
        }


async def test_control_ops_are_forwarded_and_errors_become_error_replies(
    live: LiveServer,
) -> None:
    async with connect(f"{live.ws_url}/ws") as ws:
        reply = await request(ws, {"op": "process", "id": 1, "session": "s", "mode": "full"})
        assert reply["ok"] and reply["result"] == {"run_id": "run-of-s", "status": "queued"}
        reply = await request(ws, {"op": "cancel", "id": 2, "run_id": "missing"})
        assert reply == {
            "type": "reply", "id": 2, "ok": False,
            "error": {"code": "RUN_NOT_FOUND", "message": "no run 'missing'"},
        }  # fmt: skip
        reply = await request(ws, {"op": "dry_run", "id": 3, "session": "s"})
        assert reply["error"] == {"code": "INTERNAL", "message": "internal error"}
        # The handler gets the decoded, typed op: fields as declared, absent ones None.
        op = {"op": "set_sample", "id": 4, "session": "s", "location": "/d/x.h5#/e"}
        reply = await request(ws, {**op, "options": {"frame": 2}})
        assert reply["result"] == {
            "location": "/d/x.h5#/e",
            "options": {"frame": 2},
            "process": None,
        }


async def test_bad_messages_get_error_replies_and_the_socket_stays(live: LiveServer) -> None:
    async with connect(f"{live.ws_url}/ws") as ws:
        for bad in [
            "not json",
            json.dumps({"op": "launch", "id": 1}),
            json.dumps({"op": "subscribe", "id": 2}),
            json.dumps({"op": "cancel", "id": 3, "run_id": 5}),
            json.dumps({"op": "subscribe", "id": 4, "sessions": "*", "since": "bogus"}),
            json.dumps([1, 2]),
        ]:
            reply = await request(ws, json.loads(bad) if bad.startswith("{") else bad)  # type: ignore[arg-type]
            assert reply["type"] == "reply" and reply["ok"] is False
            assert reply["error"]["code"] == "INVALID_REQUEST"
        assert (await request(ws, {"op": "ping", "id": "still-open"}))["ok"] is True


async def test_a_message_over_1_mib_closes_with_1009(live: LiveServer) -> None:
    async with connect(f"{live.ws_url}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"op": "ping", "pad": "x" * (1 << 20)}))
        with pytest.raises(ConnectionClosed) as info, anyio.fail_after(10):
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await wait_until(lambda: live.broker.subscriber_count == 0)


async def test_broker_close_closes_websockets_with_1001(live: LiveServer) -> None:
    async with connect(f"{live.ws_url}/ws") as ws:
        await request(ws, {"op": "subscribe", "sessions": "*"})
        await anyio.to_thread.run_sync(live.call, live.broker.aclose)
        with pytest.raises(ConnectionClosed) as info, anyio.fail_after(10):
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_a_stalled_reader_is_cut_off_and_a_reading_client_misses_nothing(
    direct_writes: bool,
) -> None:
    broker = Broker(epoch="E", subscriber_queue_size=64)
    with live_server(broker, {"direct_writes": direct_writes}) as live:
        # max_queue=1: the stalled client's library stops reading the socket almost at once.
        async with (
            connect(f"{live.ws_url}/ws", max_queue=1, compression=None) as stalled,
            connect(f"{live.ws_url}/ws", compression=None) as reader,
        ):
            await request(stalled, {"op": "subscribe", "sessions": "*"})
            await request(reader, {"op": "subscribe", "sessions": "*"})
            received: list[int] = []
            with anyio.fail_after(30):
                # Publish in steps the reader keeps up with, until the stalled one is gone.
                while broker.subscriber_count == 2:
                    for _ in range(32):
                        # Incompressible, so the stalled socket's buffers fill in ~1,000 events.
                        payload = base64.b64encode(os.urandom(12_000)).decode()
                        top = broker.emit("step.progress", "s", {"payload": payload}).seq
                    while not received or received[-1] < top:
                        received.append((await recv_json(reader))["seq"])
            assert received == list(range(1, len(received) + 1))  # no gap, no repeat
            with pytest.raises(ConnectionClosed) as info, anyio.fail_after(10):
                while True:
                    await stalled.recv()
            # 1013 when the close frame could be written, else the transport was aborted.
            code = info.value.rcvd.code if info.value.rcvd is not None else 1006
            assert code in (1013, 1006)
            assert broker.subscriber_count == 1
