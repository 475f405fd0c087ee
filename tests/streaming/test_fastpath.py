"""Cutting a connection off: finding the transport behind an ASGI send, and resetting it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streaming.channels.fastpath import (
    DirectWriter,
    abort,
    abort_later_unless_closed,
    find_owner,
    find_transport,
)

pytestmark = pytest.mark.anyio


class ServerProtocol(asyncio.Protocol):
    """Stands in for uvicorn's protocol: an object with `transport` and `writable`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set_result(None)

    async def send(self, message: dict[str, Any]) -> None:
        pass


async def connected() -> tuple[ServerProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[ServerProtocol] = loop.create_future()

    def factory() -> ServerProtocol:
        protocol = ServerProtocol()
        if not first.done():
            first.set_result(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(5):
        protocol = await first
        await protocol.made
    server.close()
    return protocol, reader, writer


def wrapped(send: Any) -> Any:
    # Like Starlette's middleware: closures around the server's send.
    async def outer(message: dict[str, Any]) -> None:
        await send(message)

    async def outermost(message: dict[str, Any]) -> None:
        await outer(message)

    return outermost


async def test_the_transport_is_found_through_middleware_closures() -> None:
    proto, _, writer = await connected()
    send = wrapped(proto.send)
    assert find_owner(send) is proto
    assert find_transport(send) is proto.transport
    assert find_owner(lambda m: None) is None
    writer.close()


async def test_abort_resets_the_connection_even_with_unsent_data() -> None:
    proto, reader, writer = await connected()
    assert proto.transport is not None
    proto.transport.write(b"x" * 10_000_000)  # far more than the peer will read
    assert abort(wrapped(proto.send))
    with pytest.raises(ConnectionResetError):
        while await asyncio.wait_for(reader.read(1 << 20), 5):
            pass
    writer.close()


async def test_a_connection_not_closed_in_time_is_reset_later() -> None:
    proto, reader, writer = await connected()
    abort_later_unless_closed(proto.send, 0.01)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()


async def test_direct_writer_writes_whole_frames_and_stops_once_closed() -> None:
    proto, reader, writer = await connected()
    direct = DirectWriter.find(wrapped(proto.send))
    assert direct is not None
    assert direct.write_now(b"abc")
    await direct.write(b"def")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"abcdef"
    direct.busy = True
    assert not direct.write_now(b"x")  # the sender is mid-batch: don't overtake it
    direct.busy = False
    assert proto.transport is not None
    proto.transport.close()
    assert not direct.write_now(b"x")
    with pytest.raises(ConnectionError):
        await direct.write(b"x")
    writer.close()
