"""The OpenAPI document covers every route the app serves, with the schemas of the Structs the
handlers decode; this test fails when a route is added without a description."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from api_support import Api

from service.models import CreateSessionRequest, ProcessRequest
from service.openapi import API_PREFIX, route_paths

pytestmark = pytest.mark.anyio


@pytest.fixture
async def document(api: Api) -> dict[str, Any]:
    r = await api.client.get("/v1/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def served(api: Api) -> set[tuple[str, str]]:
    # Starlette spells a path converter `{path:path}`; OpenAPI just `{path}`.
    return {(method, path.replace(":path}", "}")) for method, path in route_paths(api.app.routes)}


async def test_every_http_route_is_documented_and_nothing_else(
    api: Api, document: dict[str, Any]
) -> None:
    http_routes = {(m, p) for m, p in served(api) if m != "WS"}
    assert http_routes - documented(document) == set()
    assert documented(document) - http_routes == set()


async def test_websocket_routes_are_listed(api: Api, document: dict[str, Any]) -> None:
    ws = {p for m, p in served(api) if m == "WS"}
    assert ws == set(document["x-websocket-paths"])
    assert ws == {f"{API_PREFIX}/ws", f"{API_PREFIX}/sessions/{{sid}}/events"}


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


async def test_request_bodies_are_the_decoded_structs(document: dict[str, Any]) -> None:
    _, components = msgspec.json.schema_components(
        [CreateSessionRequest, ProcessRequest], ref_template="#/components/schemas/{name}"
    )
    create = document["paths"]["/v1/sessions"]["post"]
    schema = resolve(document, create["requestBody"]["content"]["application/json"]["schema"])
    assert schema == components["CreateSessionRequest"]
    process = document["paths"]["/v1/sessions/{sid}/process"]["post"]
    assert process["requestBody"]["required"] is False
    assert {p["name"] for p in process["parameters"]} == {"sid", "Idempotency-Key"}
    assert set(process["responses"]) >= {"202", "404", "409", "413", "415", "422", "429"}
    assert "Retry-After" in process["responses"]["429"]["headers"]


async def test_errors_use_the_problem_schema(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    media = response["content"]["application/problem+json"]
                    assert media["schema"] == {"$ref": "#/components/schemas/Problem"}, (
                        method,
                        path,
                    )


async def test_document_is_openapi_3_1_with_bearer_auth(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = [op for item in document["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
