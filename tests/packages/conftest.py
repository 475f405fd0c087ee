"""Fixtures for pipeline-package tests: a wheelhouse built once per test session, and every
package deactivated after each test (activation is process-wide)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from package_builders import build_wheel
from starlette.applications import Starlette

from pipeline.packages.activation import active_packages, deactivate
from service.app import create_app
from service.config import Config


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rwtiny` 1.0 and 2.0 as real wheels (pip is slow: built once for all tests)."""
    work = tmp_path_factory.mktemp("wheel-src")
    house = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(work, house, "rwtiny", "1.0")
    build_wheel(work, house, "rwtiny", "2.0")
    return house


@pytest.fixture(autouse=True)
def _no_package_left_active() -> Iterator[None]:
    yield
    for active in active_packages():
        active.users.clear()
        deactivate(active.name)


@asynccontextmanager
async def running_api(config: Config) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app for `config` in-process (lifespan started) and a client over ASGI."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield app, client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
