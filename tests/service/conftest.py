"""Shared fixtures for service tests (reuse them; do not copy them).

In-process (fast, no sockets):

- `make_config(**overrides) -> Config`: a `Config` with its data directory under `tmp_path`
  (workers 2, a short shutdown grace).
- `api` (async): an `Api(app, client, config)` with the app's lifespan running and an
  `httpx.AsyncClient` over `ASGITransport` (base URL `http://127.0.0.1`, a Host the loopback-bound app answers; paths start with
  `/v1`). ASGITransport buffers whole responses, so use `live_server` for SSE streams.
- `make_api(**config_overrides)`: async context manager giving another `Api`, e.g. with a
  token: `async with make_api(token="t") as api: ...`.

Real sockets:

- `live_server`: uvicorn on `127.0.0.1` and a free port in a background thread, the app's
  lifespan run; yields a `LiveServer(base_url, app, config, server)`. On teardown it drains and
  stops as on SIGTERM. `make_live_server(**overrides)` is the context-manager form.

Helpers importable as `from api_support import ...` (tests/service is on sys.path):
`pipeline_yaml`, `sleep_step`, `fail_step`, `session_body`, `run_events` (wait for a run's
terminal event through the broker), `finished_run`, `assert_problem`.

Async tests use anyio's pytest plugin: mark them `@pytest.mark.anyio` (backend: asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api, LiveServer

from service.http.app import create_app
from service.http.server import serve_in_thread
from service.runtime.config import Config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    counter = iter(range(1_000_000))

    def make(**overrides: Any) -> Config:
        base = Config(data_dir=tmp_path / f"data{next(counter)}", workers=2, shutdown_grace=2.0)
        return replace(base, **overrides)

    return make


@asynccontextmanager
async def running_api(config: Config) -> AsyncIterator[Api]:
    """`Api` for `config`: lifespan started on entry and shut down on exit."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield Api(app, client, config)


@pytest.fixture
def make_api(
    make_config: Callable[..., Config],
) -> Callable[..., AbstractAsyncContextManager[Api]]:
    def make(**overrides: Any) -> AbstractAsyncContextManager[Api]:
        return running_api(make_config(**overrides))

    return make


@pytest.fixture
async def api(make_api: Callable[..., AbstractAsyncContextManager[Api]]) -> AsyncIterator[Api]:
    async with make_api() as running:
        yield running


@contextmanager
def _live(config: Config) -> Iterator[LiveServer]:
    with serve_in_thread(config) as (base_url, app, server):
        yield LiveServer(base_url, app, config, server)


@pytest.fixture
def make_live_server(
    make_config: Callable[..., Config],
) -> Callable[..., AbstractContextManager[LiveServer]]:
    def make(**overrides: Any) -> AbstractContextManager[LiveServer]:
        return _live(make_config(**overrides))

    return make


@pytest.fixture
def live_server(
    make_live_server: Callable[..., AbstractContextManager[LiveServer]],
) -> Iterator[LiveServer]:
    with make_live_server() as server:
        yield server
