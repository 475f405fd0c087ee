"""Helpers for service tests: pipelines, waiting for runs, problem assertions.

Importable from any test in tests/service as `from api_support import ...`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import msgspec
import yaml
from starlette.applications import Starlette

from service.http.server import RunwireServer
from service.http.state import service_state
from service.runtime.config import Config


@dataclass
class Api:
    """An app running in-process and a client talking to it over ASGI."""

    app: Starlette
    client: httpx.AsyncClient
    config: Config


@dataclass
class LiveServer:
    """A real uvicorn server on 127.0.0.1."""

    base_url: str
    app: Starlette
    config: Config
    server: RunwireServer

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http")


# A pipeline that needs source `sample` (a JSON file with a `value`) before it can run.
NEEDS_SAMPLE = """
name: needs-sample
sources:
  sample: {required: true}
steps:
  - id: read
    use: json.read
    params: {source: sample}
    outputs: {value: sample.value}
"""


def sleep_step(step_id: str = "nap", seconds: float = 0.0, ticks: int = 1) -> dict[str, Any]:
    """A `diag.sleep` step (cancellable between ticks)."""
    return {"id": step_id, "use": "diag.sleep", "params": {"seconds": seconds, "ticks": ticks}}


def fail_step(step_id: str = "boom", message: str = "boom") -> dict[str, Any]:
    """A `diag.fail` step that raises."""
    return {"id": step_id, "use": "diag.fail", "params": {"message": message}}


def pipeline_yaml(*steps: dict[str, Any], name: str = "t") -> str:
    """Pipeline YAML with `steps` (default: one instant `diag.sleep`) and no sources."""
    return yaml.safe_dump({"name": name, "steps": list(steps) or [sleep_step()]})


def session_body(session_id: str, *steps: dict[str, Any]) -> dict[str, Any]:
    """A `POST /v1/sessions` body for an inline pipeline of `steps`."""
    return {"session_id": session_id, "pipeline": {"yaml_text": pipeline_yaml(*steps)}}


async def run_events(app: Starlette, run_id: str, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every event of run `run_id` (decoded), waiting for its terminal event.

    Subscribes to the broker directly (from the run's start), so it works in-process where
    `ASGITransport` cannot stream SSE.
    """
    import anyio
    import msgspec

    events: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        subscription = await service_state(app).broker.subscribe(run_id=run_id)
        try:
            while batch := await subscription.get_batch():
                events.extend(msgspec.json.decode(item.raw) for item in batch)
        finally:
            subscription.close()
    return events


async def finished_run(api: Api, run_id: str, *, timeout: float = 20.0) -> dict[str, Any]:
    """The run object of `run_id` once its terminal event has been published."""
    await run_events(api.app, run_id, timeout=timeout)
    response = await api.client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert `response` is an RFC 9457 problem with this status and code; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def sse_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 20.0,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Read an SSE stream (real server) until it ends or `until(event)` is true.

    Returns the decoded `data:` envelopes in order.
    """
    import anyio

    events: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if until is not None and until(events[-1]):
                        break
    return events


@asynccontextmanager
async def busy_worker(api: Api, *, cancel_on_exit: bool = True) -> AsyncIterator[str]:
    """Occupy the only worker with a long cancellable run, so runs queued meanwhile wait."""
    body = session_body("busy", sleep_step("nap", seconds=120.0, ticks=240))
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    response = await api.client.post("/v1/sessions/busy/process", json={})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    subscription = await service_state(api.app).broker.subscribe(run_id=run_id)
    try:
        with anyio.fail_after(30):
            while not any(
                msgspec.json.decode(e.raw)["type"] == "run.started"
                for e in await subscription.get_batch()
            ):
                pass
    finally:
        subscription.close()
    try:
        yield run_id
    finally:
        if cancel_on_exit:
            await api.client.post(f"/v1/runs/{run_id}/cancel", json={})
