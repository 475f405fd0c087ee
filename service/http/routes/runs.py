"""Run routes (contract section 4): list a session's runs, show, cancel and retry a run.

The run's SSE stream (`GET /v1/runs/{run_id}/events`) lives with the other streams in
`service.http.routes.events`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from service.contract.models import RunList, SubmitResult
from service.contract.records import RunRecord
from service.http.codec import json_response
from service.http.openapi import OperationTable, Param, query_limit
from service.http.routes.sessions import submitted
from service.http.state import service_state

if TYPE_CHECKING:
    from service.runtime.facade import Runtime

__all__ = ["table"]

table = OperationTable("runs")
_RUN = {"run_id": "run id"}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = service_state(request.app).runtime
    return runtime


def _run_id(request: Request) -> str:
    run_id: str = request.path_params["run_id"]
    return run_id


RUNS_PAGE_DEFAULT = 100
RUNS_PAGE_MAX = 1000


@table.route(
    "GET",
    "/sessions/{sid}/runs",
    response=RunList,
    errors=("SESSION_NOT_FOUND", "INVALID_REQUEST"),
    path_descriptions={"sid": "session id"},
    params=(
        Param(
            "limit",
            "query",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": RUNS_PAGE_MAX,
                "default": RUNS_PAGE_DEFAULT,
            },
            "page size",
        ),
        Param("before", "query", {"type": "string"}, "only runs older than this run id (paging)"),
    ),
)
async def list_runs(request: Request) -> Response:
    """The session's runs, newest first (submission order reversed), a page at a time."""
    limit = query_limit(request, default=RUNS_PAGE_DEFAULT, maximum=RUNS_PAGE_MAX)
    before = request.query_params.get("before") or None
    runs, next_before = await _runtime(request).page_runs(request.path_params["sid"], limit, before)
    return json_response(RunList(runs=runs, next_before=next_before))


@table.route(
    "GET", "/runs/{run_id}", response=RunRecord, errors=("RUN_NOT_FOUND",), path_descriptions=_RUN
)
async def get_run(request: Request) -> Response:
    """One run."""
    return json_response(await _runtime(request).get_run(_run_id(request)))


@table.route(
    "POST",
    "/runs/{run_id}/cancel",
    response=RunRecord,
    status=202,
    errors=("RUN_NOT_FOUND", "RUN_NOT_CANCELLABLE"),
    path_descriptions=_RUN,
)
async def cancel_run(request: Request) -> Response:
    """Cancel a run: a queued run at once, a running one cooperatively (`cancelling`)."""
    return json_response(await _runtime(request).cancel_run(_run_id(request)), 202)


@table.route(
    "POST",
    "/runs/{run_id}/retry",
    response=SubmitResult,
    status=202,
    location_header=True,
    errors=("RUN_NOT_FOUND", "RUN_NOT_RETRYABLE", "QUEUE_FULL", "SERVICE_UNAVAILABLE"),
    path_descriptions=_RUN,
)
async def retry_run(request: Request) -> Response:
    """Queue a new run repeating a failed, cancelled or interrupted one (`retry_of`)."""
    return submitted(await _runtime(request).retry_run(_run_id(request)))
