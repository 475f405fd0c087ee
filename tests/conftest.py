"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, redis_server_path


def require_redis() -> None:
    """Skip without `redis-server` on a developer's machine; fail under CI, which installs it."""
    if redis_server_path() is None:
        reason = "redis-server is not installed (Debian: apt-get install -y redis-server)"
        if os.environ.get("RUNWIRE_REQUIRE_REDIS") == "1":
            pytest.fail(reason + "; CI requires it", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh `redis-server` for one test, with its append-only file in the test's directory."""
    require_redis()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
