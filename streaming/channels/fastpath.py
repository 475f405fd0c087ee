"""Every assumption the channels make about the ASGI server (uvicorn) beyond ASGI itself.

Two things ASGI cannot do, done here by reaching behind the ASGI `send` to the server's objects:

1. **Direct writes** (the fast path). Going through ASGI costs, per event and per subscriber,
   one `send` call, the server's framing (uvicorn: websockets' sans-I/O framing, h11's chunked
   encoding, both pure Python) and one `write` system call: tens of microseconds, the whole
   budget of a fan-out to 100 subscribers. Yet the bytes on the wire are the same for every
   subscriber. So each event carries its frames, built once and shared (`Event.ws_frame`,
   `Event.sse_chunk`, see `streaming.framing`), and a sender writes a whole ready batch with
   one `transport.write` (`DirectWriter`). Only data frames / body chunks go this way: the
   handshake, response start, close and end of body still go through ASGI, so the server's
   protocol state stays right. Frames are complete and written from the loop thread, so they
   never interleave with the server's own (pings, close). A WebSocket data frame sent without
   compression is valid even when permessage-deflate was negotiated (RFC 7692: RSV1 clear).
2. **Abort** a stalled connection. ASGI has no "abort" message: a close frame or the end of a
   response is queued behind whatever the peer has not read, and the server then waits
   (uvicorn: up to 10 s for a WebSocket close, and `transport.close()` waits for the buffer to
   drain) while the connection holds its buffer. To cut a stalled reader off within a second we
   reset the TCP connection ourselves (`abort`, `abort_later_unless_closed`).

What this relies on (checked against uvicorn 0.55 with h11 and websockets-sansio; the test
`tests/streaming/test_fastpath_uvicorn.py` names whichever of these a server upgrade breaks,
via `missing_assumptions`):

- the ASGI `send` is a bound method of the server's per-connection object (uvicorn's WebSocket
  protocol or HTTP request cycle), possibly wrapped by middleware in closures or
  `functools.partial`s (followed a few levels deep), and that object has a `transport`;
- the transport has `write`, `abort`, `is_closing`, `get_write_buffer_size`, `get_extra_info`
  ("socket");
- flow control: a WebSocket protocol has `writable` (an `asyncio.Event`, clear while the
  transport is paused), an HTTP cycle `flow.drain()`;
- state flags: `disconnected` (both) and `close_sent` (WebSocket) are booleans the server keeps
  current, so a direct write never follows the close.

When `send` leads to nothing usable (another server, a middleware that replaces `send` with a
stream), `DirectWriter.find` returns None and the channels send plain ASGI messages; `abort`
returns False and the channel ends the ASGI call and lets the server close. The fallback is
tested live alongside the fast path (`direct_writes=False`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from streaming.envelope import Event
from streaming.framing import ws_text_frame

__all__ = [
    "DirectWriter", "abort", "abort_later_unless_closed", "abort_transport", "find_owner",
    "find_transport", "missing_assumptions", "ws_frame",
]  # fmt: skip

_MAX_DEPTH = 6


class _Abortable(Protocol):
    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...


def find_transport(send: Any) -> _Abortable | None:
    """The asyncio transport behind an ASGI `send` callable, or None."""
    owner = find_owner(send)
    return None if owner is None else owner.transport


def find_owner(send: Any) -> Any | None:
    """The server object (uvicorn's protocol or request cycle) behind an ASGI `send` that
    holds the connection's `transport`, or None."""
    seen: set[int] = set()
    todo: list[tuple[Any, int]] = [(send, 0)]
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > _MAX_DEPTH:
            continue
        seen.add(id(obj))
        transport = getattr(obj, "transport", None)
        # Duck-typed: uvloop's transports are not asyncio.Transport subclasses.
        if callable(getattr(transport, "abort", None)) and hasattr(transport, "is_closing"):
            return obj
        owner = getattr(obj, "__self__", None)
        if owner is not None:
            todo.append((owner, depth + 1))
        if isinstance(obj, functools.partial):
            # Starlette's CORSMiddleware wraps `send` in a partial (send=...), not a closure.
            inner = (obj.func, *obj.args, *obj.keywords.values())
            todo.extend((item, depth + 1) for item in inner if callable(item))
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(content):
                todo.append((content, depth + 1))
    return None


def abort_later_unless_closed(send: Any, delay: float) -> None:
    """In `delay` seconds, abort the connection behind `send` unless it is closing by then.

    For a subscriber already cut off as too slow (or at shutdown): a peer that reads will
    have answered the close frame (or read the end of its stream) by then; one that does not
    would hold the connection and its buffers (ours and the kernel's) open indefinitely,
    since a close or FIN queues behind the data it never reads. A timer, not a task.
    """
    transport = find_transport(send)
    if transport is None:
        return

    def check() -> None:
        if not transport.is_closing():
            abort_transport(transport)

    asyncio.get_running_loop().call_later(delay, check)


def abort(send: Any) -> bool:
    """Abort the connection behind `send` now (no flush, no close handshake); True if done."""
    transport = find_transport(send)
    if transport is None:
        return False
    abort_transport(transport)
    return True


def abort_transport(transport: Any) -> None:
    """Reset the connection: discard what is unsent and send a TCP RST.

    `transport.abort()` alone only closes the file descriptor: the kernel then keeps the
    orphaned socket, its unsent buffer and the peer's connection alive for minutes behind a
    zero window. SO_LINGER with a zero timeout makes the close a reset.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


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


_TRANSPORT_METHODS = ("write", "abort", "is_closing", "get_write_buffer_size", "get_extra_info")


def missing_assumptions(send: Any, *, websocket: bool) -> list[str]:
    """What of the above does not hold for the server behind this ASGI `send` (empty: all
    holds). For the test that guards a server upgrade; the channels do not call it."""
    owner = find_owner(send)
    if owner is None:
        return ["no object with a `transport` (abort, is_closing) behind the ASGI send"]
    kind = type(owner).__qualname__
    missing = [
        f"{kind}.transport.{name}()"
        for name in _TRANSPORT_METHODS
        if not callable(getattr(owner.transport, name, None))
    ]
    if websocket:
        if not isinstance(getattr(owner, "writable", None), asyncio.Event):
            missing.append(f"{kind}.writable (an asyncio.Event)")
        flags: tuple[str, ...] = ("disconnected", "close_sent")
    else:
        if not callable(getattr(getattr(owner, "flow", None), "drain", None)):
            missing.append(f"{kind}.flow.drain()")
        flags = ("disconnected",)
    missing.extend(
        f"{kind}.{flag} (a bool)"
        for flag in flags
        if not isinstance(getattr(owner, flag, None), bool)
    )
    return missing
