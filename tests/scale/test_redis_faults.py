"""Redis failing under a running API node and stream node (real processes, real redis-server
with its append-only file): no event a client was sent is lost, nothing is repeated, readiness
says `unavailable` while Redis is away, and everything recovers without an operator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from redis_server import RedisServer
from scale_support import Follower, Frame, client, create_session, read_sse, seqs, start_nodes

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

OUTAGE_S = 5.0  # how long the "stopped" scenario keeps Redis away


async def wait_ready(url: str, ready: bool, timeout: float = 30.0) -> dict[str, object]:
    """Poll `/v1/readiness` until its readiness is `ready` (an HTTP figure: nothing to wait on)."""
    async with client(url) as c:
        with anyio.fail_after(timeout):
            while True:
                response = await c.get("/readiness")
                body: dict[str, object] = response.json()
                if body["ready"] is ready:
                    assert response.status_code == (200 if ready else 503)
                    return body
                await anyio.sleep(0.1)


def created(sid: str) -> Callable[[list[Frame]], bool]:
    return lambda events: any(f[1] == "session.created" and f'"{sid}"' in f[2] for f in events)


async def outage_scenario(tmp_path: Path, redis: RedisServer, *, crash: bool) -> None:
    api, stream = start_nodes(tmp_path / "data", redis)
    on_api, on_stream = Follower(api.url), Follower(stream.url)
    try:
        await create_session(api, "before")
        assert await on_stream.wait_for(created("before"))
        started = anyio.current_time()
        if crash:
            redis.kill()  # SIGKILL: only what the append-only file holds survives
        else:
            redis.stop()
        for url in (api.url, stream.url):
            body = await wait_ready(url, False)
            assert body["status"] == "unavailable"
        # Published during the outage: local subscribers of the API node get it at once.
        await create_session(api, "during")
        assert await on_api.wait_for(created("during"))
        if not crash:
            await anyio.sleep(max(0.0, OUTAGE_S - (anyio.current_time() - started)))
        redis.start()
        for url in (api.url, stream.url):
            await wait_ready(url, True)
        await create_session(api, "after")
        assert await on_api.wait_for(created("after"))
        assert await on_stream.wait_for(created("after"))
        # The stream node's subscriber kept its connection and got every event exactly once,
        # identical to the API node's.
        assert not on_stream.ended
        assert on_stream.events == on_api.events
        assert seqs(on_stream.events) == sorted(set(seqs(on_stream.events)))
        everything = list(on_api.events)
    finally:
        await on_api.aclose()
        await on_stream.aclose()
    try:
        # A client resuming afterwards, on either node, gets everything.
        assert await read_sse(stream.url, "0", len(everything)) == everything
        middle = everything[len(everything) // 2][0]
        rest = everything[len(everything) // 2 + 1 :]
        assert await read_sse(stream.url, middle, len(rest)) == rest
        async with client(api.url) as c:
            metrics = (await c.get("/metrics")).text
            assert "runwire_redis_writer_backlog 0.0" in metrics
    finally:
        assert stream.terminate() == 0, "\n".join(stream.log[-30:])
        assert api.terminate() == 0, "\n".join(api.log[-30:])


async def test_redis_killed_and_restarted_loses_no_event_a_client_was_sent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await outage_scenario(tmp_path, redis_server, crash=True)


async def test_redis_stopped_for_seconds_then_back_delivers_the_outage_events_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await outage_scenario(tmp_path, redis_server, crash=False)
