"""Session routes (contract section 4): sessions, sources, sinks, sample, process, reset, errors.

Handlers are thin: decode the body with its Struct, call the runtime, encode the answer. Every
rule (state machine, queue, validation needing the file system) lives in `service.runtime.facade`,
which raises `ServiceError` for the problem translator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from service.contract.errors import ServiceError
from service.contract.models import (
    CreateSessionRequest,
    DryRunResult,
    LatestErrors,
    ProcessRequest,
    ResetRequest,
    SampleRequest,
    SessionList,
    SinkInput,
    SinksRequest,
    SourceInput,
    SourcesRequest,
    SubmitResult,
    TemplateList,
)
from service.contract.records import SessionRecord
from service.http.codec import decode_body, json_response
from service.http.openapi import API_PREFIX, OperationTable, Param
from service.http.state import service_state

if TYPE_CHECKING:
    from service.runtime.facade import Runtime

__all__ = ["submitted", "table"]

table = OperationTable("sessions")

_SID = {"sid": "session id"}
_NOT_FOUND = ("SESSION_NOT_FOUND",)
_IDEMPOTENCY_KEY_MAX = 200
_IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": _IDEMPOTENCY_KEY_MAX},
    "an opaque key of 1 to 200 characters chosen by the client (a UUID is a good choice); "
    "a repeated submit with the same key returns the first run instead of queueing another. "
    "Keys are kept for 7 days. Another length: 422",
)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = service_state(request.app).runtime
    return runtime


def _sid(request: Request) -> str:
    sid: str = request.path_params["sid"]
    return sid


def submitted(result: SubmitResult) -> Response:
    """202 with the run's `Location`: the answer to every submission (process, sample, retry)."""
    return json_response(result, 202, headers={"Location": f"{API_PREFIX}/runs/{result.run_id}"})


def _session_response(record: SessionRecord, status: int = 200) -> Response:
    headers = {"Location": f"{API_PREFIX}/sessions/{record.session_id}"} if status == 201 else None
    return json_response(record, status, headers)


@table.route(
    "POST",
    "/sessions",
    request=CreateSessionRequest,
    response=SessionRecord,
    status=201,
    location_header=True,
    errors=(
        "SESSION_EXISTS",
        "PIPELINE_INVALID",
        "FORBIDDEN",
        "NOT_FOUND",
        "PACKAGE_ACTIVATION_FAILED",
    ),  # pipeline packages (docs/packages.md)
)
async def create_session(request: Request) -> Response:
    """Create a session from a pipeline (inline YAML/JSON or a server-side path)."""
    body = await decode_body(request, CreateSessionRequest)
    return _session_response(await _runtime(request).create_session(body), 201)


@table.route("GET", "/sessions", response=SessionList)
async def list_sessions(request: Request) -> Response:
    """List every session."""
    return json_response(SessionList(sessions=list(await _runtime(request).list_sessions())))


@table.route(
    "GET", "/sessions/{sid}", response=SessionRecord, errors=_NOT_FOUND, path_descriptions=_SID
)
async def get_session(request: Request) -> Response:
    """One session."""
    return _session_response(await _runtime(request).get_session(_sid(request)))


@table.route("DELETE", "/sessions/{sid}", status=204, errors=_NOT_FOUND, path_descriptions=_SID)
async def delete_session(request: Request) -> Response:
    """Delete a session, cancelling its queued and running runs (retained runs stay on disk)."""
    await _runtime(request).delete_session(_sid(request))
    return Response(status_code=204)


@table.route("GET", "/source-templates", response=TemplateList)
async def source_templates(request: Request) -> Response:
    """Built-in source profiles with their required and optional source refs."""
    return json_response(TemplateList(templates=list(_runtime(request).source_templates())))


# --- sources and sinks: the same four shapes each -------------------------------------------

_IO_ERRORS = ("SESSION_NOT_FOUND", "FORBIDDEN")


@table.route(
    "PUT",
    "/sessions/{sid}/sources",
    request=SourcesRequest,
    response=SessionRecord,
    errors=_IO_ERRORS,
    path_descriptions=_SID,
)
async def put_sources(request: Request) -> Response:
    """Replace every source of the session."""
    body = await decode_body(request, SourcesRequest)
    return _session_response(await _runtime(request).put_sources(_sid(request), body.sources))


@table.route(
    "POST",
    "/sessions/{sid}/sources/patch",
    request=SourceInput,
    response=SessionRecord,
    errors=_IO_ERRORS,
    path_descriptions=_SID,
)
async def patch_source(request: Request) -> Response:
    """Add or replace one source."""
    body = await decode_body(request, SourceInput)
    return _session_response(await _runtime(request).patch_source(_sid(request), body))


# `POST .../sources/patch` upserts one source, and `DELETE .../sources/{ref}` removes one; a
# source may well be called `patch`. Routing tells them apart by method, but an OpenAPI path
# lookup prefers the concrete path `.../sources/patch` (which would then list only POST), so the
# DELETE of a ref named `patch` is declared on the concrete path too, by the same handler.
_REF_PATCH = (
    "source ref (any ref: `DELETE .../sources/patch` removes the source named `patch` and is "
    "listed under that concrete path)"
)


@table.route(
    "DELETE",
    "/sessions/{sid}/sources/patch",
    operation_id="delete_source_named_patch",
    summary="Remove the source whose ref is `patch`.",
    status=204,
    errors=("SESSION_NOT_FOUND", "NOT_FOUND"),
    path_descriptions=_SID,
)
async def delete_source_named_patch(request: Request) -> Response:
    await _runtime(request).delete_source(_sid(request), "patch")
    return Response(status_code=204)


