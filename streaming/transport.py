"""Reaching the server's transport behind an ASGI `send`, to abort a stalled connection.

ASGI has no "abort" message: a close frame or the end of a response is queued behind whatever
the peer has not read, and the server then waits (uvicorn: up to 10 s for a WebSocket close, and
`transport.close()` waits for the buffer to drain) while the connection holds its buffer. To cut
a stalled reader off within a second we abort the TCP transport ourselves.

uvicorn's `send` is a bound method of its protocol object, which has a `transport`; Starlette's
middleware wraps `send` in closures or `functools.partial`s. `find_transport` follows bound
methods, partials and closure cells a few levels deep. When it finds nothing (another server,
a middleware that replaces `send` with a stream), the caller falls back to ending the ASGI call and letting the server close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from typing import Any, Protocol

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
