"""Paging retained runs with the largest page size: the cursor must not stop early."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sstore_rundirs import retained_app, write_run

from service.storage.retained import MAX_LIMIT

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_runs(runs: Path, count: int) -> None:
    """`count` finished runs of session `s`, `run-0000` oldest."""
    for i in range(count):
        queued = f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z"
        write_run(runs, "s", f"run-{i:04d}", queued_utc=queued, manifest=False)


async def test_a_full_page_of_max_limit_runs_still_pages_on(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_runs(runs, MAX_LIMIT + 2)
    transport = httpx.ASGITransport(app=retained_app(runs))
    async with httpx.AsyncClient(transport=transport, base_url="http://runwire.test") as client:
        first = (await client.get(f"/v1/retained-runs?limit={MAX_LIMIT}")).json()
        assert len(first["runs"]) == MAX_LIMIT
        assert first["next_before"] == first["runs"][-1]["run_id"] == "run-0002"
        rest = (await client.get(f"/v1/retained-runs?limit={MAX_LIMIT}&before=run-0002")).json()
        assert [r["run_id"] for r in rest["runs"]] == ["run-0001", "run-0000"]
        assert rest["next_before"] is None


async def test_exactly_max_limit_runs_is_one_page(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_runs(runs, MAX_LIMIT)
    transport = httpx.ASGITransport(app=retained_app(runs))
    async with httpx.AsyncClient(transport=transport, base_url="http://runwire.test") as client:
        page = (await client.get(f"/v1/retained-runs?limit={MAX_LIMIT}")).json()
    assert len(page["runs"]) == MAX_LIMIT
    assert page["next_before"] is None
