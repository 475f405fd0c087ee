"""Event streams (contract section 5): SSE and WebSocket routes over the broker.

SSE: `GET /v1/sessions/{sid}/events`, `GET /v1/events?sessions=a,b` (all sessions when
omitted) and `GET /v1/runs/{run_id}/events` (ends after the run's terminal event). Unknown
sessions and runs are 404 before the stream starts; a malformed `Last-Event-ID`/`since` is 422
`INVALID_REQUEST`; a disallowed `Origin` is 403 `FORBIDDEN`.

WebSocket: `/v1/ws` (multiplexed) and `/v1/sessions/{sid}/events` (the SSE path; Starlette
routes by scope type), which subscribes to that session at once (`?since=` honoured). A
disallowed `Origin` is accepted and closed with 1008 (policy); an unknown session is refused
before the handshake completes with the same 404 problem+json as over SSE. Control ops
(`process`, `set_sample`, `cancel`, `dry_run`) go to the runtime through `RuntimeControl`.

On a stream node (`--role stream`, `service.http.stream_node`) the same routes serve; there
is no runtime: sessions and runs are looked up on the API node (`ServiceState.api`) and control
ops are forwarded to it with the client's token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from service.contract.errors import ServiceError
from service.contract.models import ProcessRequest, SampleRequest
from service.http.auth import check_sse_origin, reject_websocket, websocket_origin_ok
from service.http.openapi import OperationTable, Param
from service.http.problems import problem_response
from service.http.state import ServiceState, service_state
from streaming.channels.sse import sse_response
from streaming.channels.ws import serve_websocket
from streaming.errors import ControlError, InvalidEventId
from streaming.messages import ControlOp, DryRun, Process, SetSample

if TYPE_CHECKING:
    from service.runtime.facade import Runtime

__all__ = ["RuntimeControl", "table"]

table = OperationTable("events")

_SSE = "text/event-stream"
# An event id as the server issues it, `<epoch>-<seq>` (the epoch may itself hold dashes; seq
# is decimal), or `0` for "everything still retained". Anything else is 422.
EVENT_ID_SCHEMA = {"type": "string", "pattern": "^(0|[!-~]+-[0-9]+)$", "maxLength": 200}
_RESUME = (
    Param(
        "Last-Event-ID",
        "header",
        EVENT_ID_SCHEMA,
        "resume after this event id (`<epoch>-<seq>`, an event's `id`; `0`: all retained); "
        "wins over the query parameters; malformed: 422",
    ),
    Param("since", "query", EVENT_ID_SCHEMA, "resume after this id (`0`: all retained)"),
    Param("last_event_id", "query", EVENT_ID_SCHEMA, "alias of `since`; the header wins"),
)


async def _sse(request: Request, sessions: list[str] | None, run_id: str | None = None) -> Response:
    check_sse_origin(request)
    try:
        return sse_response(
            request, service_state(request.app).broker, sessions=sessions, run_id=run_id
        )
    except InvalidEventId as exc:
        raise ServiceError(
            "INVALID_REQUEST",
            str(exc),
            errors=[{"path": exc.where or "header:Last-Event-ID", "message": str(exc)}],
        ) from exc


@table.route(
    "GET",
    "/sessions/{sid}/events",
    media_type=_SSE,
    params=_RESUME,
    errors=("SESSION_NOT_FOUND", "INVALID_REQUEST", "FORBIDDEN"),
    path_descriptions={"sid": "session id"},
)
async def session_events(request: Request) -> Response:
    """The session's events as Server-Sent Events (also a WebSocket on the same path)."""
    record = await _directory(service_state(request.app)).get_session(request.path_params["sid"])
    return await _sse(request, [record.session_id])


@table.route(
    "GET",
    "/events",
    media_type=_SSE,
    params=(
        Param(
            "sessions", "query", {"type": "string"}, "comma-separated session ids; all if omitted"
        ),
        *_RESUME,
    ),
    errors=("INVALID_REQUEST", "FORBIDDEN"),
)
async def events(request: Request) -> Response:
    """Events of several sessions (all when `sessions` is omitted) as Server-Sent Events."""
    raw = request.query_params.get("sessions")
    sessions = [s for s in (p.strip() for p in raw.split(",")) if s] if raw else None
    return await _sse(request, sessions)


@table.route(
    "GET",
    "/runs/{run_id}/events",
    media_type=_SSE,
    params=_RESUME,
    errors=("RUN_NOT_FOUND", "INVALID_REQUEST", "FORBIDDEN"),
    path_descriptions={"run_id": "run id"},
)
async def run_events(request: Request) -> Response:
    """One run's events as Server-Sent Events; the stream ends after its terminal event."""
    run = await _directory(service_state(request.app)).get_run(request.path_params["run_id"])
    return await _sse(request, [run.session_id], run.run_id)


