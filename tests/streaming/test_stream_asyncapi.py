"""The AsyncAPI document describes exactly what the server accepts and sends."""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec

from streaming.asyncapi import asyncapi_document
from streaming.messages import ClientMessage, decoder


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    if isinstance(node, dict) and "$ref" in node:
        return resolve(doc, node["$ref"])
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


def test_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    json.dumps(doc)  # plain JSON
    refs = all_refs(doc)
    assert refs
    for ref in refs:
        resolve(doc, ref)  # raises KeyError when dangling
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {
        "/v1/ws",
        "/v1/sessions/{sid}/events",
        "/v1/events",
        "/v1/runs/{run_id}/events",
    } <= addresses


def test_every_client_op_the_server_decodes_is_described_with_its_tag() -> None:
    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    described = {}
    for ref in doc["operations"]["receiveOps"]["messages"]:
        message = resolve(doc, ref["$ref"])
        schema = resolve(doc, message["payload"]["$ref"])
        described[schema["properties"]["op"]["enum"][0]] = schema
    decoded_ops = {t.__struct_config__.tag for t in typing.get_args(ClientMessage)}
    assert set(described) == decoded_ops
    # The schema's required fields are what the decoder requires.
    for op, schema in described.items():
        required = set(schema.get("required", ())) - {"op"}
        for field in required:
            minimal = {f: "x" for f in required - {field}} | {"op": op}
            try:
                decoder.decode(json.dumps(minimal))
            except msgspec.ValidationError:
                continue
            raise AssertionError(f"{op}: {field} is documented as required but is not")
    assert "stream.gap" in schemas["Envelope"]["properties"]["type"]["enum"]


def test_callers_get_their_own_copy() -> None:
    asyncapi_document()["info"]["title"] = "changed"
    assert asyncapi_document()["info"]["title"] == "runwire event streams"
