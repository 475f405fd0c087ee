"""A tiny Starlette app over the streaming package, served by uvicorn on a free 127.0.0.1 port
in a background thread: the real-socket tier of the streaming tests. Also the helpers the
streaming tests share (`drain`, `recv_json`, `wait_until`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection

from streaming.broker import Broker
from streaming.channels.sse import sse_response
from streaming.channels.ws import serve_websocket
from streaming.envelope import Event
from streaming.errors import ControlError, InvalidEventId
from streaming.messages import Cancel, ControlOp, DryRun, Process, SetSample, op_name
from streaming.subscription import Subscription

T = TypeVar("T")


async def control(op: ControlOp) -> dict[str, Any]:
    """The test's stand-in for the service's control handler: it gets the typed op."""
    if isinstance(op, Process):
        return {"run_id": f"run-of-{op.session}", "status": "queued"}
    if isinstance(op, Cancel) and op.run_id == "missing":
        raise ControlError("RUN_NOT_FOUND", "no run 'missing'")
    if isinstance(op, DryRun):
        raise RuntimeError("a bug in the handler")
    if isinstance(op, SetSample):
        return {"location": op.location, "options": op.options, "process": op.process}
    return {"op": op_name(op)}


def make_app(
    broker: Broker,
    started: threading.Event,
    *,
    direct_writes: bool = True,
    keepalive: float = 15.0,
    stall_grace: float = 0.5,
) -> Starlette:
    async def events(request: Request) -> Response:
        sessions = request.query_params.get("sessions")
        return sse_response(
            request, broker, sessions=sessions.split(",") if sessions else None,
            keepalive=keepalive, direct_writes=direct_writes,
        )  # fmt: skip

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return sse_response(
            request, broker, sessions=None, run_id=run_id, direct_writes=direct_writes
        )

    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(
            websocket, broker, control, direct_writes=direct_writes, stall_grace=stall_grace
        )

    async def session_ws(websocket: WebSocket) -> None:
        sid = websocket.path_params["sid"]
        since = websocket.query_params.get("since")
        await serve_websocket(
            websocket, broker, control, sessions=[sid], since=since, direct_writes=direct_writes
        )

    async def invalid_id(request: Request, exc: Exception) -> Response:
        return JSONResponse({"code": "INVALID_REQUEST", "detail": str(exc)}, status_code=422)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        started.set()
        yield
        await broker.aclose()

    return Starlette(
        routes=[
            Route("/events", events),
            Route("/runs/{run_id}/events", run_events),
            WebSocketRoute("/ws", ws),
            WebSocketRoute("/sessions/{sid}/events", session_ws),
        ],
        exception_handlers={InvalidEventId: invalid_id},
        lifespan=lifespan,
    )


class DiskHistory:
    """A HistorySource over raw lines, as the service keeps them in events.ndjson."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def events_after(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> Iterable[bytes]:
        for raw in self.lines:
            e = Event.from_raw(raw)
            if (
                e.seq > seq
                and (sessions is None or e.session_id in sessions)
                and (run_id is None or e.run_id == run_id)
            ):
                yield raw


class LiveServer:
    """uvicorn serving `make_app(broker)` in a thread; `call` runs a coroutine on its loop."""

    def __init__(
        self,
        broker: Broker,
        app_options: dict[str, Any] | None = None,
        app_factory: Callable[..., Any] = make_app,
        **uvicorn_options: Any,
    ) -> None:
        self.broker = broker
        self._started = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        options = {"log_level": "warning", "timeout_graceful_shutdown": 2, **uvicorn_options}
        app = app_factory(broker, self._started, **(app_options or {}))
        config = uvicorn.Config(app, **options)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the test server did not start")

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """Run `fn()` on the server's loop (from a non-loop thread) and return its result."""
        assert self.loop is not None

        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()


@contextlib.contextmanager
def live_server(
    broker: Broker, app_options: dict[str, Any] | None = None, **uvicorn_options: Any
) -> Iterator[LiveServer]:
    server = LiveServer(broker, app_options, **uvicorn_options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll a condition that changes on the server's thread (no event to wait on across
    threads), failing after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - no event crosses the threads
            await anyio.sleep(0.005)


async def drain(sub: Subscription, n: int) -> list[Event]:
    """The next `n` events of `sub` (replies left out), failing after 5 s or if it ends."""
    got: list[Event] = []
    async with asyncio.timeout(5):
        while len(got) < n:
            batch = await sub.get_batch()
            assert batch, f"subscription ended early ({sub.reason})"
            got.extend(e for e in batch if isinstance(e, Event))
    return got


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """The next WebSocket message, decoded; fails after 10 s."""
    with anyio.fail_after(10):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message
