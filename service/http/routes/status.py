"""Status and description routes: health, readiness, Prometheus metrics, OpenAPI, AsyncAPI.

`/v1/health` is the one endpoint open without a token (load balancers probe it). Readiness is
503 while the store is not writable or the service is shutting down, so a balancer stops
sending work before the listener closes.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.contract.models import Readiness
from service.http.backend import backend_figures, broker_ok
from service.http.codec import json_response
from service.http.metrics import CONTENT_TYPE, render_gauges
from service.http.openapi import OperationTable, openapi_document
from service.http.state import service_state
from streaming.asyncapi import asyncapi_document

__all__ = ["HealthStatus", "table"]

table = OperationTable("status")


class HealthStatus(msgspec.Struct, kw_only=True):
    """`GET /v1/health`: the process is up and answering."""

    status: str


@table.route("GET", "/health", response=HealthStatus, errors=())
async def health(request: Request) -> Response:
    """Liveness: always `{"status": "ok"}` while the process answers (no token needed)."""
    return json_response(HealthStatus(status="ok"))


@table.route("GET", "/readiness", response=Readiness, errors=("SERVICE_UNAVAILABLE",))
async def readiness(request: Request) -> Response:
    """Readiness with queue and session figures; 503 when not ready."""
    state = service_state(request.app)
    report: dict[str, Any] = dict(await state.runtime.refresh_readiness())
    if state.draining:
        # Shutting down: the runtime may not have noticed yet (signal handling runs first).
        report["ready"] = False
        report["status"] = "unavailable"
    if not broker_ok(state):  # contract section 12: Redis is configured and unreachable
        report["ready"] = False
        report["status"] = "unavailable"
    body = msgspec.convert(report, Readiness)
    return json_response(body, 200 if body.ready else 503)


@table.route("GET", "/metrics", media_type=CONTENT_TYPE)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (sessions, runs by status, queue, subscribers, durations)."""
    state = service_state(request.app)
    figures = dict(state.runtime.readiness().get("metrics", {}))
    if (remote := state.runtime.scheduler.remote) is not None:  # runs on `runwire worker`s
        figures.update(remote.figures, remote_broker_available=int(remote.available))
    published = max(0, state.broker.top_seq - state.start_seq + 1)
    # Rendering reads the store, which is synchronous: off the event loop.
    text = await anyio.to_thread.run_sync(state.metrics.render, figures, published)
    if gauges := await backend_figures(state):  # the Redis backend's own figures
        text += render_gauges(gauges)
    return Response(text, media_type=CONTENT_TYPE)


@table.route("GET", "/openapi.json")
async def openapi(request: Request) -> Response:
    """This API's OpenAPI 3.1 document."""
    state = service_state(request.app)
    document = state.openapi
    if document is None:
        document = state.openapi = openapi_document(
            state.operations, websocket_paths=state.websocket_paths
        )
    return json_response(document)


@table.route("GET", "/asyncapi.json")
async def asyncapi(request: Request) -> Response:
    """The AsyncAPI 3 document of the WebSocket and SSE channels."""
    return json_response(asyncapi_document())