@table.route(
    "DELETE",
    "/sessions/{sid}/sources/{ref}",
    status=204,
    errors=("SESSION_NOT_FOUND", "NOT_FOUND"),
    path_descriptions={**_SID, "ref": _REF_PATCH},
)
async def delete_source(request: Request) -> Response:
    """Remove one source."""
    await _runtime(request).delete_source(_sid(request), request.path_params["ref"])
    return Response(status_code=204)


@table.route(
    "PUT",
    "/sessions/{sid}/sinks",
    request=SinksRequest,
    response=SessionRecord,
    errors=_IO_ERRORS,
    path_descriptions=_SID,
)
async def put_sinks(request: Request) -> Response:
    """Replace every sink of the session."""
    body = await decode_body(request, SinksRequest)
    return _session_response(await _runtime(request).put_sinks(_sid(request), body.sinks))


@table.route(
    "POST",
    "/sessions/{sid}/sinks/patch",
    request=SinkInput,
    response=SessionRecord,
    errors=_IO_ERRORS,
    path_descriptions=_SID,
)
async def patch_sink(request: Request) -> Response:
    """Add or replace one sink."""
    body = await decode_body(request, SinkInput)
    return _session_response(await _runtime(request).patch_sink(_sid(request), body))


@table.route(
    "DELETE",
    "/sessions/{sid}/sinks/patch",
    operation_id="delete_sink_named_patch",
    summary="Remove the sink whose ref is `patch`.",
    status=204,
    errors=("SESSION_NOT_FOUND", "NOT_FOUND"),
    path_descriptions=_SID,
)
async def delete_sink_named_patch(request: Request) -> Response:
    await _runtime(request).delete_sink(_sid(request), "patch")
    return Response(status_code=204)


@table.route(
    "DELETE",
    "/sessions/{sid}/sinks/{ref}",
    status=204,
    errors=("SESSION_NOT_FOUND", "NOT_FOUND"),
    path_descriptions={**_SID, "ref": _REF_PATCH.replace("source", "sink")},
)
async def delete_sink(request: Request) -> Response:
    """Remove one sink."""
    await _runtime(request).delete_sink(_sid(request), request.path_params["ref"])
    return Response(status_code=204)


# --- runs of a session ------------------------------------------------------------------------

_SUBMIT_ERRORS = ("SESSION_NOT_FOUND", "MISSING_SOURCES", "QUEUE_FULL", "SERVICE_UNAVAILABLE")


@table.route(
    "POST",
    "/sessions/{sid}/sample",
    request=SampleRequest,
    response=SessionRecord,
    alt_responses=((202, SubmitResult),),
    errors=(*_SUBMIT_ERRORS, "FORBIDDEN"),
    params=(_IDEMPOTENCY,),
    path_descriptions=_SID,
)
async def set_sample(request: Request) -> Response:
    """Set source `sample`: 200 with the session, or with `process: true` 202 with the run."""
    body = await decode_body(request, SampleRequest)
    key = _idempotency_key(request) if body.process else None
    record, result = await _runtime(request).set_sample(_sid(request), body, idempotency_key=key)
    if result is not None:
        return submitted(result)
    return _session_response(record)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= _IDEMPOTENCY_KEY_MAX:
        raise ServiceError(
            "INVALID_REQUEST",
            f"Idempotency-Key must be 1 to {_IDEMPOTENCY_KEY_MAX} characters",
            errors=[{"path": "header:Idempotency-Key", "message": "bad length"}],
        )
    return key


@table.route(
    "POST",
    "/sessions/{sid}/process",
    request=ProcessRequest,
    request_optional=True,
    response=SubmitResult,
    status=202,
    location_header=True,
    errors=_SUBMIT_ERRORS,
    params=(_IDEMPOTENCY,),
    path_descriptions=_SID,
)
async def process(request: Request) -> Response:
    """Queue a run of the session's pipeline."""
    body = await decode_body(request, ProcessRequest, empty_ok=True)
    key = _idempotency_key(request)
    result = await _runtime(request).submit(_sid(request), body, idempotency_key=key)
    return submitted(result)


@table.route(
    "POST",
    "/sessions/{sid}/process/dry-run",
    request=ProcessRequest,
    request_optional=True,
    response=DryRunResult,
    errors=_NOT_FOUND,
    path_descriptions=_SID,
)
async def dry_run(request: Request) -> Response:
    """What a run would do now (dirty steps and why), without running anything."""
    body = await decode_body(request, ProcessRequest, empty_ok=True)
    return json_response(await _runtime(request).dry_run(_sid(request), body))


@table.route(
    "POST",
    "/sessions/{sid}/reset",
    request=ResetRequest,
    response=SessionRecord,
    errors=_NOT_FOUND,
    path_descriptions=_SID,
)
async def reset(request: Request) -> Response:
    """Clear the session's error state (`partial`), and its cached values too (`full`)."""
    body = await decode_body(request, ResetRequest)
    return _session_response(await _runtime(request).reset(_sid(request), body.mode))


@table.route(
    "GET",
    "/sessions/{sid}/errors/latest",
    response=LatestErrors,
    errors=_NOT_FOUND,
    path_descriptions=_SID,
)
async def latest_errors(request: Request) -> Response:
    """The session's current and most recent error."""
    return json_response(await _runtime(request).latest_errors(_sid(request)))
