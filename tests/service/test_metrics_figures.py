"""`/metrics` keeps its run figures in memory: a scrape reads only what changed since the last
one (new runs and runs it saw unfinished), never the whole run history, and still reports
exactly what the store holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_support import Api, finished_run, session_body, sleep_step
from prometheus_client.parser import text_string_to_metric_families

from service.contract.records import RunRecord, RunStatus
from service.http.metrics import RUN_DURATION_BUCKETS, ServiceMetrics
from service.storage.store import SessionStore


def run(run_id: str, status: RunStatus, elapsed: float | None = None) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        session_id="s",
        queued_utc="2026-01-01T00:00:00Z",
        status=status,
        elapsed_s=elapsed,
    )


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_reads_only_new_and_unfinished_runs(tmp_path: Path) -> None:
    with SessionStore(tmp_path / "runwire.sqlite3") as store:
        for i in range(300):
            store.save_run(run(f"old{i}", RunStatus.SUCCEEDED, 0.02 if i % 2 else 7.0))
        store.save_run(run("waiting", RunStatus.QUEUED))
        rows_read: list[int] = []

        def load(after: int, pending: Any) -> list[tuple[int, str, float | None]]:
            rows = store.run_figures_after(after, pending)
            rows_read.append(len(rows))
            return rows

        metrics = ServiceMetrics(load)
        first = samples(metrics.render({}, 0))
        assert rows_read == [301]  # the history once, after a start
        assert first[("runwire_runs", (("status", "succeeded"),))] == 300
        assert first[("runwire_runs", (("status", "queued"),))] == 1

        # One more run finishes and the queued one starts: the scrape reads those two rows.
        store.save_run(run("new", RunStatus.FAILED, 0.3))
        store.save_run(run("waiting", RunStatus.RUNNING))
        second = samples(metrics.render({}, 0))
        assert rows_read[1] == 2
        assert second[("runwire_runs", (("status", "succeeded"),))] == 300
        assert second[("runwire_runs", (("status", "failed"),))] == 1
        assert second[("runwire_runs", (("status", "running"),))] == 1
        assert ("runwire_runs", (("status", "queued"),)) not in second

        # It finishes; nothing else changed: one row read, and the histogram is cumulative.
        store.save_run(run("waiting", RunStatus.SUCCEEDED, 1.0))
        third = samples(metrics.render({}, 0))
        assert rows_read[2] == 1
        assert ("runwire_runs", (("status", "running"),)) not in third
        succeeded = (("status", "succeeded"),)
        assert third[("runwire_run_duration_seconds_count", succeeded)] == 301
        assert third[("runwire_run_duration_seconds_sum", succeeded)] == pytest.approx(
            150 * 0.02 + 150 * 7.0 + 1.0
        )
        le = {
            bound: third[("runwire_run_duration_seconds_bucket", (("le", str(bound)), *succeeded))]
            for bound in RUN_DURATION_BUCKETS
        }
        assert le[0.01] == 0 and le[0.025] == 150 and le[1] == 151 and le[5] == 151
        assert le[10] == 301
        samples(metrics.render({}, 0))
        assert rows_read[3] == 0  # nothing new, nothing unfinished: nothing read


@pytest.mark.anyio
async def test_metrics_follow_runs_as_they_finish_over_http(api: Api) -> None:
    await api.client.post("/v1/sessions", json=session_body("m", sleep_step(seconds=0.0)))

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await api.client.get("/v1/metrics")
        assert response.status_code == 200
        return samples(response.text)

    succeeded = ("runwire_runs", (("status", "succeeded"),))
    assert succeeded not in await scrape()
    for expected in (1, 2, 3):
        run_id = (await api.client.post("/v1/sessions/m/process", json={})).json()["run_id"]
        await finished_run(api, run_id)
        figures = await scrape()
        assert figures[succeeded] == expected
        count = ("runwire_run_duration_seconds_count", (("status", "succeeded"),))
        assert figures[count] == expected
