"""`GET /v1/workers`: the `runwire worker` processes and the Redis run queue, as the API node
last saw them (refreshed every couple of seconds by `service.runtime.remote.RemoteRuns`, never
by the request itself, so a scrape cannot load Redis)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.contract.models import WorkerList, WorkerStatus
from service.http.codec import json_response
from service.http.openapi import OperationTable
from service.http.state import service_state

__all__ = ["table"]

table = OperationTable("workers")


@table.route("GET", "/workers", response=WorkerList, errors=())
async def list_workers(request: Request) -> Response:
    """The workers (alive, or just gone), their runs and leases, the queue depth in Redis."""
    remote = service_state(request.app).runtime.scheduler.remote
    if remote is None:
        return json_response(WorkerList(runs="local", broker_available=True))
    figures = remote.figures
    body = WorkerList(
        runs="workers",
        broker_available=remote.available,
        queue_depth=int(figures.get("remote_queue_depth", 0)),
        reports_lag=int(figures.get("remote_reports_lag", 0)),
        workers=[msgspec.convert(w, WorkerStatus) for w in remote.workers],
    )
    return json_response(body)
