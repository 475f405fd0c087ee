"""SSE over a real socket: framing, headers, resume, fan-out to 100 subscribers, run streams."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from liveserver import DiskHistory, LiveServer, live_server, wait_until

from streaming.broker import Broker

pytestmark = pytest.mark.anyio


class Frame(dict[str, str]):
    pass


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parse an SSE body into frames (dicts of field -> value; comments under ':')."""
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if frame:
                yield frame
            frame = Frame()
            continue
        field, _, value = line.partition(":")
        frame[field] = value[1:] if value.startswith(" ") else value


async def collect(stream: AsyncIterator[Frame], n: int) -> list[Frame]:
    out: list[Frame] = []
    with anyio.fail_after(10):
        async for frame in stream:
            if "data" in frame:
                out.append(frame)
                if len(out) == n:
                    break
    return out


def emit_many(live: LiveServer, n: int, session: str = "s") -> None:
    for i in range(n):
        live.broker.emit("step.progress", session, {"step": "x", "fraction": i / n})


async def test_frames_headers_and_retry_hint(live: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("GET", "/events?sessions=s") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        stream = frames(response)
        first = await anext(stream)
        assert first == {"retry": "2000"}
        live.broker.emit("step.progress", "other", {"step": "x"})
        event = live.broker.emit("step.progress", "s", {"step": "x", "fraction": 0.5})
        with anyio.fail_after(10):
            frame = await anext(stream)
        assert frame["id"] == event.id
        assert frame["event"] == "step.progress"
        envelope = json.loads(frame["data"])
        assert envelope["seq"] == event.seq and envelope["data"]["fraction"] == 0.5


async def test_reconnect_with_last_event_id_loses_and_repeats_nothing(live: LiveServer) -> None:
    emit_many(live, 10)
    async with (
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("GET", "/events", params={"since": "0"}) as response,
    ):
        seen = await collect(frames(response), 4)
        emit_many(live, 5)  # published while disconnected
        headers = {"Last-Event-ID": seen[-1]["id"]}
        # The header wins over a query parameter.
        async with client.stream(
            "GET", "/events", headers=headers, params={"since": "0"}
        ) as response:
            stream = frames(response)
            rest = await collect(stream, 11)
            emit_many(live, 1)
            rest += await collect(stream, 1)
    seqs = [json.loads(f["data"])["seq"] for f in seen + rest]
    assert seqs == list(range(1, 17))


async def test_malformed_last_event_id_is_refused_before_streaming(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url) as client:
        for headers, params in [
            ({"Last-Event-ID": "not-an-id"}, {}),
            ({}, {"since": "E-"}),
            ({}, {"last_event_id": "x-1\r"}),
        ]:
            response = await client.get("/events", headers=headers, params=params)
            assert response.status_code == 422
            assert response.json()["code"] == "INVALID_REQUEST"
    assert live.broker.subscriber_count == 0


async def test_100_subscribers_each_receive_every_event_of_a_worker_burst(
    live: LiveServer,
) -> None:
    n_subs, n_events = 100, 300
    results: list[list[int]] = []
    limits = httpx.Limits(max_connections=n_subs + 10)
    async with httpx.AsyncClient(base_url=live.url, limits=limits, timeout=20) as client:
        ready = anyio.Event()
        subscribed = 0

        async def subscriber() -> None:
            nonlocal subscribed
            async with client.stream("GET", "/events?sessions=s") as response:
                stream = frames(response)
                await anext(stream)  # the retry hint: subscribed from here on
                subscribed += 1
                if subscribed == n_subs:
                    ready.set()
                got: list[int] = []
                with anyio.fail_after(20):
                    async for frame in stream:
                        got.append(json.loads(frame["data"])["seq"])
                        if len(got) == n_events:
                            break
                results.append(got)

        async with anyio.create_task_group() as tg:
            for _ in range(n_subs):
                tg.start_soon(subscriber)
            with anyio.fail_after(20):
                await ready.wait()
            # A stand-in for a diag.emit run: a worker thread publishing as fast as it can.
            worker = threading.Thread(target=emit_many, args=(live, n_events))
            worker.start()
            await anyio.to_thread.run_sync(worker.join)
    assert len(results) == n_subs
    expected = list(range(1, n_events + 1))
    assert all(got == expected for got in results)


async def test_run_stream_replays_the_run_and_ends_after_its_terminal_event(
    live: LiveServer,
) -> None:
    b = live.broker
    b.emit("run.queued", "s", {}, run_id="r1")
    b.emit("run.started", "s", {}, run_id="r1")
    b.emit("run.queued", "s", {}, run_id="r2")
    async with (
        httpx.AsyncClient(base_url=live.url, timeout=10) as client,
        client.stream("GET", "/runs/r1/events") as response,
    ):
        b.emit("step.started", "s", {"step": "a"}, run_id="r1")
        b.emit("run.finished", "s", {"status": "succeeded"}, run_id="r1")
        types = []
        with anyio.fail_after(10):
            async for frame in frames(response):  # ends: the server closed the stream
                if "event" in frame:
                    types.append(frame["event"])
    assert types == ["run.queued", "run.started", "step.started", "run.finished"]
    assert live.broker.subscriber_count == 0


async def test_a_client_that_disconnects_leaves_no_subscription(live: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("GET", "/events") as response,
    ):
        await anext(frames(response))
        assert live.broker.subscriber_count == 1
    await wait_until(lambda: live.broker.subscriber_count == 0)


async def test_keepalive_comments_flow_while_idle() -> None:
    broker = Broker(epoch="E")
    with live_server(broker, {"keepalive": 0.05}) as live:
        async with (
            httpx.AsyncClient(base_url=live.url) as client,
            client.stream("GET", "/events") as response,
        ):
            lines = response.aiter_lines()
            with anyio.fail_after(10):
                assert await anext(lines) == "retry: 2000"
                assert await anext(lines) == ""
                assert await anext(lines) == ": keep-alive"


async def test_a_too_slow_sse_client_has_its_stream_ended(direct_writes: bool) -> None:
    broker = Broker(epoch="E", subscriber_queue_size=8)
    with live_server(broker, {"direct_writes": direct_writes}) as live:
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=10) as client,
            client.stream("GET", "/events") as response,
        ):
            stream = frames(response)
            await anext(stream)  # subscribed

            # Published on the server's loop in one go: far more than the queue holds,
            # faster than any socket drains.
            async def burst() -> None:
                for i in range(5000):
                    broker.emit("step.progress", "s", {"pad": "x" * 2000, "i": i})

            await anyio.to_thread.run_sync(live.call, burst)
            seqs = []
            with anyio.fail_after(20):
                try:
                    async for frame in stream:
                        seqs.append(json.loads(frame["data"])["seq"])
                except httpx.RemoteProtocolError:
                    pass  # cut off hard: fine, the client resumes from its last id
        assert len(seqs) < 5000
        assert seqs == list(range(1, len(seqs) + 1))  # what arrived is complete, in order
        assert broker.overflow_count == 1


async def test_after_a_restart_since_an_old_id_still_replays_from_history() -> None:
    disk: list[bytes] = []
    first = Broker(epoch="E")
    with live_server(first):
        old = [first.emit("step.progress", "s", {"i": i}) for i in range(5)]
        disk.extend(e.raw for e in old)
    second = Broker(epoch="E", start_seq=1000, history=DiskHistory(disk))
    with live_server(second) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            headers = {"Last-Event-ID": old[1].id}
            async with client.stream("GET", "/events?sessions=s", headers=headers) as response:
                stream = frames(response)
                got = await collect(stream, 3)
                second.emit("step.progress", "s", {"i": 5})
                got += await collect(stream, 1)
    assert [json.loads(f["data"])["seq"] for f in got] == [3, 4, 5, 1000]