# --- WebSocket ----------------------------------------------------------------------------


def _control_error(exc: ServiceError | msgspec.ValidationError) -> ControlError:
    if isinstance(exc, ServiceError):
        return ControlError(exc.code, exc.detail)
    return ControlError("INVALID_REQUEST", str(exc))


def _fields(op: ControlOp) -> dict[str, Any]:
    """The op's fields for the service's request models: absent optional fields arrive as
    None and mean "the default"; `id` is the channel's."""
    return {
        name: value
        for name in op.__struct_fields__
        if name != "id" and (value := getattr(op, name)) is not None
    }


class RuntimeControl:
    """The WebSocket `ControlHandler`: maps control ops to the runtime.

    Called as `await control(op)` with the op already decoded (`streaming.messages`); answers
    the reply's `result`, or raises `streaming.errors.ControlError(code, message)` for an
    error reply.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, op: ControlOp) -> dict[str, Any]:
        args = _fields(op)
        try:
            result: Any
            if isinstance(op, Process):
                result = await self._process(args)
            elif isinstance(op, DryRun):
                result = await self._dry_run(args)
            elif isinstance(op, SetSample):
                result = await self._set_sample(args)
            else:
                result = await self._cancel(args)
        except (ServiceError, msgspec.ValidationError) as exc:
            # Anything else is a bug: `streaming.channels.ws` logs it and replies INTERNAL.
            raise _control_error(exc) from exc
        out: dict[str, Any] = msgspec.to_builtins(result)
        return out

    @staticmethod
    def _session(args: dict[str, Any]) -> str:
        session = args.pop("session", None)
        if not isinstance(session, str) or not session:
            raise ServiceError("INVALID_REQUEST", "`session` (a session id) is required")
        return session

    async def _process(self, args: dict[str, Any]) -> Any:
        sid = self._session(args)
        return await self.runtime.submit(sid, msgspec.convert(args, ProcessRequest))

    async def _dry_run(self, args: dict[str, Any]) -> Any:
        sid = self._session(args)
        return await self.runtime.dry_run(sid, msgspec.convert(args, ProcessRequest))

    async def _set_sample(self, args: dict[str, Any]) -> Any:
        sid = self._session(args)
        record, run = await self.runtime.set_sample(sid, msgspec.convert(args, SampleRequest))
        return {"session": record, "run": run}

    async def _cancel(self, args: dict[str, Any]) -> Any:
        run_id = args.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise ServiceError("INVALID_REQUEST", "`run_id` is required")
        return await self.runtime.cancel_run(run_id)


class _Found(Protocol):
    @property
    def session_id(self) -> str: ...


class _FoundRun(_Found, Protocol):
    @property
    def run_id(self) -> str | None: ...


class Directory(Protocol):
    """Where the event routes look sessions and runs up (404 when unknown)."""

    async def get_session(self, sid: str) -> _Found: ...
    async def get_run(self, run_id: str) -> _FoundRun: ...


def _directory(state: ServiceState) -> Directory:
    """The runtime, or on a stream node the API node (`service.http.stream_node.ApiNode`, the
    same `get_session`/`get_run`)."""
    return state.api if state.api is not None else state.runtime


async def _serve(websocket: WebSocket, sessions: list[str] | None, since: str | None) -> None:
    state = service_state(websocket.app)
    api = state.api  # a stream node forwards control ops to its API node
    control = api.control(websocket) if api is not None else RuntimeControl(state.runtime)
    await serve_websocket(websocket, state.broker, control, sessions=sessions, since=since)


async def ws_multiplexed(websocket: WebSocket) -> None:
    """`/v1/ws`: subscribe and control over one connection."""
    if not websocket_origin_ok(websocket):
        await reject_websocket(websocket, "origin not allowed")
        return
    await _serve(websocket, None, None)


async def ws_session(websocket: WebSocket) -> None:
    """`/v1/sessions/{sid}/events` over WebSocket: subscribed to the session from the start."""
    state = service_state(websocket.app)
    if not websocket_origin_ok(websocket):
        await reject_websocket(websocket, "origin not allowed")
        return
    try:
        record = await _directory(state).get_session(websocket.path_params["sid"])
    except ServiceError as exc:
        # 1008 is for auth and origin: an unknown session is answered as over SSE, a 404
        # problem before the handshake completes, where the server can send one.
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(problem_response(exc))
        else:
            await reject_websocket(websocket, f"{exc.code}: {exc.detail}"[:120])
        return
    since = websocket.query_params.get("since") or websocket.query_params.get("last_event_id")
    await _serve(websocket, [record.session_id], since)


table.add_route(WebSocketRoute("/ws", ws_multiplexed))
table.add_route(WebSocketRoute("/sessions/{sid}/events", ws_session))
