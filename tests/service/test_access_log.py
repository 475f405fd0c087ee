"""`service.http.access_log.AccessLog` around a tiny app: one line per request and WebSocket, with
the status the client saw, and nothing from the query string or the headers."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

from service.http.access_log import AccessLog


async def hello(request: Request) -> Response:
    return PlainTextResponse("hi", status_code=201 if request.method == "POST" else 200)


async def broken(request: Request) -> Response:
    raise RuntimeError("bug")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


async def refuse(websocket: WebSocket) -> None:
    await websocket.close(code=1008)


APP = Starlette(
    routes=[
        Route("/hello", hello, methods=["GET", "POST"]),
        Route("/broken", broken),
        WebSocketRoute("/ws", echo),
        WebSocketRoute("/ws-refused", refuse),
    ]
)


pytestmark = pytest.mark.anyio


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "runwire.access"]


def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=AccessLog(APP), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def websocket(path: str, incoming: list[Message]) -> list[Message]:
    """Drive the app through one WebSocket connection in plain ASGI; what it sent back."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    pending = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await AccessLog(APP)(scope, receive, send)
    return sent


async def test_one_line_per_request_without_query_or_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runwire.access")
    async with client() as http:
        await http.get("/hello", params={"access_token": "secret"}, headers={"Authorization": "x"})
        await http.post("/hello", json={})
        await http.get("/nowhere")
        assert (await http.get("/broken")).status_code == 500
    echoed = await websocket(
        "/ws",
        [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "ping"}],
    )
    assert [m["type"] for m in echoed] == ["websocket.accept", "websocket.send", "websocket.close"]
    refused = await websocket("/ws-refused", [{"type": "websocket.connect"}])
    assert [m["type"] for m in refused] == ["websocket.close"]
    lines = access_lines(caplog)
    shapes = [re.sub(r" \d+\.\d ms$", "", line) for line in lines]
    assert shapes == [
        "GET /hello 200",
        "POST /hello 201",
        "GET /nowhere 404",
        "GET /broken 500",
        "WS /ws 101",
        "WS /ws-refused 403",
    ]
    assert all(re.search(r" \d+\.\d ms$", line) for line in lines)
    assert not any("secret" in line or "access_token" in line for line in lines)


async def test_control_characters_in_a_path_cannot_forge_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runwire.access")
    async with client() as http:
        await http.get("/x%0aGET%20/forged%20200")
    (line,) = access_lines(caplog)
    assert "\n" not in line and line.startswith("GET /x\\nGET /forged 200 404")


async def test_silent_below_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="runwire.access")
    async with client() as http:
        assert (await http.get("/hello")).status_code == 200
    assert access_lines(caplog) == []
