"""Status endpoints: health, readiness (503 while shutting down) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import pytest
from api_support import Api, finished_run, session_body
from prometheus_client.parser import text_string_to_metric_families

from service.http.app import drain
from service.http.openapi import route_paths
from service.http.state import service_state

pytestmark = pytest.mark.anyio


async def test_health_is_ok(api: Api) -> None:
    r = await api.client.get("/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readiness_reports_queue_figures(api: Api) -> None:
    await api.client.post("/v1/sessions", json=session_body("s"))
    r = await api.client.get("/v1/readiness")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["ready"] is True
    assert set(body["metrics"]) == {
        "session_count", "active_run_count", "queued_run_count", "queue_capacity",
        "error_session_count", "error_session_ids", "subscriber_count", "last_updated_utc",
    }  # fmt: skip
    assert body["metrics"]["session_count"] == 1
    assert body["metrics"]["queue_capacity"] == api.config.queue_size


async def test_readiness_is_503_once_shutting_down(api: Api) -> None:
    await drain(api.app)
    r = await api.client.get("/v1/readiness")
    assert r.status_code == 503
    assert r.json()["ready"] is False and r.json()["status"] == "unavailable"
    # Health stays ok: the process still answers.
    assert (await api.client.get("/v1/health")).status_code == 200


async def test_metrics_in_prometheus_text_format(api: Api) -> None:
    await api.client.post("/v1/sessions", json=session_body("s"))
    run_id = (await api.client.post("/v1/sessions/s/process", json={})).json()["run_id"]
    await finished_run(api, run_id)
    r = await api.client.get("/v1/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("runwire_sessions", ())] == 1
    assert samples[("runwire_queue_capacity", ())] == api.config.queue_size
    assert samples[("runwire_runs", (("status", "succeeded"),))] == 1
    assert samples[("runwire_run_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert samples[("runwire_events_published_total", ())] > 0
    assert ("runwire_subscribers", ()) in samples
    assert samples[("runwire_task_failures", ())] == 0


async def test_a_background_task_that_fails_unhandled_is_counted_in_metrics(api: Api) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug in a background task")

    task = service_state(api.app).runtime.scheduler.tasks.spawn(broken(), name="broken")
    await asyncio.wait({task})
    r = await api.client.get("/v1/metrics")
    assert "runwire_task_failures 1.0" in r.text


async def test_asyncapi_describes_the_stream_channels(api: Api) -> None:
    r = await api.client.get("/v1/asyncapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    streams = {p for m, p in route_paths(api.app.routes) if m == "WS" or p.endswith("/events")}
    assert streams == addresses
