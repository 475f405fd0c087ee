"""The OpenAPI document tells the truth: schemathesis generates requests from
`/v1/openapi.json` for every operation (valid and invalid data, with real session and run ids
in the paths) against a real server, and every answer must be documented: no server error,
no status, media type, header or body outside the document.

SSE operations stream until the client leaves, so they are checked here by hand (status,
media type, problem schema) rather than called by schemathesis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
import schemathesis
from api_support import LiveServer, session_body
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MakeLive = Callable[..., AbstractContextManager[LiveServer]]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_MODE = 12
SSE_PATHS = {"/v1/events", "/v1/sessions/{sid}/events", "/v1/runs/{run_id}/events"}


def finished_run(client: httpx.Client, sid: str) -> str:
    """Submit a run of `sid` and return its id once its event stream has ended (terminal)."""
    r = client.post(f"/v1/sessions/{sid}/process", json={})
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/v1/runs/{run_id}/events?since=0", headers=headers) as stream:
        for _ in stream.iter_lines():
            pass  # the stream ends after the run's terminal event
    return run_id


@pytest.fixture
def server(make_live_server: MakeLive) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    with make_live_server() as live, httpx.Client(base_url=live.base_url, timeout=30) as client:
        assert client.post("/v1/sessions", json=session_body("s")).status_code == 201
        run_id = finished_run(client, "s")
        yield live, {"sid": "s", "run_id": run_id}


def test_every_answer_is_documented(server: tuple[LiveServer, dict[str, str]]) -> None:
    live, ids = server
    schema = schemathesis.openapi.from_url(live.base_url + "/v1/openapi.json")
    failures: list[str] = []
    calls = 0
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in SSE_PATHS:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES_PER_MODE,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: Any) -> None:
                    nonlocal calls
                    params = case.path_parameters or {}
                    for name, value in ids.items():
                        if name in params:
                            params[name] = value
                    if case.method.upper() == "DELETE" and case.path == "/v1/sessions/{sid}":
                        # Delete a session made for it, so the others keep their real ids.
                        client.post("/v1/sessions", json=session_body("doomed"))
                        params["sid"] = "doomed"
                    calls += 1
                    try:
                        case.call_and_validate(base_url=live.base_url, checks=CHECKS)
                    except Exception as exc:  # a failed check: collected, reported at the end
                        failures.append(f"{case.method} {case.path}: {exc}")

                try:
                    call()
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE  # nothing to get wrong (no inputs)
    assert calls > 200
    assert not failures, "\n\n".join(failures[:10])


def test_sse_answers_are_documented(server: tuple[LiveServer, dict[str, str]]) -> None:
    live, ids = server
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        doc = client.get("/v1/openapi.json").json()
        sse = {"Accept": "text/event-stream"}
        cases = [
            ("/v1/events", {**sse, "Last-Event-ID": "x"}),
            ("/v1/sessions/nope/events", sse),
            ("/v1/runs/r-nope/events", sse),
            ("/v1/events", {**sse, "Origin": "http://evil.example"}),
            ("/v1/events?since=0", sse),
            (f"/v1/runs/{ids['run_id']}/events?since=0", sse),
        ]
        for url, headers in cases:
            with client.stream("GET", url, headers=headers) as response:
                template = url.split("?")[0].replace("nope", "{sid}").replace("r-{sid}", "{run_id}")
                template = template.replace(ids["run_id"], "{run_id}")
                documented = doc["paths"][template]["get"]["responses"]
                status = str(response.status_code)
                assert status in documented, (url, status)
                media = response.headers["content-type"].split(";")[0]
                assert media in documented[status]["content"], (url, media)
                if response.status_code >= 400:
                    body = json.loads(response.read())
                    assert {"type", "title", "status", "detail", "code"} <= body.keys()
