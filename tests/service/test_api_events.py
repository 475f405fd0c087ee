"""Event routes: SSE and WebSocket over the broker, their error answers (404, 422, 403, 1008),
the WebSocket control ops reaching the runtime, and 1001 on server shutdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import anyio
import httpx
import pytest
from api_support import Api, LiveServer, assert_problem, session_body, sleep_step, sse_events
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.anyio
MakeApi = Callable[..., AbstractAsyncContextManager[Api]]
MakeLive = Callable[..., AbstractContextManager[LiveServer]]
SSE = {"Accept": "text/event-stream"}


async def test_unknown_session_or_run_stream_is_404(api: Api) -> None:
    r = await api.client.get("/v1/sessions/nope/events", headers=SSE)
    assert_problem(r, 404, "SESSION_NOT_FOUND")
    assert_problem(
        await api.client.get("/v1/runs/r-nope/events", headers=SSE), 404, "RUN_NOT_FOUND"
    )


async def test_malformed_last_event_id_is_422(api: Api) -> None:
    r = await api.client.get("/v1/events", headers={**SSE, "Last-Event-ID": "not-an-id"})
    assert_problem(r, 422, "INVALID_REQUEST")
    assert r.json()["errors"][0]["path"] == "header:Last-Event-ID"
    r = await api.client.get("/v1/events", params={"since": "x-y-z"}, headers=SSE)
    assert_problem(r, 422, "INVALID_REQUEST")
    assert r.json()["errors"][0]["path"] == "query:since"  # names what the client sent


async def test_sse_from_disallowed_origin_is_403(make_api: MakeApi) -> None:
    async with make_api(allowed_origins=("https://ok.example",)) as api:
        r = await api.client.get("/v1/events", headers={**SSE, "Origin": "https://evil.example"})
        assert_problem(r, 403, "FORBIDDEN")


async def ws_json(ws: ClientConnection, timeout: float = 20.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def reply_to(ws: ClientConnection, request_id: str) -> dict[str, Any]:
    """The reply with `id`, skipping events that arrive in between."""
    while True:
        message = await ws_json(ws)
        if message.get("type") == "reply" and message.get("id") == request_id:
            return message


async def test_sse_streams_a_sessions_events_live(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=10) as client:
        assert (await client.post("/v1/sessions", json=session_body("s"))).status_code == 201
        run_id = (await client.post("/v1/sessions/s/process", json={})).json()["run_id"]
        events = await sse_events(client, f"/v1/runs/{run_id}/events", headers=SSE)
        assert events[0]["type"] == "run.queued"
        assert events[-1]["type"] == "run.finished"
        assert {e["runid"] for e in events} == {run_id}
        # The session stream replays from `since=0`.
        replay = await sse_events(
            client,
            "/v1/sessions/s/events?since=0",
            until=lambda e: e["type"] == "run.finished",
            headers=SSE,
        )
        assert replay[0]["type"] == "session.created"


async def test_websocket_control_ops_reach_the_runtime(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=10) as client:
        body = session_body("w", sleep_step(seconds=30, ticks=300))
        assert (await client.post("/v1/sessions", json=body)).status_code == 201
    async with connect(live_server.ws_url + "/v1/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": "1", "sessions": ["w"]}))
        assert (await reply_to(ws, "1"))["ok"] is True
        await ws.send(json.dumps({"op": "dry_run", "id": "2", "session": "w"}))
        dry = await reply_to(ws, "2")
        assert dry["ok"] is True and dry["result"]["dirty_steps"] == ["nap"]
        await ws.send(json.dumps({"op": "process", "id": "3", "session": "w"}))
        submitted = await reply_to(ws, "3")
        assert submitted["ok"] is True
        run_id = submitted["result"]["run_id"]
        await ws.send(json.dumps({"op": "cancel", "id": "4", "run_id": run_id}))
        cancelled = await reply_to(ws, "4")
        assert cancelled["ok"] is True and cancelled["result"]["run_id"] == run_id
        while (event := await ws_json(ws)).get("type") != "run.cancelled":
            pass
        assert event["runid"] == run_id
        await ws.send(json.dumps({"op": "process", "id": "5", "session": "missing"}))
        error = await reply_to(ws, "5")
        assert error["ok"] is False and error["error"]["code"] == "SESSION_NOT_FOUND"
        await ws.send(json.dumps({"op": "process", "id": "6", "session": "w", "mode": "odd"}))
        assert (await reply_to(ws, "6"))["error"]["code"] == "INVALID_REQUEST"
        await ws.send(json.dumps({"op": "set_sample", "id": "7", "session": "w"}))
        assert (await reply_to(ws, "7"))["error"]["code"] == "INVALID_REQUEST"


async def test_session_websocket_subscribes_at_once(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=10) as client:
        assert (await client.post("/v1/sessions", json=session_body("s"))).status_code == 201
        async with connect(live_server.ws_url + "/v1/sessions/s/events?since=0") as ws:
            first = await ws_json(ws)
            while first.get("type") == "reply":  # a subscribe reply may precede the replay
                first = await ws_json(ws)
            assert first["type"] == "session.created" and first["sessionid"] == "s"


async def test_session_websocket_for_unknown_session_is_refused_with_404(
    live_server: LiveServer,
) -> None:
    # As over SSE: the handshake is refused with a 404 problem, not a 1008 (auth/origin) close.
    with pytest.raises(InvalidStatus) as info:
        async with connect(live_server.ws_url + "/v1/sessions/nope/events"):
            pass
    response = info.value.response
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert json.loads(response.body)["code"] == "SESSION_NOT_FOUND"


async def test_websocket_from_disallowed_origin_is_closed_1008(make_live_server: MakeLive) -> None:
    with make_live_server(allowed_origins=("https://ok.example",)) as server:
        url = server.ws_url + "/v1/ws"
        async with connect(url, origin="https://evil.example") as ws:  # type: ignore[arg-type]
            with pytest.raises(ConnectionClosed) as info:
                await ws_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        async with connect(url, origin="https://ok.example") as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"op": "ping", "id": "p"}))
            assert (await reply_to(ws, "p"))["ok"] is True


async def test_shutdown_closes_websockets_with_1001(make_live_server: MakeLive) -> None:
    with make_live_server() as server:
        async with connect(server.ws_url + "/v1/ws") as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": "1", "sessions": "*"}))
            await reply_to(ws, "1")
            server.server.request_exit()
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_shutdown_ends_sse_streams(make_live_server: MakeLive) -> None:
    with make_live_server() as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            assert (await client.post("/v1/sessions", json=session_body("s"))).status_code == 201

            stopping: list[bool] = []

            def stop_once_streaming(event: dict[str, Any]) -> bool:
                if not stopping:  # the replayed event proves the stream is open
                    stopping.append(True)
                    server.server.request_exit()
                return False

            events = await sse_events(
                client, "/v1/events?since=0", until=stop_once_streaming, headers=SSE
            )
        assert events[0]["type"] == "session.created"  # and the stream then ended by itself
