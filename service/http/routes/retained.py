"""Retained-run routes (contract section 4): the run history rebuilt from run directories.

Handlers are thin: they validate query parameters, cross to a worker thread for the file work
in `service.storage.retained.RetainedRuns` (`ServiceState.retained`), and answer. Errors are
`ServiceError`s rendered by the app's problem handler; containment failures of artifact
downloads are all plain 404 `NOT_FOUND`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from pipeline.rundir import media_type as media_type_for
from service.contract.errors import ServiceError
from service.contract.records import RunRecord, RunStatus
from service.http.codec import json_response
from service.http.openapi import OperationTable, Param, query_limit
from service.http.state import service_state
from service.storage.retained import MAX_LIMIT, RetainedRuns

__all__ = [
    "ArtifactEntry",
    "ArtifactManifest",
    "ReportFile",
    "RetainedRunList",
    "RunReports",
    "routes",
    "table",
]

T = TypeVar("T")


class RetainedRunList(msgspec.Struct, kw_only=True):
    """Run summaries, newest first. `next_before` pages on (pass it as `before`); null at the end."""

    runs: list[RunRecord]
    next_before: str | None = None


class ReportFile(msgspec.Struct, kw_only=True):
    path: str  # relative to the run directory
    size: int
    url: str


class RunReports(msgspec.Struct, kw_only=True):
    run_id: str
    session_id: str
    status: str | None
    summary: ReportFile | None
    request: ReportFile | None
    events: ReportFile | None


class ArtifactEntry(msgspec.Struct, kw_only=True):
    path: str  # relative to the run's artifacts/ directory; download at .../artifacts/{path}
    size: int | None
    sha256: str | None
    media_type: str


class ArtifactManifest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`artifacts` is null with `compatibility: "no-manifest"` for a run without a manifest."""

    artifacts: list[ArtifactEntry] | None
    compatibility: str | None = None


table = OperationTable("retained-runs")
# What an artifact is served as (`pipeline.rundir.media_type`, also each manifest entry's
# `media_type`); `*/*` for files of other kinds, typed by their extension.
ARTIFACT_MEDIA_TYPES = (
    "application/x-hdf5",
    "text/csv",
    "application/json",
    "application/x-ndjson",
    "image/png",
    "text/plain",
    "application/octet-stream",
    "*/*",
)
_RUN = {"run_id": "run id"}
_STATUSES = [str(s) for s in RunStatus]
_SESSION_PARAM = Param("session_id", "query", {"type": "string"}, "only this session's runs")


def _retained(request: Request) -> RetainedRuns:
    state = service_state(request.app)
    retained = state.retained
    if retained is None:  # an app that did not set it: build it from the config once
        retained = state.retained = RetainedRuns(state.config.runs_dir)
    return retained


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(partial(func, *args))


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value else None


def _limit(request: Request) -> int:
    return query_limit(request, default=50, maximum=MAX_LIMIT)


@table.route(
    "GET",
    "/retained-runs",
    response=RetainedRunList,
    errors=("INVALID_REQUEST", "RUN_NOT_FOUND"),
    params=(
        _SESSION_PARAM,
        Param("status", "query", {"type": "string", "enum": _STATUSES}, "only runs in this status"),
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
            "page size",
        ),
        Param("before", "query", {"type": "string"}, "only runs older than this run id (paging)"),
    ),
)
async def list_retained_runs(request: Request) -> Response:
    """Retained runs from the run directories, newest first, with filters and paging."""
    status = _query(request, "status")
    if status is not None and status not in _STATUSES:
        raise ServiceError(
            "INVALID_REQUEST",
            f"unknown status {status[:64]!r}",
            errors=[{"path": "$.status", "message": "expected one of " + ", ".join(_STATUSES)}],
        )
    runs, next_before = await _off_loop(
        _page,
        _retained(request),
        _query(request, "session_id"),
        status,
        _limit(request),
        _query(request, "before"),
    )
    return json_response({"runs": runs, "next_before": next_before})


