from __future__ import annotations

from collections.abc import Iterator

import pytest
from liveserver import LiveServer, live_server
from redis_backend import RedisBackedBroker, make_redis_app

from streaming.broker import Broker


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["direct", "asgi"])
def direct_writes(request: pytest.FixtureRequest) -> bool:
    """Both write paths of the channels: the fast path (pre-built frames straight to uvicorn's
    transport, `streaming.channels.fastpath`) and the plain-ASGI fallback."""
    return bool(request.param == "direct")


@pytest.fixture(params=["direct", "asgi", "redis"])
def live(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A real uvicorn server with a fresh broker; the channels write either pre-built frames
    straight to the transport (the fast path) or every message through ASGI (the fallback).

    "redis": the Redis Streams backend (contract section 12): events go through a real
    redis-server to a stream node's relay broker, which the channels serve (fast path)."""
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        backed = RedisBackedBroker(redis.url, replay_size=1000, subscriber_queue_size=1024)
        server = LiveServer(backed, {"direct_writes": True}, app_factory=make_redis_app)  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()
        return
    broker = Broker(epoch="E", replay_size=1000, subscriber_queue_size=1024)
    options = {"direct_writes": request.param == "direct"}
    with live_server(broker, options) as server:
        yield server
