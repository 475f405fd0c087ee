"""A peer that goes away in the middle of a write ends its stream quietly: the channel returns
normally (the server logs no "Exception in ASGI application") and leaves no subscription.

Driven in-process: `FakeCycle` stands in for the server (uvicorn's request cycle: an ASGI
`send` bound to an object holding the connection's `transport` and `flow`), so the moment the
peer is gone can be chosen exactly instead of raced over a socket.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.types import Message
from starlette.websockets import WebSocket

from streaming.broker import Broker
from streaming.channels.sse import SSEResponse
from streaming.channels.ws import serve_websocket
from streaming.messages import ControlOp

pytestmark = pytest.mark.anyio


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return None

    def abort(self) -> None:
        self.closing = True


class FakeFlow:
    async def drain(self) -> None:
        pass


class FakeCycle:
    """The server side of one connection; `gone()` is the peer vanishing mid-stream."""

    def __init__(self, *, fail_sends: bool = False) -> None:
        self.transport = FakeTransport()
        self.flow = FakeFlow()
        self.disconnected = False
        self.fail_sends = fail_sends
        self.sent: list[Message] = []
        self.started = anyio.Event()
        self._never = anyio.Event()

    def gone(self) -> None:
        self.disconnected = True
        self.transport.closing = True

    async def send(self, message: Message) -> None:
        if self.disconnected and self.fail_sends:
            raise ConnectionResetError("the peer went away")  # as uvicorn's ClientDisconnected
        self.sent.append(message)
        self.started.set()

    async def receive(self) -> Message:
        if not self.sent:
            return {"type": "websocket.connect"}
        await self._never.wait()  # the disconnect has not reached the app yet
        raise AssertionError("unreachable")


async def started_broker() -> Broker:
    broker = Broker(epoch="E")
    await broker.start()
    return broker


async def test_sse_peer_gone_mid_write_ends_the_stream_without_error(direct_writes: bool) -> None:
    broker = await started_broker()
    cycle = FakeCycle(fail_sends=not direct_writes)
    response = SSEResponse(
        broker, sessions=["s"], run_id=None, since=None, direct_writes=direct_writes
    )
    scope = {"type": "http", "http_version": "1.1"}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(response, scope, cycle.receive, cycle.send)
            await cycle.started.wait()
            await anyio.wait_all_tasks_blocked()
            cycle.gone()
            broker.emit("step.progress", "s", {})  # its write finds the connection closed
    assert broker.subscriber_count == 0
    await broker.aclose()


async def test_websocket_peer_gone_mid_send_ends_the_connection_without_error() -> None:
    # Through ASGI only: on the fast path a failed write leaves the ending to the reader, which
    # a real server wakes with `websocket.disconnect` (covered live in test_ws_live).
    broker = await started_broker()
    cycle = FakeCycle(fail_sends=True)
    websocket = WebSocket({"type": "websocket", "path": "/ws"}, cycle.receive, cycle.send)

    async def control(op: ControlOp) -> dict[str, Any]:
        return {}

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: serve_websocket(
                    websocket, broker, control, sessions=["s"], direct_writes=False
                )
            )
            await cycle.started.wait()
            await anyio.wait_all_tasks_blocked()
            cycle.gone()
            broker.emit("step.progress", "s", {})  # its send raises: the peer went away
    assert broker.subscriber_count == 0
    await broker.aclose()
