"""Request body limits: 413 over the size limit (declared or streamed), 415 for non-JSON, 422
for JSON nested too deep or with oversized numbers; small JSON bodies reach the handler intact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from api_support import assert_problem
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from service.http.limits import BodyLimitMiddleware, check_json_shape
from service.http.problems import exception_handlers

pytestmark = pytest.mark.anyio
LIMIT = 1024


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body), "text": body.decode()})


def tiny_app() -> Starlette:
    return Starlette(
        routes=[Route("/echo", echo, methods=["POST", "PUT", "GET"])],
        middleware=[Middleware(BodyLimitMiddleware, max_body_bytes=LIMIT)],
        exception_handlers=exception_handlers(),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_json_body_within_limit_reaches_handler_unchanged(client: httpx.AsyncClient) -> None:
    payload = '{"a": [1, 2, {"b": "x[[["}]}'
    r = await client.post("/echo", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json() == {"size": len(payload), "text": payload}


async def test_declared_length_over_limit_is_413(client: httpx.AsyncClient) -> None:
    body = b'"' + b"x" * LIMIT + b'"'
    r = await client.post("/echo", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")


async def test_streamed_body_without_length_over_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'"'
        for _ in range(10):
            yield b"y" * 200
        yield b'"'

    r = await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "PAYLOAD_TOO_LARGE")


async def test_streamed_body_within_limit_is_accepted(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"k": "'
        yield b"z" * 100
        yield b'"}'

    r = await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["size"] == 109


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_body_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = await client.post("/echo", content=b'{"a": 1}', headers=headers)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_json_suffix_and_charset_are_json(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await client.put("/echo", content=b"{}", headers={"content-type": content_type})
        assert r.status_code == 200, content_type


async def test_empty_body_still_needs_json_content_type(client: httpx.AsyncClient) -> None:
    # CSRF: a body-less cross-site POST (cancel, retry) must not act either.
    assert_problem(await client.post("/echo"), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_problem(await client.delete("/echo"), 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await client.post("/echo", headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["size"] == 0


async def test_deep_nesting_is_422(client: httpx.AsyncClient) -> None:
    body = "[" * 40 + "]" * 40
    r = await client.post("/echo", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(r, 422, "INVALID_REQUEST")
    assert "nested" in str(problem["detail"])


async def test_huge_number_is_422(client: httpx.AsyncClient) -> None:
    body = '{"n": ' + "9" * 200 + "}"
    r = await client.post("/echo", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 422, "INVALID_REQUEST")


async def test_get_requests_are_not_inspected(client: httpx.AsyncClient) -> None:
    r = await client.get("/echo")
    assert r.status_code == 200


def test_shape_check_ignores_brackets_and_digits_inside_strings() -> None:
    text = ('{"s": "' + "[" * 100 + "1" * 100 + '\\"' + '"}').encode()
    assert check_json_shape(text, max_depth=4, max_number_chars=10) is None
    assert check_json_shape(b"[[[[[1]]]]]", max_depth=4, max_number_chars=10) is not None
    assert check_json_shape(b"[[[[1]]]]", max_depth=4, max_number_chars=10) is None


async def test_a_body_cut_short_by_a_disconnect_never_reaches_the_handler() -> None:
    handled: list[bytes] = []
    sent: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        handled.append((await receive())["body"])

    incoming: list[Message] = [
        {"type": "http.request", "body": b'{"process": tr', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-type", b"application/json")],
    }
    await BodyLimitMiddleware(handler, max_body_bytes=LIMIT)(scope, receive, send)
    assert handled == [] and sent == []
