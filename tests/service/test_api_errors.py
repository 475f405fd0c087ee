"""Every error is RFC 9457 problem+json with a contract `code`; a 500 says `INTERNAL` and
nothing more (the traceback goes to the log, never to the client)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from api_support import Api, assert_problem
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from service.contract.errors import ServiceError
from service.http.problems import InternalErrorMiddleware, exception_handlers

pytestmark = pytest.mark.anyio


async def explode(request: Request) -> Response:
    raise RuntimeError("secret detail /etc/passwd")


async def queue_full(request: Request) -> Response:
    raise ServiceError("QUEUE_FULL", "the run queue is full", headers={"Retry-After": "2"})


class Limit(msgspec.Struct):
    n: int


async def bad_type(request: Request) -> Response:
    msgspec.convert({"n": "x"}, Limit)
    return Response()


@pytest.fixture
async def tiny() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[
            Route("/explode", explode),
            Route("/full", queue_full),
            Route("/bad", bad_type),
        ],
        middleware=[Middleware(InternalErrorMiddleware)],
        exception_handlers=exception_handlers(),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_unexpected_exception_is_bare_internal_and_logged(
    tiny: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="runwire.http"):
        r = await tiny.get("/explode")
    body = assert_problem(r, 500, "INTERNAL")
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert any(rec.exc_info and "secret detail" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_service_error_headers_reach_the_client(tiny: httpx.AsyncClient) -> None:
    r = await tiny.get("/full")
    assert_problem(r, 429, "QUEUE_FULL")
    assert r.headers["retry-after"] == "2"


async def test_escaped_validation_error_is_422_with_path(tiny: httpx.AsyncClient) -> None:
    body = assert_problem(await tiny.get("/bad"), 422, "INVALID_REQUEST")
    assert body["errors"] == [{"path": "$.n", "message": "Expected `int`, got `str`"}]


async def test_unknown_route_is_404_not_found(api: Api) -> None:
    assert_problem(await api.client.get("/v1/no/such/thing"), 404, "NOT_FOUND")
    assert_problem(await api.client.get("/health"), 404, "NOT_FOUND")  # everything is under /v1


async def test_wrong_method_is_405_problem_with_allow(api: Api) -> None:
    r = await api.client.delete(
        "/v1/source-templates", headers={"content-type": "application/json"}
    )
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in r.headers["allow"]


async def test_malformed_json_is_422(api: Api) -> None:
    r = await api.client.post(
        "/v1/sessions", content=b'{"pipeline": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(r, 422, "INVALID_REQUEST")
    assert "not valid JSON" in body["detail"]


async def test_body_of_wrong_shape_is_422_at_root(api: Api) -> None:
    r = await api.client.post("/v1/sessions", json=[1, 2])
    body = assert_problem(r, 422, "INVALID_REQUEST")
    assert body["errors"][0]["path"] == "$"


async def test_real_app_applies_body_limits(api: Api) -> None:
    r = await api.client.post(
        "/v1/sessions", content=b"x" * 10, headers={"content-type": "text/yaml"}
    )
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    huge = b'{"pipeline": {"yaml_text": "' + b"#" * (1 << 20) + b'"}}'
    r = await api.client.post(
        "/v1/sessions", content=huge, headers={"content-type": "application/json"}
    )
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")


async def test_large_deeply_nested_body_is_422(api: Api) -> None:
    body = b"[" * 70_000 + b"]" * 70_000  # large enough to be scanned in a worker thread
    r = await api.client.post(
        "/v1/sessions", content=body, headers={"content-type": "application/json"}
    )
    assert "nested" in assert_problem(r, 422, "INVALID_REQUEST")["detail"]


async def test_websocket_handler_crash_closes_1011_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        raise RuntimeError("secret")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    guard = InternalErrorMiddleware(crashing)
    with caplog.at_level(logging.ERROR, logger="runwire.http"):
        await guard({"type": "websocket", "path": "/v1/ws"}, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[-1]["code"] == 1011 and "secret" not in sent[-1]["reason"]
    assert any(rec.exc_info for rec in caplog.records)
