"""Paths that cannot name a file are 422 `INVALID_REQUEST`, never 500: a NUL byte, an unknown
`~user`, a segment over 255 bytes, as a source, sink, sample or pipeline path, over HTTP and
over the WebSocket control ops. Deep JSON nesting over WebSocket gets an error reply and the
connection stays."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import httpx
import pytest
from api_support import NEEDS_SAMPLE, Api, LiveServer, assert_problem
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.anyio
MakeLive = Callable[..., AbstractContextManager[LiveServer]]

BAD_PATHS = {
    "nul": "/tmp/sample\x00.json",
    "unknown-user": "~no_such_user_runwire/sample.json",
    "long-segment": "/tmp/" + "a" * 256 + "/sample.json",
}


def requests_naming(location: str) -> list[tuple[str, str, dict[str, Any]]]:
    source = {"ref": "sample", "type": "json", "location": location}
    return [
        ("POST", "/v1/sessions", {"session_id": "p", "pipeline": {"path": location}}),
        ("POST", "/v1/sessions/s/sources/patch", source),
        ("PUT", "/v1/sessions/s/sources", {"sources": [source]}),
        ("POST", "/v1/sessions/s/sinks/patch", {"ref": "out", "type": "csv", "location": location}),
        (
            "PUT",
            "/v1/sessions/s/sinks",
            {"sinks": [{"ref": "o", "type": "csv", "location": location}]},
        ),
        ("POST", "/v1/sessions/s/sample", {"location": location, "process": True}),
    ]


@pytest.mark.parametrize("kind", sorted(BAD_PATHS))
async def test_bad_paths_over_http_are_422_and_change_nothing(api: Api, kind: str) -> None:
    body = {"session_id": "s", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    for method, path, payload in requests_naming(BAD_PATHS[kind]):
        r = await api.client.request(method, path, json=payload)
        problem = assert_problem(r, 422, "INVALID_REQUEST")
        assert problem["detail"] != "internal error", (method, path)
    session = (await api.client.get("/v1/sessions/s")).json()
    assert session["sources"] == {} and session["sinks"] == {}
    assert (await api.client.get("/v1/sessions/s/runs")).json()["runs"] == []
    assert [s["session_id"] for s in (await api.client.get("/v1/sessions")).json()["sessions"]] == [
        "s"
    ]


async def reply(ws: ClientConnection, request_id: str | None) -> dict[str, Any]:
    with anyio.fail_after(20):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message.get("type") == "reply" and message.get("id") == request_id:
                return message


async def test_bad_paths_and_deep_nesting_over_websocket_get_error_replies(
    make_live_server: MakeLive,
) -> None:
    with make_live_server() as server:
        async with connect(server.ws_url + "/v1/ws", open_timeout=20) as ws:
            await ws.send(json.dumps({"op": "ping", "id": "up"}))
            assert (await reply(ws, "up"))["ok"] is True
            # Sessions are created over HTTP; the WebSocket ops then name bad paths.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
                body = {"session_id": "s", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
                assert (await client.post("/v1/sessions", json=body)).status_code == 201
                for kind, location in BAD_PATHS.items():
                    for process in (False, True):
                        op = {"op": "set_sample", "id": kind, "session": "s",
                              "location": location, "process": process}  # fmt: skip
                        await ws.send(json.dumps(op))
                        answer = await reply(ws, kind)
                        assert answer["ok"] is False
                        assert answer["error"]["code"] == "INVALID_REQUEST", answer
                assert (await client.get("/v1/sessions/s/runs")).json()["runs"] == []

            deep = '{"op": "set_sample", "id": "deep", "session": "s", "location": "x", "options": '
            deep += '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
            await ws.send(deep)
            answer = await reply(ws, None)
            assert answer["ok"] is False and answer["error"]["code"] == "INVALID_REQUEST"
            assert "nested" in answer["error"]["message"]
            await ws.send("[" * 100_000 + "]" * 100_000)
            answer = await reply(ws, None)
            assert answer["error"]["code"] == "INVALID_REQUEST"
            # The connection is still there and still answers.
            await ws.send(json.dumps({"op": "ping", "id": "still"}))
            assert (await reply(ws, "still"))["ok"] is True
