"""The fast path's assumptions about uvicorn still hold (`streaming.channels.fastpath`).

The fast path reaches behind ASGI into uvicorn's objects; an upgrade that renames one of them
would silently turn it off (every event back through ASGI, several times slower) or, worse,
write after a close. These tests run the installed uvicorn, with the protocols the service uses
(uvicorn's defaults), and fail naming exactly what is missing.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from liveserver import live_server
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from streaming.broker import Broker
from streaming.channels.fastpath import DirectWriter, missing_assumptions

pytestmark = pytest.mark.anyio


class Probe:
    """An ASGI endpoint answering what the fast path finds behind its `send`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = {
            "missing": missing_assumptions(send, websocket=False),
            "direct": DirectWriter.find(send) is not None,
        }
        await JSONResponse(report)(scope, receive, send)


def probe_app(broker: Broker, started: threading.Event) -> Starlette:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        send = websocket._send  # the raw ASGI send, as `serve_websocket` uses it
        await websocket.send_json(
            {
                "missing": missing_assumptions(send, websocket=True),
                "direct": DirectWriter.find(send) is not None,
            }
        )
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.set()
        yield

    return Starlette(
        routes=[Route("/probe", Probe()), WebSocketRoute("/ws", ws)], lifespan=lifespan
    )


def explain(kind: str, report: dict[str, Any]) -> str:
    return (
        f"uvicorn {uvicorn.__version__} ({kind}) breaks the fast path's assumptions: "
        f"missing {report['missing']}; update streaming/channels/fastpath.py (and the upper "
        "bound on uvicorn in pyproject.toml)"
    )


async def test_uvicorn_http_cycle_still_offers_what_the_sse_fast_path_uses() -> None:
    with live_server(Broker(epoch="E"), app_factory=probe_app) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            report = (await client.get("/probe")).json()
    assert report["missing"] == [], explain("HTTP", report)
    assert report["direct"], explain("HTTP", report)


async def test_uvicorn_websocket_protocol_still_offers_what_the_ws_fast_path_uses() -> None:
    with live_server(Broker(epoch="E"), app_factory=probe_app) as live:
        async with connect(f"{live.ws_url}/ws", open_timeout=10) as ws:
            report = json.loads(await ws.recv())
    assert report["missing"] == [], explain("WebSocket", report)
    assert report["direct"], explain("WebSocket", report)


class BareTransport:
    def abort(self) -> None: ...

    def is_closing(self) -> bool:
        return False


class OtherServer:
    """A server whose connection object has a transport but none of uvicorn's extras."""

    transport = BareTransport()

    async def send(self, message: Any) -> None: ...


def test_missing_assumptions_names_what_another_server_lacks() -> None:
    async def plain_send(message: Any) -> None: ...

    assert missing_assumptions(plain_send, websocket=False) == [
        "no object with a `transport` (abort, is_closing) behind the ASGI send"
    ]
    assert missing_assumptions(OtherServer().send, websocket=True) == [
        "OtherServer.transport.write()",
        "OtherServer.transport.get_write_buffer_size()",
        "OtherServer.transport.get_extra_info()",
        "OtherServer.writable (an asyncio.Event)",
        "OtherServer.disconnected (a bool)",
        "OtherServer.close_sent (a bool)",
    ]
    assert missing_assumptions(OtherServer().send, websocket=False)[-2:] == [
        "OtherServer.flow.drain()",
        "OtherServer.disconnected (a bool)",
    ]
    assert DirectWriter.find(OtherServer().send) is None  # so the channels fall back to ASGI
