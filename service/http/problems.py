"""Every error a client sees is translated here, in one place, into RFC 9457 problem+json.

Sources of errors and what they become:

- `ServiceError` (raised by the runtime, the body decoder, the middlewares): its own code and
  status, `errors` and headers (`Retry-After` for QUEUE_FULL).
- `msgspec.ValidationError` / `msgspec.DecodeError` escaping a handler: 422 `INVALID_REQUEST`
  with the failing path (`$.pipeline.yaml_text`) in `errors`.
- Starlette's `HTTPException` for unknown routes (404 `NOT_FOUND`) and wrong methods (405
  `METHOD_NOT_ALLOWED`, with `Allow`; a code of ours, not the contract's).
- Anything else (`InternalErrorMiddleware`): 500 `INTERNAL` and nothing more; the traceback
  goes to the log only. Except a full disk (ENOSPC, EDQUOT, SQLite's SQLITE_FULL): 507
  `STORAGE_FULL` with `Retry-After`, as the runtime raises it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from service.contract.errors import ServiceError, is_storage_full, storage_full_error

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "InternalErrorMiddleware",
    "Problem",
    "ProblemItem",
    "exception_handlers",
    "problem_bytes",
    "problem_response",
    "validation_problems",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("runwire.http")


class ProblemItem(msgspec.Struct, kw_only=True):
    """One validation problem: a JSON path into the request (`$.sources[0].type`) and why."""

    path: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details with the contract's `code` member (documented in OpenAPI)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ProblemItem] | None = None


_encoder = msgspec.json.Encoder()


def problem_bytes(error: ServiceError) -> bytes:
    """The problem+json body of `error`, encoded."""
    return _encoder.encode(error.to_problem())


def problem_response(error: ServiceError) -> Response:
    """`error` as an `application/problem+json` response, with its extra headers."""
    return Response(
        problem_bytes(error),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(error.headers),
    )


def validation_problems(exc: msgspec.ValidationError | msgspec.DecodeError) -> ServiceError:
    """A msgspec error as 422 INVALID_REQUEST naming the failing path.

    msgspec phrases errors as "Expected `int`, got `str` - at `$.limit`"; the path is split out so
    that clients get `{"path": "$.limit", "message": "Expected `int`, got `str`"}`.
    """
    text = str(exc)
    message, sep, tail = text.rpartition(" - at `")
    if sep and tail.endswith("`"):
        path = tail[:-1]
    else:
        message, path = text, "$"
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        detail = f"request body is not valid JSON: {message}"
    else:
        detail = f"invalid request body: {message} (at {path})"
    return ServiceError("INVALID_REQUEST", detail, errors=[{"path": path, "message": message}])


def _http_exception_problem(exc: HTTPException, *, allow: str | None = None) -> Response:
    if exc.status_code == 405:
        headers: dict[str, str] = dict(exc.headers or {})
        if allow is not None:
            headers["Allow"] = allow
        error = ServiceError(
            "METHOD_NOT_ALLOWED", "this method is not allowed on this resource", headers=headers
        )
        return problem_response(error)
    if exc.status_code == 404:
        return problem_response(ServiceError("NOT_FOUND", "no such resource"))
    code = {
        400: "INVALID_REQUEST",
        401: "UNAUTHORIZED",
        403: "FORBIDDEN",
        413: "PAYLOAD_TOO_LARGE",
        415: "UNSUPPORTED_MEDIA_TYPE",
        422: "INVALID_REQUEST",
        503: "SERVICE_UNAVAILABLE",
    }.get(exc.status_code, "INTERNAL")
    return problem_response(
        ServiceError(code, str(exc.detail) if code != "INTERNAL" else "internal error")
    )


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return problem_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, msgspec.ValidationError | msgspec.DecodeError)
    return problem_response(validation_problems(exc))


def _allowed_methods(routes: Iterable[BaseRoute], path: str) -> set[str]:
    """Every method some route serves at `path` (Mounts followed by prefix).

    Starlette's own 405 names only the first route whose path matched, but each of our routes
    carries one method, so `DELETE /v1/sessions` would claim `Allow: POST` although `GET` works
    too. RFC 9110 asks for the full set.
    """
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            prefix = route.path
            if path == prefix or path.startswith(prefix + "/"):
                methods |= _allowed_methods(route.routes, path[len(prefix) :] or "/")
        elif isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return methods


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    allow = None
    if exc.status_code == 405:
        methods = _allowed_methods(request.app.router.routes, request.scope["path"])
        allow = ", ".join(sorted(methods)) if methods else None
    return _http_exception_problem(exc, allow=allow)


class InternalErrorMiddleware:
    """Outermost pure-ASGI guard: an exception nothing else handled becomes 500 `INTERNAL`.

    It sits inside Starlette's own `ServerErrorMiddleware` so that the exception is not re-raised
    to the server (which would log it a second time, and make in-process test clients raise).
    The traceback is logged here, once; the client learns nothing beyond `INTERNAL`. When an
    HTTP response has already started (a stream), the connection is simply ended; a WebSocket
    is closed with 1011.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = closed = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, closed
            if message["type"] in ("http.response.start", "websocket.accept"):
                started = True
            elif message["type"] == "websocket.close":
                closed = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if is_storage_full(exc) and scope["type"] == "http" and not started:
                # A full disk met outside the runtime's I/O thread: 507, not a traceback.
                log.error("%s %s: %s", scope.get("method"), scope.get("path"), exc)
                await problem_response(storage_full_error())(scope, receive, send)
                return
            log.exception("unhandled error on %s %s", scope.get("method", "WS"), scope.get("path"))
            if scope["type"] == "websocket":
                if not closed:
                    # 1011: the contract's close code for an internal error. The peer may be
                    # gone already; there is nobody left to tell then.
                    with suppress(Exception):
                        await send(
                            {"type": "websocket.close", "code": 1011, "reason": "internal error"}
                        )
            elif not started:
                await problem_response(ServiceError("INTERNAL", "internal error"))(
                    scope, receive, send
                )


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """The Starlette `exception_handlers` mapping installing every translation above."""
    return {
        ServiceError: _service_error,
        msgspec.ValidationError: _validation_error,
        msgspec.DecodeError: _validation_error,
        HTTPException: _http_exception,
    }
