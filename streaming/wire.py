"""The fast path from a subscriber's queue to its socket: pre-framed bytes, written directly.

Going through ASGI costs, per event and per subscriber, one `send` call, the server's framing
(uvicorn: websockets' sans-I/O framing, h11's chunked encoding, both pure Python) and one
`write` system call: tens of microseconds, the whole budget of a fan-out to 100 subscribers.
Yet the bytes on the wire are the same for every subscriber. So each event carries its frames,
built once and shared (`ws_frame`, `sse_chunk`), and a sender writes a whole ready batch with
one `transport.write`.

`DirectWriter.find(send)` reaches the server's transport and flow control behind the ASGI
`send` (uvicorn's WebSocket protocols expose `writable`, its HTTP cycles `flow.drain()`; see
`streaming.transport`) and returns None when it can't, in which case the channels use plain
ASGI messages. Only data frames / body chunks go this way: the handshake, response start,
close and end of body still go through ASGI, so the server's protocol state stays right.
Frames are complete and written from the loop thread, so they never interleave with the
server's own (pings, close). A WebSocket data frame sent without compression is valid even
when permessage-deflate was negotiated (RFC 7692: RSV1 clear).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from streaming.envelope import Event
from streaming.framing import ws_text_frame
from streaming.transport import find_owner


def ws_frame(item: Event | bytes) -> bytes:
    return item.ws_frame() if isinstance(item, Event) else ws_text_frame(item)


class DirectWriter:
    """Writes whole frames to the server's transport, then waits while it is paused."""

    __slots__ = ("_owner", "_wait", "busy", "transport")

    # Eager writes stop above this many unsent bytes; the sender then waits for the server's
    # flow control and the subscriber's queue takes the rest (and overflows if it must).
    HIGH_WATER = 64 * 1024

    def __init__(self, owner: Any, wait: Callable[[], Awaitable[Any]]) -> None:
        self._owner = owner
        self.transport = owner.transport
        self._wait = wait
        self.busy = False  # the sender is writing a batch: eager writes would overtake it

    @classmethod
    def find(cls, send: Any) -> DirectWriter | None:
        owner = find_owner(send)
        if owner is None:
            return None
        writable = getattr(owner, "writable", None)
        if isinstance(writable, asyncio.Event):
            return cls(owner, writable.wait)
        drain = getattr(getattr(owner, "flow", None), "drain", None)
        if drain is not None and callable(drain):
            return cls(owner, drain)
        return None

    def usable(self) -> bool:
        owner = self._owner
        return not (
            self.transport.is_closing()
            or getattr(owner, "close_sent", False)
            or getattr(owner, "disconnected", False)
        )

    def write_now(self, data: bytes) -> bool:
        """Write at once if nothing is in the way (sender idle, buffer below HIGH_WATER, open);
        False otherwise. Synchronous: called by the broker's fan-out, no task switch."""
        if self.busy or self.transport.get_write_buffer_size() > self.HIGH_WATER:
            return False
        if not self.usable():
            return False
        self.transport.write(data)
        return True

    async def write(self, data: bytes) -> None:
        """Write `data`; wait while the transport is above its high-water mark (so a peer
        that stops reading stalls only this sender). Raises ConnectionError once closed."""
        if not self.usable():
            raise ConnectionError("the connection is closed")
        self.transport.write(data)
        await self._wait()
