"""The OpenAPI document covers every route the app serves, with the schemas of the Structs the
handlers decode; this test fails when a route is added without a description."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from api_support import NEEDS_SAMPLE, Api, assert_problem

from service.contract.models import CreateSessionRequest, ProcessRequest
from service.http.openapi import API_PREFIX, route_paths

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}


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


async def test_headers_document_their_formats(document: dict[str, Any]) -> None:
    events = document["paths"]["/v1/events"]["get"]
    last_id = next(p for p in events["parameters"] if p["name"] == "Last-Event-ID")
    assert last_id["in"] == "header"
    pattern = re.compile(last_id["schema"]["pattern"])
    assert pattern.match("3fa9c2d1-42") and pattern.match("0")
    assert not pattern.match("not an id") and not pattern.match("abc-")
    process = document["paths"]["/v1/sessions/{sid}/process"]["post"]
    key = next(p for p in process["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 200}


async def test_pipeline_is_one_of_yaml_text_or_path(document: dict[str, Any]) -> None:
    pipeline = document["components"]["schemas"]["PipelineInput"]
    assert [rule["required"] for rule in pipeline["oneOf"]] == [["yaml_text"], ["path"]]


async def test_streams_and_files_have_their_real_media_types(document: dict[str, Any]) -> None:
    for path in ("/v1/events", "/v1/sessions/{sid}/events", "/v1/runs/{run_id}/events"):
        assert set(document["paths"][path]["get"]["responses"]["200"]["content"]) == {
            "text/event-stream"
        }
    reports = document["paths"]["/v1/retained-runs/{run_id}/reports/{name}"]["get"]
    assert set(reports["responses"]["200"]["content"]) == {
        "application/json",
        "application/x-ndjson",
    }
    artifact = document["paths"]["/v1/retained-runs/{run_id}/artifacts/{path}"]["get"]
    media = artifact["responses"]["200"]["content"]
    assert {"application/x-hdf5", "text/csv", "application/json"} <= set(media)


async def test_every_state_changing_operation_documents_415_and_507_and_every_one_421(
    document: dict[str, Any],
) -> None:
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert "421" in op["responses"], (method, path)
            if method in ("post", "put", "patch", "delete"):
                assert "415" in op["responses"], (method, path)
                assert "507" in op["responses"], (method, path)  # a full disk
                assert "application/json" in op["requestBody"]["content"], (method, path)


async def test_a_source_named_patch_is_deleted_through_the_documented_path(
    api: Api, document: dict[str, Any], tmp_path: Path
) -> None:
    # `.../sources/patch` is a concrete path (POST upserts one source): its DELETE is listed
    # there, and removes the source whose ref is `patch`.
    assert set(document["paths"]["/v1/sessions/{sid}/sources/patch"]) == {"post", "delete"}
    assert set(document["paths"]["/v1/sessions/{sid}/sinks/patch"]) == {"post", "delete"}
    sample = tmp_path / "patch.json"
    sample.write_text('{"value": 1}')
    body = {"session_id": "s", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    source = {"ref": "patch", "type": "json", "location": str(sample)}
    r = await api.client.post("/v1/sessions/s/sources/patch", json=source)
    assert r.status_code == 200, r.text
    assert "patch" in r.json()["sources"]
    r = await api.client.delete("/v1/sessions/s/sources/patch", headers=JSON)
    assert r.status_code == 204, r.text
    assert (await api.client.get("/v1/sessions/s")).json()["sources"] == {}
    r = await api.client.delete("/v1/sessions/s/sources/patch", headers=JSON)
    assert_problem(r, 404, "NOT_FOUND")
