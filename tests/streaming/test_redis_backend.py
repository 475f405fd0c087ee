"""The Redis backend's own promises, against a real redis-server (in-process brokers): a relay
resumes from Redis, then from the journal; the writer catches Redis up from the journal after an
outage longer than its backlog."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import redis
from liveserver import DiskHistory, drain
from redis_server import RedisServer

from streaming.backends import RedisEventWriter, RedisHistory, RedisKeys, open_relay
from streaming.backends.redis_relay import RelayBroker, RelayUnavailable
from streaming.broker import Broker
from streaming.envelope import Event

pytestmark = pytest.mark.anyio


class Publisher:
    """An API node's side: a broker whose events are journalled (`lines`) and written to Redis."""

    def __init__(self, url: str, *, start_seq: int = 1, lines: list[bytes] | None = None,
                 replay_size: int = 1000, backlog_limit: int = 100_000) -> None:  # fmt: skip
        self.lines = lines if lines is not None else []
        self.broker = Broker(epoch="E", start_seq=start_seq, replay_size=replay_size)
        self.writer = RedisEventWriter(
            url, epoch="E", start_seq=start_seq, replay_size=replay_size,
            history=DiskHistory(self.lines), backlog_limit=backlog_limit, retry_s=0.05,
        )  # fmt: skip

    def emit(self, session: str, run_id: str | None = None) -> Event:
        event = self.broker.emit("step.progress", session, {}, run_id)
        self.lines.append(event.raw)
        return event


@contextlib.asynccontextmanager
async def publishing(url: str, **options: object) -> AsyncIterator[Publisher]:
    pub = Publisher(url, **options)  # type: ignore[arg-type]
    await pub.broker.start()
    pub.broker.on_release = pub.writer.offer
    pub.writer.start()
    try:
        yield pub
    finally:
        await pub.broker.aclose()
        await pub.writer.aclose()


@contextlib.asynccontextmanager
async def relaying(url: str, fallback: DiskHistory | None = None) -> AsyncIterator[RelayBroker]:
    history = RedisHistory(url, fallback)
    broker, relay = await open_relay(url, history=history, wait_s=10)
    relay.start()
    try:
        yield broker
    finally:
        await relay.aclose()
        await broker.aclose()
        history.close()


async def until_written(pub: Publisher, seq: int) -> None:
    """Wait until the writer has `seq` in Redis (the relay of a fresh broker is the witness)."""
    async with relaying(pub.writer.url) as relay:
        assert relay.top_seq >= seq or await relay.wait_for_seq(seq, 10)


async def test_a_relay_started_late_resumes_from_redis_then_the_journal(
    redis_server: RedisServer,
) -> None:
    async with publishing(redis_server.url, replay_size=100) as pub:
        for i in range(30):
            pub.emit("a" if i % 2 else "b", run_id="r" if i < 6 else None)
        await until_written(pub, 30)
        async with relaying(redis_server.url, DiskHistory(pub.lines)) as relay:
            # Its memory starts after seq 30: these come from Redis' session stream.
            history = relay._history
            assert isinstance(history, RedisHistory)
            async with await relay.subscribe(sessions=["a"], since="E-10") as sub:
                assert [e.seq for e in await drain(sub, 10)] == list(range(12, 31, 2))
            assert history.redis_reads == 1
            async with await relay.subscribe(since="0") as every:
                assert [e.seq for e in await drain(every, 30)] == list(range(1, 31))
            async with await relay.subscribe(run_id="r") as run:
                assert [e.seq for e in await drain(run, 6)] == list(range(1, 7))
            # Trimmed in Redis past the resume point: the journal serves it.
            redis.Redis.from_url(redis_server.url).xtrim(
                "runwire:events:a", maxlen=2, approximate=False
            )
            async with await relay.subscribe(sessions=["a"], since="E-1") as sub:
                assert [e.seq for e in await drain(sub, 15)] == list(range(2, 31, 2))
            assert history.redis_reads == 3


async def test_an_outage_longer_than_the_backlog_is_caught_up_in_order(
    redis_server: RedisServer,
) -> None:
    async with publishing(redis_server.url, backlog_limit=5) as pub:
        pub.emit("s")
        await until_written(pub, 1)
        redis_server.stop()
        local = await pub.broker.subscribe(sessions=["s"])
        for _ in range(20):
            pub.emit("s")  # local delivery goes on; the backlog overflows
        assert [e.seq for e in await drain(local, 20)] == list(range(2, 22))
        local.close()
        redis_server.start()
        async with (
            relaying(redis_server.url) as relay,
            await relay.subscribe(sessions=["s"], since="0") as sub,
        ):
            assert [e.seq for e in await drain(sub, 21)] == list(range(1, 22))
        assert pub.writer.backlog == 0 and pub.writer.connected


async def test_a_stream_node_cannot_start_before_an_api_node_wrote_the_epoch(
    redis_server: RedisServer,
) -> None:
    with pytest.raises(RelayUnavailable, match="no API node"):
        await open_relay(redis_server.url, keys=RedisKeys("elsewhere:"), wait_s=0.3)
