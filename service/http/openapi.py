"""The OpenAPI 3.1 document, generated from the same Structs the handlers decode and return.

Route modules declare their endpoints through an `OperationTable`: one decorator gives both
the Starlette route and its `Operation` (request type, response type, status, parameters, error
codes), so a handler cannot exist without a description. `openapi_document` turns every
operation into the document, with JSON Schemas from `msgspec.json.schema_components`. A test
walks the app's routes and fails when one is missing here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from service.contract.errors import STATUS_BY_CODE, ServiceError
from service.http.problems import PROBLEM_MEDIA_TYPE, Problem

__all__ = ["API_PREFIX", "Operation", "OperationTable", "Param", "openapi_document", "query_limit"]

API_PREFIX = "/v1"
Endpoint = Callable[[Request], Awaitable[Response]]
_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


@dataclass(frozen=True)
class Param:
    """A query or header parameter (path parameters come from the path template)."""

    name: str
    location: str  # "query" | "header"
    schema: dict[str, Any]
    description: str
    required: bool = False


def query_limit(request: Request, *, default: int, maximum: int) -> int:
    """The `limit` query parameter of a paged listing (the `Param` its route declares):
    `default` when absent, INVALID_REQUEST unless an integer from 1 to `maximum`."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ServiceError(
            "INVALID_REQUEST",
            f"limit must be an integer from 1 to {maximum}",
            errors=[{"path": "$.limit", "message": f"expected 1..{maximum}"}],
        )
    return int(raw)


@dataclass(frozen=True)
class Operation:
    """One HTTP operation: what it decodes, what it answers, and which problems it may return."""

    method: str
    path: str  # Starlette template relative to API_PREFIX, e.g. "/sessions/{sid}"
    operation_id: str
    summary: str
    status: int = 200
    request: Any = None  # a Struct type, or None for no body
    request_optional: bool = False  # an empty body means the Struct's defaults
    response: Any = None  # a Struct type / list type; None with status 204 (no body)
    alt_responses: tuple[tuple[int, Any], ...] = ()  # other successes: (status, type)
    media_type: str = "application/json"
    # Media types a file download may be served as (the first is `media_type`'s place in the
    # document); empty: just `media_type`.
    media_types: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    path_descriptions: dict[str, str] = field(default_factory=dict)
    location_header: bool = False  # 201/202 answers carrying `Location`
    tags: tuple[str, ...] = ()