def _page(
    retained: RetainedRuns,
    session_id: str | None,
    status: str | None,
    limit: int,
    before: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs and the `next_before` cursor (None on the last page); blocking.

    One run more than asked tells whether another page follows. `RetainedRuns.list` clamps to
    `MAX_LIMIT`, so a full page of `MAX_LIMIT` runs asks once more, after its last run.
    """
    runs = retained.list(session_id, status, min(limit + 1, MAX_LIMIT), before)
    if len(runs) > limit:
        return runs[:limit], runs[limit - 1]["run_id"]
    if len(runs) == MAX_LIMIT and retained.list(session_id, status, 1, runs[-1]["run_id"]):
        return runs, runs[-1]["run_id"]
    return runs, None


@table.route(
    "GET",
    "/retained-runs/latest",
    response=RunRecord,
    errors=("RUN_NOT_FOUND",),
    params=(_SESSION_PARAM,),
)
async def latest_retained_run(request: Request) -> Response:
    """The newest retained run's summary (of one session with `session_id`)."""
    return json_response(await _off_loop(_retained(request).latest, _query(request, "session_id")))


@table.route(
    "GET",
    "/retained-runs/{run_id}",
    response=RunRecord,
    errors=("RUN_NOT_FOUND",),
    path_descriptions=_RUN,
)
async def get_retained_run(request: Request) -> Response:
    """A retained run's summary (`summary.json`)."""
    return json_response(await _off_loop(_retained(request).get, request.path_params["run_id"]))


@table.route(
    "GET",
    "/retained-runs/{run_id}/reports",
    response=RunReports,
    errors=("RUN_NOT_FOUND",),
    path_descriptions=_RUN,
)
async def retained_run_reports(request: Request) -> Response:
    """Where the run's summary, request and event log are, with their download URLs."""
    return json_response(await _off_loop(_retained(request).reports, request.path_params["run_id"]))


@table.route(
    "GET",
    "/retained-runs/{run_id}/reports/{name}",
    media_types=("application/json", "application/x-ndjson"),
    errors=("RUN_NOT_FOUND", "NOT_FOUND"),
    path_descriptions={**_RUN, "name": "summary.json, run-request.json or events.ndjson"},
)
async def retained_run_report_file(request: Request) -> Response:
    """Download one report file of a run (summary, request or event log)."""
    path: Path = await _off_loop(
        _retained(request).report_file,
        request.path_params["run_id"],
        request.path_params["name"],
    )
    return FileResponse(path, media_type=media_type_for(path))


@table.route(
    "GET",
    "/retained-runs/{run_id}/artifact-manifest",
    response=ArtifactManifest,
    errors=("RUN_NOT_FOUND",),
    path_descriptions=_RUN,
)
async def retained_run_manifest(request: Request) -> Response:
    """The run's artifacts with size, sha256 and media type (or the `no-manifest` marker)."""
    return json_response(
        await _off_loop(_retained(request).manifest, request.path_params["run_id"])
    )


@table.route(
    "GET",
    "/retained-runs/{run_id}/artifacts/{path:path}",
    media_types=ARTIFACT_MEDIA_TYPES,
    errors=("RUN_NOT_FOUND", "NOT_FOUND"),
    path_descriptions={**_RUN, "path": "artifact path relative to the run's artifacts/"},
)
async def retained_run_artifact(request: Request) -> Response:
    """Download one artifact; any path leading outside the run's artifacts is 404."""
    target: Path = await _off_loop(
        _retained(request).artifact_file,
        request.path_params["run_id"],
        request.path_params["path"],
    )
    return FileResponse(target, media_type=media_type_for(target), filename=target.name)


# The routes alone, for apps that mount them without the runtime (`table.routes` as
# `service.http.app` mounts them under `/v1`).
routes = table.routes
