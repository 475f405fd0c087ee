"""The Redis backend under the streaming tests: events published on an API-side `Broker`
travel through a real redis-server (`RedisEventWriter`) to a `RelayBroker` fed by a
`RedisRelay`, and the test server's channels serve the relay. So a test parametrised with it
exercises Redis, not only the local path."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from liveserver import make_app
from starlette.applications import Starlette

from streaming.backends import RedisEventWriter, RedisHistory, RedisRelay, RelayBroker
from streaming.broker import Broker
from streaming.envelope import Event


class RedisBackedBroker:
    """What a test calls `live.broker` on the Redis backend.

    `emit` publishes on the API-side broker and returns once the relay has delivered the event
    (as a client of a stream node would see it, a moment later): tests written for the
    in-memory broker then hold unchanged. Everything else is the relay broker's, the one the
    subscribers are on."""

    def __init__(self, url: str, *, epoch: str = "E", **options: Any) -> None:
        self.url = url
        self.publisher = Broker(epoch=epoch, **options)
        self.history = RedisHistory(url, None)
        self.relay_broker = RelayBroker(epoch=epoch, history=self.history, **options)
        self.writer = RedisEventWriter(
            url, epoch=epoch, start_seq=1, replay_size=self.publisher.replay_size, history=None
        )
        self.relay = RedisRelay(url, self.relay_broker)
        self.loop: asyncio.AbstractEventLoop | None = None

    def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event:
        event = self.publisher.emit(type, session_id, data, run_id)
        assert self.loop is not None
        arrived = asyncio.run_coroutine_threadsafe(
            self.relay_broker.wait_for_seq(event.seq, 20.0), self.loop
        ).result(30)
        assert arrived, f"event {event.seq} did not come through Redis"
        return event

    def __getattr__(self, name: str) -> Any:
        return getattr(self.relay_broker, name)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        await self.publisher.start()
        self.publisher.on_release = self.writer.offer
        self.writer.start()
        self.relay.start()
        try:
            yield
        finally:
            await self.relay.aclose()
            await self.publisher.aclose()
            await self.writer.aclose()
            await asyncio.to_thread(self.history.close)


def make_redis_app(
    backed: RedisBackedBroker, started: threading.Event, **options: Any
) -> Starlette:
    """`liveserver.make_app` over the relay broker, with the publisher, the Redis writer and
    the relay running for the app's lifetime."""
    app = make_app(backed.relay_broker, started, **options)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with backed.running(), inner(app):
            yield

    app.router.lifespan_context = lifespan
    return app
