"""The server side of bench_fanout.py: one uvicorn process serving, side by side,

- runwire (`/rw/ws`, `/rw/sse`): `streaming.Broker` + `serve_websocket` / `sse_response`;
- a naive baseline (`/naive/ws`, `/naive/sse`): one task awaits each socket in turn per event;
- encode/broadcaster (`/bc/ws`, `/bc/sse`): `Broadcast("memory://")` used as its README shows
  (one subscriber per connection, `async for event in subscriber: await send(event)`).

A worker thread publishes (`POST /publish`), stamping `time.monotonic_ns()` into each event's
data; the same envelope bytes (`Event.create(...).raw`) are sent by all three. `GET /stats`
reports subscriber counts, resident memory and the times subscribers were cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from streaming.broker import Broker
from streaming.channels.sse import sse_response
from streaming.channels.ws import serve_websocket
from streaming.envelope import Event
from streaming.messages import ControlOp
from streaming.subscription import Subscription

UVICORN_OPTIONS: dict[str, Any] = {
    # The same for every peer. No per-message deflate: it compresses per connection and
    # would dominate everyone's fan-out cost; no pings: the raw bench clients don't answer.
    "ws_per_message_deflate": False,
    "ws_ping_interval": None,
    "log_level": "warning",
    "timeout_graceful_shutdown": 1,
    "backlog": 4096,
}


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Bench:
    def __init__(self) -> None:
        self.overflow_ns: list[int] = []
        self.broker = Broker(
            epoch="bench", replay_size=20_000, subscriber_queue_size=1024,
            on_overflow=self._overflowed, replay_limit=100_000,
        )  # fmt: skip
        self.broadcast = Broadcast("memory://")
        self.naive_ws: set[WebSocket] = set()
        self.naive_sse: set[Send] = set()
        self.bc_subscribers = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.naive_queue: asyncio.Queue[str] = asyncio.Queue()  # unbounded: it's the baseline
        self.bc_queue: asyncio.Queue[str] = asyncio.Queue()

    def _overflowed(self, sub: Subscription) -> None:
        self.overflow_ns.append(time.monotonic_ns())

    # -- publishing -------------------------------------------------------------------------

    def publish(self, impl: str, rate: float, count: int, pad: int) -> None:
        """Worker thread: `count` events at `rate` per second."""
        padding = "x" * pad
        assert self.loop is not None
        loop = self.loop
        if impl == "rw":

            def one(i: int) -> None:
                self.broker.emit(
                    "step.progress", "bench", {"ts": time.monotonic_ns(), "i": i, "pad": padding}
                )

        else:
            queue = self.naive_queue if impl == "naive" else self.bc_queue

            def one(i: int) -> None:
                data = {"ts": time.monotonic_ns(), "i": i, "pad": padding}
                raw = Event.create(
                    epoch="bench", seq=i + 1, type="step.progress", session_id="bench", data=data
                ).raw
                loop.call_soon_threadsafe(queue.put_nowait, raw.decode())

        pace(one, rate, count)

    async def naive_loop(self) -> None:
        while True:
            text = await self.naive_queue.get()
            frame = f"id: x\nevent: step.progress\ndata: {text}\n\n".encode()
            for ws in list(self.naive_ws):  # awaits each socket in turn
                try:
                    await ws.send_text(text)
                except Exception:
                    self.naive_ws.discard(ws)
            for send in list(self.naive_sse):
                try:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                except Exception:
                    self.naive_sse.discard(send)

    async def bc_loop(self) -> None:
        while True:
            text = await self.bc_queue.get()
            await self.broadcast.publish(channel="bench", message=text)


def pace(one: Callable[[int], None], rate: float, count: int) -> None:
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0.0005:
            time.sleep(delay)
        one(i)


def build_app(bench: Bench) -> Starlette:
    async def control(op: ControlOp) -> dict[str, Any]:
        return {}

    async def rw_ws(ws: WebSocket) -> None:
        await serve_websocket(
            ws, bench.broker, control, sessions=["bench"], since=ws.query_params.get("since")
        )

    async def rw_sse(request: Request) -> Response:
        return sse_response(request, bench.broker, sessions=["bench"])

    async def naive_ws(ws: WebSocket) -> None:
        await ws.accept()
        bench.naive_ws.add(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            bench.naive_ws.discard(ws)

    async def naive_sse_app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        bench.naive_sse.add(send)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            bench.naive_sse.discard(send)

    class NaiveSSE:  # a raw ASGI endpoint (Route wraps plain functions as request handlers)
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await naive_sse_app(scope, receive, send)

    async def bc_ws(ws: WebSocket) -> None:
        await ws.accept()
        async with bench.broadcast.subscribe(channel="bench") as subscriber:
            bench.bc_subscribers += 1
            try:
                async for event in subscriber:  # type: ignore[union-attr]
                    assert event is not None
                    await ws.send_text(event.message)
            except Exception:
                pass
            finally:
                bench.bc_subscribers -= 1

    async def bc_sse(request: Request) -> Response:
        async def frames() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            async with bench.broadcast.subscribe(channel="bench") as subscriber:
                bench.bc_subscribers += 1
                try:
                    async for event in subscriber:  # type: ignore[union-attr]
                        assert event is not None
                        yield f"id: x\nevent: step.progress\ndata: {event.message}\n\n"
                finally:
                    bench.bc_subscribers -= 1

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def publish(request: Request) -> Response:
        body = await request.json()
        args = (body["impl"], body["rate"], body["count"], body.get("pad", 64))
        threading.Thread(target=bench.publish, args=args, daemon=True).start()
        return JSONResponse({"started": True})

    async def stats(request: Request) -> Response:
        gc.collect()
        return JSONResponse({
            "rw": bench.broker.subscriber_count, "naive": len(bench.naive_ws) + len(bench.naive_sse),
            "bc": bench.bc_subscribers, "rss_kib": rss_kib(), "overflow_ns": bench.overflow_ns,
            "top_seq": bench.broker.top_seq,
        })  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        bench.loop = asyncio.get_running_loop()
        await bench.broker.start()
        await bench.broadcast.connect()
        tasks = [asyncio.create_task(bench.naive_loop()), asyncio.create_task(bench.bc_loop())]
        yield
        for t in tasks:
            t.cancel()
        await bench.broker.aclose()
        await bench.broadcast.disconnect()

    return Starlette(
        routes=[
            WebSocketRoute("/rw/ws", rw_ws), Route("/rw/sse", rw_sse),
            WebSocketRoute("/naive/ws", naive_ws), Route("/naive/sse", NaiveSSE()),
            WebSocketRoute("/bc/ws", bc_ws), Route("/bc/sse", bc_sse),
            Route("/publish", publish, methods=["POST"]), Route("/stats", stats),
        ],
        lifespan=lifespan,
    )  # fmt: skip


def serve(sock: socket.socket) -> None:
    """Process entry point: serve on an already-bound, listening socket."""
    config = uvicorn.Config(build_app(Bench()), **UVICORN_OPTIONS)
    uvicorn.Server(config).run(sockets=[sock])
