"""Server-Sent Events channel (contract section 5.1): `sse_response`.

A plain ASGI response rather than sse-starlette's: every event's frame (`id:`, `event:`,
`data:`) is built once per event and shared by all subscribers (`Event.sse_frame`), and each
ready batch goes out in ONE `send`, so a subscriber costs one write per burst, not per event.

Lifetime of one stream: subscribe (the resume point is validated first, so a malformed id
raises `InvalidEventId` before anything is sent), send headers and a `retry:` hint, then
forward batches, with a comment line after `keepalive` seconds of silence. It ends when the
client disconnects (noticed through `http.disconnect`), when the subscription ends (overflow:
the client was too slow and resumes from its last id; a run subscription after the run's
terminal event; broker closed). A stream whose client stopped reading so long that the queue
overflowed while a write is blocked on the full socket is aborted after `stall_grace`
seconds. The subscription is closed in every case: no task or queue outlives the request.
"""

from __future__ import annotations

from collections.abc import Collection

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from streaming.broker import Broker
from streaming.channels.fastpath import DirectWriter, abort, abort_later_unless_closed
from streaming.envelope import Event, parse_since
from streaming.errors import BrokerClosed, InvalidEventId
from streaming.framing import http_chunk
from streaming.subscription import CloseReason, QueueItem, Subscription

__all__ = ["SSEResponse", "resume_point", "sse_response"]

RETRY_MS = 2000  # browsers reconnect after this long
KEEPALIVE_S = 15.0
STALL_GRACE_S = 0.5

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each frame through at once
    (b"content-encoding", b"identity"),  # compression middleware leaves it alone
]


def resume_point(request: Request) -> str | None:
    """The resume id: `Last-Event-ID` header, else `?since=`, else `?last_event_id=`.

    Empty values count as absent. Raises `InvalidEventId` when malformed.
    """
    for where, value in (
        ("header:Last-Event-ID", request.headers.get("last-event-id")),
        ("query:since", request.query_params.get("since")),
        ("query:last_event_id", request.query_params.get("last_event_id")),
    ):
        if value:
            try:
                parse_since(value)  # validate now: the service answers 422 before the stream
            except InvalidEventId as exc:
                exc.where = where
                raise
            return value
    return None


def sse_response(
    request: Request,
    broker: Broker,
    *,
    sessions: Collection[str] | None,
    run_id: str | None = None,
    keepalive: float = KEEPALIVE_S,
    direct_writes: bool = True,
) -> Response:
    """An SSE stream of `sessions` (None: all) or of run `run_id` (ends after its terminal
    event). Raises `streaming.errors.InvalidEventId` for a malformed resume id.
    `direct_writes`: see `streaming.channels.fastpath` (False: every chunk through ASGI)."""
    since = resume_point(request)
    return SSEResponse(
        broker, sessions=sessions, run_id=run_id, since=since, keepalive=keepalive,
        direct_writes=direct_writes,
    )  # fmt: skip


class SSEResponse(Response):
    """The streaming response behind `sse_response` (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        *,
        sessions: Collection[str] | None,
        run_id: str | None,
        since: str | None,
        keepalive: float = KEEPALIVE_S,
        stall_grace: float = STALL_GRACE_S,
        direct_writes: bool = True,
    ) -> None:
        self.broker = broker
        self.direct_writes = direct_writes
        self.sessions = None if sessions is None else list(sessions)
        self.run_id = run_id
        self.since = since
        self.keepalive = keepalive
        self.stall_grace = stall_grace
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            sub = await self.broker.subscribe(
                sessions=self.sessions, run_id=self.run_id, since=self.since
            )
        except BrokerClosed:
            await Response("shutting down", status_code=503)(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(_body(b"retry: %d\n\n" % RETRY_MS))
            disconnected = aborted = False
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal disconnected
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            disconnected = True
                            tg.cancel_scope.cancel()
                            return

                async def watch_stall() -> None:
                    nonlocal aborted
                    reason = await sub.queue.wait_closed()
                    if reason is CloseReason.COMPLETED:
                        return  # the stream drains the rest and ends by itself
                    if reason is CloseReason.TOO_SLOW:
                        # Cut the connection itself too unless the client lets it go.
                        abort_later_unless_closed(send, self.stall_grace * 2)
                    await anyio.sleep(self.stall_grace)
                    # Still here: `send` is blocked on a socket nobody reads. Cut it off.
                    aborted = True
                    abort(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                tg.start_soon(watch_stall)
                # Raw chunks only where the server speaks chunked HTTP/1.1 to this client.
                direct = self.direct_writes and scope.get("http_version") == "1.1"
                writer = DirectWriter.find(send) if direct else None
                if writer is not None:
                    sub.sink = lambda event: writer.write_now(event.sse_chunk())
                await self._forward(sub, send, writer)
                tg.cancel_scope.cancel()
            if not disconnected and not aborted:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except* OSError:
            # The peer went away mid-write (ConnectionError included), raised bare or, from
            # inside the task group, in an exception group: either way the stream is over.
            pass
        finally:
            sub.close()

    async def _forward(self, sub: Subscription, send: Send, writer: DirectWriter | None) -> None:
        while True:
            batch: list[QueueItem] | None = None
            with anyio.move_on_after(self.keepalive):
                batch = await sub.get_batch()
            if batch is None:
                await send(_body(b": keep-alive\n\n"))
                continue
            if not batch:
                return
            if writer is None:
                await send(_body(b"".join(_frame(item) for item in batch)))
                continue
            writer.busy = True
            try:
                if len(batch) == 1 and isinstance(batch[0], Event):
                    await writer.write(batch[0].sse_chunk())  # shared by every subscriber
                else:
                    await writer.write(http_chunk(b"".join(_frame(item) for item in batch)))
            finally:
                writer.busy = False


def _frame(item: QueueItem) -> bytes:
    return item.sse_frame() if isinstance(item, Event) else item


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}
