from __future__ import annotations

from collections.abc import Iterator

import pytest
from liveserver import LiveServer, live_server

from streaming.broker import Broker


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["direct", "asgi"])
def direct_writes(request: pytest.FixtureRequest) -> bool:
    """Both write paths of the channels: the fast path (pre-built frames straight to uvicorn's
    transport, `streaming.channels.fastpath`) and the plain-ASGI fallback."""
    return bool(request.param == "direct")


@pytest.fixture(params=["direct", "asgi"])
def live(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A real uvicorn server with a fresh broker; the channels write either pre-built frames
    straight to the transport (the fast path) or every message through ASGI (the fallback)."""
    broker = Broker(epoch="E", replay_size=1000, subscriber_queue_size=1024)
    options = {"direct_writes": request.param == "direct"}
    with live_server(broker, options) as server:
        yield server
