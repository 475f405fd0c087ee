"""Scale-out tests (contract section 12) on real processes: `runwire serve` as the API node and
as stream nodes, and a real `redis-server` (the `redis_server` fixture of tests/conftest.py).

The process helpers of tests/service/sstore_server.py are reused, not copied."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
