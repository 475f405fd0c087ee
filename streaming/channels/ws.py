"""WebSocket channel (contract section 5.2): `serve_websocket`.

One connection = one `Subscription` (its session set grows and shrinks with `subscribe` /
`unsubscribe`) and two tasks in one task group (memory per idle subscriber counts):

- the reader (the ASGI task itself) bounds each message's JSON shape (nesting depth, number
  length: `streaming.jsonshape`, as over HTTP), decodes client ops (one msgspec decoder,
  tagged union) and answers each with a reply; `process`, `set_sample`, `cancel` and `dry_run` go to the
  service's `ControlHandler`. A bad message gets an INVALID_REQUEST error reply and the
  connection stays.
- the sender drains the subscription's own bounded queue, writing every ready item in one
  write (`streaming.channels.fastpath`; while the queue is empty the broker writes live events directly);
  replies travel through the same queue, which is how the reply to `subscribe` precedes its
  replay. A slow socket therefore only ever delays itself. When the subscription ends
  (overflow, broker closed) the sender stops waiting on the socket at once and closes it:
  1013 / 1001. If the close frame cannot be queued within `stall_grace` seconds (the peer
  stopped reading and the socket buffer is full), or the peer has not let the connection
  close `stall_grace` after it was, the connection is reset.

Limits: a client message over `max_message_bytes` (1 MiB) closes with 1009. The server should
also run uvicorn with `ws_max_size` a little above that (e.g. 1 MiB + 4 KiB) so that a huge
frame is refused by the protocol layer before it is buffered; uvicorn then closes with 1009
itself. Idle connections are kept alive by uvicorn's protocol pings (`ws_ping_interval`,
default 20 s, and `ws_ping_timeout`), which also detect dead peers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from starlette.types import Message
from starlette.websockets import WebSocket

from streaming.broker import Broker
from streaming.channels.fastpath import DirectWriter, abort, abort_later_unless_closed, ws_frame
from streaming.envelope import Event
from streaming.errors import BrokerClosed, ControlError, InvalidEventId
from streaming.jsonshape import check_json_shape
from streaming.messages import (
    ClientMessage,
    ControlOp,
    Ping,
    RequestId,
    Subscribe,
    Unsubscribe,
    decoder,
    error_reply,
    ok_reply,
    op_name,
    request_id_of,
)
from streaming.subscription import CloseReason, QueueItem, ReplayInfo, Subscription

__all__ = ["MAX_MESSAGE_BYTES", "CloseCode", "ControlHandler", "serve_websocket"]

log = logging.getLogger(__name__)

# Answers one control op, decoded once into its Struct (`streaming.messages`): returns the
# reply's `result`, or raises `ControlError(code, message)` for an error reply.
ControlHandler = Callable[[ControlOp], Awaitable[dict[str, Any]]]
MAX_MESSAGE_BYTES = 1 << 20
STALL_GRACE_S = 0.5
_SCAN_ON_LOOP_MAX = 64 * 1024  # messages this small are shape-checked in well under 1 ms


class CloseCode(enum.IntEnum):
    """WebSocket close codes runwire uses, and why."""

    NORMAL = 1000  # the server ends the conversation normally (not used for errors)
    GOING_AWAY = 1001  # the broker closed: server shutting down; reconnect and resume later
    POLICY = 1008  # auth or Origin refused (sent by the service before serving)
    TOO_BIG = 1009  # a client message over 1 MiB: we will not buffer it
    INTERNAL = 1011  # a bug on our side; the client may resume from its last id
    TRY_AGAIN_LATER = 1013  # too slow: its queue overflowed; resume from the last id


_CLOSE_FOR = {
    CloseReason.TOO_SLOW: CloseCode.TRY_AGAIN_LATER,
    CloseReason.BROKER_CLOSED: CloseCode.GOING_AWAY,
}


async def serve_websocket(
    websocket: WebSocket,
    broker: Broker,
    control: ControlHandler,
    *,
    sessions: Collection[str] | None = None,
    since: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    stall_grace: float = STALL_GRACE_S,
    direct_writes: bool = True,
) -> None:
    """Accept and serve one WebSocket until either side ends it.

    `sessions` subscribes at once (the path `/sessions/{sid}/events`; its reply has id null),
    honouring `since`; without it the client sends `subscribe` ops. Auth and Origin are the
    caller's job, before this is called. Returns when the connection is over; never leaves a
    task or a subscription behind. Cancel-safe: cancelling it closes the subscription.

    `direct_writes`: write pre-built frames straight to the server's transport when it can
    be reached (`streaming.channels.fastpath`); False sends every message through ASGI.
    """
    if broker.closed:
        await websocket.close(CloseCode.GOING_AWAY)
        return
    await websocket.accept()
    try:
        sub = broker.open()
    except BrokerClosed:
        await websocket.close(CloseCode.GOING_AWAY)
        return
    conn = _Connection(websocket, broker, control, sub, max_message_bytes, stall_grace)
    writer = conn.writer = DirectWriter.find(conn.send) if direct_writes else None
    if writer is not None:
        sub.sink = lambda event: writer.write_now(event.ws_frame())
    try:
        if sessions is not None:
            await conn.subscribe(None, list(sessions), since)
        await conn.run()
    finally:
        sub.close()


class _Connection:
    __slots__ = (
        "broker", "control", "max_message_bytes", "send", "stall_grace", "sub", "tg", "write_scope",
        "writer", "ws",
    )  # fmt: skip

    def __init__(
        self,
        websocket: WebSocket,
        broker: Broker,
        control: ControlHandler,
        sub: Subscription,
        max_message_bytes: int,
        stall_grace: float,
    ) -> None:
        self.ws = websocket
        self.broker = broker
        self.control = control
        self.sub = sub
        self.max_message_bytes = max_message_bytes
        self.stall_grace = stall_grace
        self.send = websocket._send  # the raw ASGI send: one frame per call, no state checks
        self.writer: DirectWriter | None = None
        self.write_scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        # Two tasks per connection (memory per idle subscriber): this one reads, one writes.
        async with anyio.create_task_group() as tg:
            self.tg = tg
            tg.start_soon(self.write)
            await self.read()
            tg.cancel_scope.cancel()

    # -- sender -----------------------------------------------------------------------------

    async def write(self) -> None:
        sub = self.sub
        # Overflow or shutdown while a write waits on a full socket: stop waiting at once.
        sub.queue.on_close = self._interrupt_write
        while not sub.closed:
            with anyio.CancelScope() as self.write_scope:
                batch = await sub.get_batch()
                if not batch:
                    break
                if not await self._write_batch(batch):
                    return  # the peer has gone: `_send` ended the connection, or the reader sees it
        await self._close_for(sub.reason)

    def _interrupt_write(self, reason: CloseReason) -> None:
        if reason in _CLOSE_FOR and self.write_scope is not None:
            self.write_scope.cancel()  # no partial frame: writes are whole, waits are after

    async def _write_batch(self, batch: list[QueueItem]) -> bool:
        writer = self.writer
        if writer is None:
            for item in batch:
                text = item.text() if isinstance(item, Event) else item.decode()
                if not await self._send({"type": "websocket.send", "text": text}):
                    return False
            return True
        # Every ready item in one write; each event's frame is shared by all sockets.
        data = ws_frame(batch[0]) if len(batch) == 1 else b"".join(map(ws_frame, batch))
        writer.busy = True
        try:
            await writer.write(data)
        except ConnectionError:
            return False
        finally:
            writer.busy = False
        return True

    async def _close_for(self, reason: CloseReason | None) -> None:
        code = _CLOSE_FOR.get(reason) if reason is not None else None
        if code is None:
            return  # closed by us (client gone, message too big): nothing more to say
        assert reason is not None
        with anyio.move_on_after(self.stall_grace) as scope:
            await self._send({"type": "websocket.close", "code": code, "reason": reason.value})
        if scope.cancelled_caught:
            abort(self.send)  # the close frame can't even be queued: cut the peer off now
        else:
            # Queued; a peer that never reads it would hold the connection open: abort then.
            abort_later_unless_closed(self.send, self.stall_grace)
        self.tg.cancel_scope.cancel()

    async def _send(self, message: Message) -> bool:
        """One ASGI message; False when the peer has gone (the connection is then over).

        Caught here, not around the task group: uvicorn's ClientDisconnected (an OSError)
        would leave it inside an exception group, which the server logs as a crash."""
        try:
            await self.send(message)
        except OSError:
            self.tg.cancel_scope.cancel()
            return False
        return True

    def reply(self, item: bytes) -> None:
        self.sub.put_reply(item)

    # -- reader -----------------------------------------------------------------------------

    async def read(self) -> None:
        receive = self.ws._receive
        while True:
            message: Message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.sub.close()
                return
            if kind != "websocket.receive":
                continue
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if _too_big(data, self.max_message_bytes):
                self.sub.close()
                await self._send({"type": "websocket.close", "code": CloseCode.TOO_BIG})
                self.tg.cancel_scope.cancel()
                return
            await self.handle(data)

    async def handle(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        check = partial(check_json_shape, raw)
        # As over HTTP: bounded nesting and numbers (deep nesting would make the decoder raise
        # RecursionError); a large message takes milliseconds to scan, off the event loop.
        problem = check() if len(raw) < _SCAN_ON_LOOP_MAX else await anyio.to_thread.run_sync(check)
        if problem is not None:
            self.reply(error_reply(None, "INVALID_REQUEST", problem))
            return
        try:
            op: ClientMessage = decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            self.reply(error_reply(request_id_of(raw), "INVALID_REQUEST", str(exc)))
            return
        try:
            if isinstance(op, Subscribe):
                sessions = None if op.sessions == "*" else list(op.sessions)
                await self.subscribe(op.id, sessions, op.since)
            elif isinstance(op, Unsubscribe):
                self.unsubscribe(op)
            elif isinstance(op, Ping):
                self.reply(ok_reply(op.id, {"pong": True}))
            else:
                await self.forward(op)
        except BrokerClosed:
            pass  # the sender sees the subscription closed and closes with 1001

    async def subscribe(
        self, request_id: RequestId, sessions: list[str] | None, since: str | None
    ) -> None:
        def queue_reply(info: ReplayInfo) -> None:
            self.reply(ok_reply(request_id, info.as_result()))

        try:
            await self.sub.add(sessions, since, before_replay=queue_reply)
        except InvalidEventId as exc:
            self.reply(error_reply(request_id, "INVALID_REQUEST", str(exc)))

    def unsubscribe(self, op: Unsubscribe) -> None:
        current = self.sub.sessions
        if op.sessions == "*":
            self.sub.remove(None)
        elif current is None:
            message = "subscribed to '*': unsubscribe '*' first, then subscribe to sessions"
            self.reply(error_reply(op.id, "INVALID_REQUEST", message))
            return
        else:
            self.sub.remove(op.sessions)
        remaining = self.sub.sessions
        result = {"sessions": "*" if remaining is None else sorted(remaining)}
        self.reply(ok_reply(op.id, result))

    async def forward(self, op: ControlOp) -> None:
        try:
            result = await self.control(op)
        except ControlError as exc:
            self.reply(error_reply(op.id, exc.code, exc.message))
        except Exception:
            log.exception("control handler failed for op %r", op_name(op))
            self.reply(error_reply(op.id, "INTERNAL", "internal error"))
        else:
            self.reply(ok_reply(op.id, result))


def _too_big(data: str | bytes, limit: int) -> bool:
    if len(data) <= limit // 4:  # fast path: no UTF-8 text of this length can exceed it
        return False
    size = len(data.encode()) if isinstance(data, str) else len(data)
    return size > limit