class OperationTable:
    """Collects operations and their handlers; `routes` are the Starlette routes to mount."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []
        self._routes: list[BaseRoute] = []

    def route(self, method: str, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        """Decorator registering `handler` for `method path` with the OpenAPI `Operation` fields."""

        def decorate(handler: Endpoint) -> Endpoint:
            kwargs.setdefault("operation_id", handler.__name__)
            kwargs.setdefault(
                "summary", (handler.__doc__ or handler.__name__).strip().split("\n")[0]
            )
            kwargs.setdefault("tags", (self.tag,))
            self.operations.append(Operation(method=method, path=path, **kwargs))
            self._routes.append(Route(path, handler, methods=[method]))
            return handler

        return decorate

    def add_route(self, route: BaseRoute) -> None:
        """A route without an operation of its own (e.g. a WebSocket, described in AsyncAPI)."""
        self._routes.append(route)

    @property
    def routes(self) -> list[BaseRoute]:
        return list(self._routes)


def _problem_responses(codes: Iterable[str]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
    responses: dict[str, Any] = {}
    for status, status_codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "Problem: " + ", ".join(status_codes),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return responses


# Every operation can answer these (Host check, auth, unexpected errors).
_COMMON_ERRORS = ("MISDIRECTED_REQUEST", "UNAUTHORIZED", "INTERNAL")
# Every state-changing operation can answer these, body or not: the CSRF rule wants
# `Content-Type: application/json` even on a body-less POST or DELETE (415), and any write can
# meet a full disk (507 with Retry-After, docs/durability.md).
_BODY_ERRORS = ("INVALID_REQUEST", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "STORAGE_FULL")
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NO_BODY = {
    "required": False,
    "description": "No body is needed (anything sent is ignored), but the request must still "
    "say `Content-Type: application/json` (CSRF protection; else 415).",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
# Rules a msgspec Struct cannot state in its generated schema (its `__post_init__` checks).
_SCHEMA_RULES: dict[str, dict[str, Any]] = {
    "PipelineInput": {
        "oneOf": [
            {"required": ["yaml_text"], "properties": {"yaml_text": {"type": "string"}}},
            {"required": ["path"], "properties": {"path": {"type": "string"}}},
        ],
    },
}


def openapi_document(
    operations: Sequence[Operation],
    *,
    title: str = "runwire",
    version: str = "0.1.0",
    websocket_paths: Sequence[str] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `operations` (paths prefixed with `API_PREFIX`)."""
    types: list[Any] = [Problem]
    for op in operations:
        for t in (op.request, op.response, *(t for _, t in op.alt_responses)):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    for name, rule in _SCHEMA_RULES.items():
        if name in components:
            components[name] = {**components[name], **rule}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        template = API_PREFIX + _PATH_PARAM.sub(r"{\1}", op.path)
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
        }
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": op.path_descriptions.get(name, name.replace("_", " ")),
            }
            for name in _PATH_PARAM.findall(op.path)
        ]
        parameters += [
            {
                "name": p.name,
                "in": p.location,
                "required": p.required,
                "schema": p.schema,
                "description": p.description,
            }
            for p in op.params
        ]
        if parameters:
            item["parameters"] = parameters
        errors = list(_COMMON_ERRORS) + list(op.errors)
        if _PATH_PARAM.search(op.path):
            errors.append("NOT_FOUND")  # a path parameter that cannot match (e.g. a '/')
        if op.request is not None:
            item["requestBody"] = {
                "required": not op.request_optional,
                "content": {"application/json": {"schema": schema_of[id(op.request)]}},
            }
        elif op.method in _STATE_CHANGING:
            item["requestBody"] = _NO_BODY
        if op.method in _STATE_CHANGING:
            errors += [c for c in _BODY_ERRORS if c not in errors]
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(op.status, "OK")}
        if op.response is not None:
            ok["content"] = {op.media_type: {"schema": schema_of[id(op.response)]}}
        elif op.media_types:
            binary = {"type": "string", "format": "binary"}
            ok["content"] = {media: {"schema": binary} for media in op.media_types}
        elif op.media_type != "application/json":
            ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
        if op.location_header:
            ok["headers"] = {
                "Location": {"description": "the new resource", "schema": {"type": "string"}}
            }
        responses: dict[str, Any] = {str(op.status): ok}
        for status, alt in op.alt_responses:
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "OK"),
                "content": {"application/json": {"schema": schema_of[id(alt)]}},
            }
            if status in (201, 202):
                responses[str(status)]["headers"] = {
                    "Location": {"description": "the new resource", "schema": {"type": "string"}}
                }
        responses.update(_problem_responses(dict.fromkeys(errors)))
        if "QUEUE_FULL" in op.errors:
            responses["429"]["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
            }
        item["responses"] = responses
        paths.setdefault(template, {})[op.method.lower()] = item

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Sessions, incremental runs and live events. Errors are RFC 9457 "
            "problem+json with a `code`. WebSocket channels are described in /v1/asyncapi.json.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
    if websocket_paths:
        document["x-websocket-paths"] = [API_PREFIX + p for p in websocket_paths]
    return document


def route_paths(routes: Iterable[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """`(METHOD, path)` for every HTTP route, walking mounts (`WS` for WebSocket routes)."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        sub = getattr(route, "routes", None)
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, prefix + route.path))
        elif isinstance(route, WebSocketRoute):
            found.add(("WS", prefix + route.path))
        elif sub is not None:
            found |= route_paths(sub, prefix + getattr(route, "path", ""))
    return found


_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
}
