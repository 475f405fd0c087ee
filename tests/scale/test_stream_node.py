"""One API node and one stream node as real `runwire serve` processes on a real Redis: what a
client sees is the same on both, a client moving between them resumes with no gap and no
duplicate, control ops sent to the stream node reach the API node, and everything else on the
stream node is a clear 421."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis_server import RedisServer
from scale_support import Follower, Nodes, client, create_session, read_sse, start_nodes
from sstore_server import ServeProcess, seq_of
from websockets.asyncio.client import ClientConnection, connect

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[Nodes]:
    api, stream = start_nodes(tmp_path / "data", redis_server)
    try:
        yield api, stream
    finally:
        assert stream.terminate() == 0, "\n".join(stream.log[-30:])
        assert api.terminate() == 0, "\n".join(api.log[-30:])


def ws_url(node: ServeProcess, path: str) -> str:
    return node.url.replace("http://", "ws://") + path


async def ws_request(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send an op and return its reply (events arriving meanwhile are skipped)."""
    await ws.send(json.dumps(message))
    with anyio.fail_after(30):
        while True:
            got: dict[str, Any] = json.loads(await ws.recv())
            if got.get("type") == "reply" and got.get("id") == message.get("id"):
                return got


async def resume(node: ServeProcess, since: str, count: int) -> list[tuple[str, str, str]]:
    """The first `count` events after `since` from `node` over SSE (a fresh client)."""
    return await read_sse(node.url, since, count)


async def test_both_nodes_stream_the_same_events_and_a_client_resumes_across_them(
    nodes: Nodes,
) -> None:
    api, stream = nodes
    on_api = Follower(api.url)
    on_stream = Follower(stream.url)
    try:
        await create_session(api, "s1")
        # A control op sent to the stream node runs on the API node.
        async with connect(ws_url(stream, "/v1/ws")) as ws:
            reply = await ws_request(ws, {"op": "process", "id": 1, "session": "s1"})
            assert reply["ok"] is True, reply
            run_id = reply["result"]["run_id"]
            missing = await ws_request(ws, {"op": "process", "id": 2, "session": "nope"})
            assert missing["ok"] is False
            assert missing["error"]["code"] == "SESSION_NOT_FOUND"

        def run_done(events: list[tuple[str, str, str]]) -> bool:
            return any(e[1] == "run.finished" and run_id in e[2] for e in events)

        assert await on_api.wait_for(run_done, 30)
        assert await on_stream.wait_for(run_done, 30)
        everything = list(on_api.events)
        assert await on_stream.wait_for(lambda ev: len(ev) >= len(everything), 30)
        # Identical envelopes (bytes), ids and order on both nodes.
        assert on_stream.events == everything
        seqs = [seq_of(e[0]) for e in everything]
        assert seqs == sorted(set(seqs))
    finally:
        await on_api.aclose()
        await on_stream.aclose()

    # A client that read part of the stream on one node resumes on the other.
    middle = len(everything) // 2
    rest = everything[middle + 1 :]
    assert await resume(stream, everything[middle][0], len(rest)) == rest
    assert await resume(api, everything[middle][0], len(rest)) == rest
    # From the start (stream node: its memory began after these; Redis or the journal).
    assert await resume(stream, "0", len(everything)) == everything


async def test_the_stream_node_serves_events_only_and_reports_its_figures(nodes: Nodes) -> None:
    api, stream = nodes
    async with client(stream.url) as c:
        assert (await c.get("/health")).json() == {"status": "ok"}
        ready = await c.get("/readiness")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        for method, path in [("GET", "/sessions"), ("POST", "/sessions"), ("GET", "/runs/x")]:
            response = await c.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 421, (method, path)
            problem = response.json()
            assert problem["code"] == "MISDIRECTED_REQUEST"
            assert api.url in problem["detail"]
        unknown = await c.get("/sessions/nope/events", headers={"Accept": "text/event-stream"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "SESSION_NOT_FOUND"
        follower = Follower(stream.url)
        try:
            await create_session(api, "m")
            assert await follower.wait_for(lambda ev: len(ev) >= 1, 30)
            metrics = (await c.get("/metrics")).text
            assert "runwire_stream_subscribers 1.0" in metrics
            assert "runwire_relay_lag_events 0.0" in metrics
            assert "runwire_redis_up 1.0" in metrics
        finally:
            await follower.aclose()
    async with client(api.url) as a:
        api_metrics = (await a.get("/metrics")).text
        assert "runwire_redis_writer_backlog 0.0" in api_metrics
        assert (await a.get("/readiness")).json()["status"] == "ok"
