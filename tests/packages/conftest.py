"""Fixtures for pipeline-package tests: a wheelhouse built once per test session, and every
package deactivated after each test (activation is process-wide)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from package_builders import build_wheel

from pipeline.packages.activation import active_packages, deactivate


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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
