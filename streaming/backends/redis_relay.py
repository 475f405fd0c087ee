"""The receiving side of the Redis backend: a stream node's broker, fed from Redis.

`RelayBroker` is a `Broker` that stamps nothing: `RedisRelay` reads the server-wide stream
(XREAD BLOCK, from the last seq it delivered) and hands the events to it with their seqs as
given, so ids, order, replay buffers, resume and `stream.gap` behave exactly as on the API node.

Resume on a relay node: from its in-memory buffers, else from Redis (`RedisHistory`: the
session streams, or the server-wide stream for "all sessions"), else from the journal on the
shared data directory (the fallback `HistorySource`), else a `stream.gap`. A client resuming
from a seq this node has not received yet (it was connected to a node further ahead) first
waits, up to `catch_up_timeout`, for the relay to reach that seq: without the wait the broker
would take the id for one from the future and announce a gap.

Redis down: the relay retries every `retry_s`; subscribers keep their connections and, when
Redis is back, receive what was published meanwhile from where the relay stopped: no gap, no
duplicate. `connected` is what readiness reports.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Collection, Iterable
from typing import Any

import msgspec
import redis
import redis.exceptions

from streaming.backends.redis_keys import (
    CLOSE_WAIT_S,
    REDIS_DOWN,
    REDIS_FAILED,
    RedisKeys,
    async_client,
    entry_seq,
    sync_client,
)
from streaming.broker import Broker
from streaming.envelope import Event
from streaming.errors import StreamingError
from streaming.replay import HistorySource
from streaming.tasks import TaskSupervisor

__all__ = ["RedisHistory", "RedisRelay", "RelayBroker", "RelayUnavailable", "open_relay"]

log = logging.getLogger(__name__)


class RelayUnavailable(StreamingError):
    """Redis could not tell a starting stream node the epoch (down, or no API node yet)."""


class RelayBroker(Broker):
    """A `Broker` whose events arrive with their seqs from a relay (`deliver_relayed`).

    `stamp`/`publish`/`emit` are refused: on a stream node the API node is the one publisher.
    """

    def __init__(self, *, catch_up_timeout: float = 10.0, **options: Any) -> None:
        super().__init__(**options)
        self.catch_up_timeout = catch_up_timeout
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tie = itertools.count()

    def stamp(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event:
        raise RuntimeError("a stream node's broker publishes nothing; the API node does")

    def deliver_relayed(self, events: Iterable[Event]) -> None:
        """Loop only: deliver events read from Redis, in the order given (increasing seq)."""
        if self.closed:
            return
        for event in events:
            self._deliver(event)  # an already-delivered seq is skipped (logged) there
        if self._dead:
            for sub in self._dead:
                self.unregister(sub)
            self._dead.clear()
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.top_seq:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    async def wait_for_seq(self, seq: int, timeout: float) -> bool:
        """Wait until `seq` has been delivered here (False after `timeout` s)."""
        if seq <= self.top_seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tie), future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        return True

    async def replay(
        self,
        sessions: Collection[str] | None,
        run_id: str | None,
        target: tuple[str | None, int],
        register: Any,
        exclude: Collection[str] = (),
    ) -> tuple[list[Event], Event | None]:
        epoch, seq = target
        if epoch == self.epoch and seq > self.top_seq:
            # Resumed from a node further ahead: catch up first rather than call it a gap.
            await self.wait_for_seq(seq, self.catch_up_timeout)
            self.check_open()
        return await super().replay(sessions, run_id, target, register, exclude)


class RedisRelay:
    """Feeds a `RelayBroker` from the server-wide stream; see the module docstring.

    `block_ms`: how long one XREAD waits for news; `batch`: entries per read.
    """

    def __init__(
        self,
        url: str,
        broker: RelayBroker,
        *,
        keys: RedisKeys | None = None,
        block_ms: int = 1000,
        batch: int = 1000,
        retry_s: float = 0.5,
        socket_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.broker = broker
        self.keys = keys or RedisKeys()
        self.block_ms = block_ms
        self.batch = batch
        self.retry_s = retry_s
        # A read blocks up to `block_ms`: the socket timeout must outlast it.
        self._redis: Any = async_client(
            url, socket_timeout, read_timeout=socket_timeout + block_ms / 1000
        )
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSupervisor("redis-relay")
        self.connected = True  # `open_relay` has just read from Redis
        self.relayed_count = 0
        self._closing = False

    def start(self) -> None:
        self._task = self._tasks.spawn(self._run(), name="redis-relay")

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            # A cancel landing inside redis-py's blocking read may come out as a connection
            # error, which the loop retries: `_closing` ends the loop then. Bounded anyway.
            await self._tasks.aclose(CLOSE_WAIT_S)
        await self._redis.aclose()

    async def api_top(self) -> int | None:
        """The highest seq the API node has written to Redis (None: Redis unreachable)."""
        try:
            raw = await self._redis.get(self.keys.top)
        except REDIS_DOWN:
            return None
        return int(raw) if raw is not None else 0

    async def _run(self) -> None:
        broker, stream = self.broker, self.keys.stream
        while not broker.closed and not self._closing:
            try:
                reply = await self._redis.xread(
                    {stream: f"{broker.top_seq}-0"}, count=self.batch, block=self.block_ms
                )
                self._set_connected(True)
                if not reply:
                    continue
                events: list[Event] = []
                for entry_id, fields in reply[0][1]:
                    try:
                        events.append(Event.from_raw(fields[b"env"]))
                    except (KeyError, msgspec.MsgspecError):
                        log.warning("skipping an unreadable Redis entry %r", entry_id)
                if events:
                    self.relayed_count += len(events)
                    broker.deliver_relayed(events)
            except REDIS_FAILED as exc:
                self._set_connected(False, exc)
                await asyncio.sleep(self.retry_s)

    def _set_connected(self, value: bool, exc: BaseException | None = None) -> None:
        if value != self.connected:
            if value:
                log.info("events: relay reading Redis at %s again", self.url)
            else:
                log.warning("events: relay lost Redis (%s); subscribers stay connected", exc)
            self.connected = value


class RedisHistory:
    """A `HistorySource` that reads Redis first and `fallback` (the journal) when Redis does
    not hold the whole range (trimmed, emptied, unreachable). Synchronous, thread-safe: the
    broker calls it in a worker thread."""

    def __init__(
        self,
        url: str,
        fallback: HistorySource | None,
        *,
        keys: RedisKeys | None = None,
        socket_timeout: float = 2.0,
    ) -> None:
        self.keys = keys or RedisKeys()
        self.fallback = fallback
        self._redis: Any = sync_client(url, socket_timeout)
        self.redis_reads = 0  # resumes served from Redis (metrics, tests)

    def close(self) -> None:
        self._redis.close()

    def events_after(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> Iterable[bytes]:
        try:
            lines = self._from_redis(seq, sessions, run_id)
        except REDIS_FAILED as exc:
            log.info("events: resume from the journal, Redis unreachable (%s)", exc)
            lines = None
        if lines is not None:
            self.redis_reads += 1
            return lines
        return self.fallback.events_after(seq, sessions, run_id) if self.fallback else []

    def _from_redis(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> list[bytes] | None:
        r, keys = self._redis, self.keys
        since = r.get(keys.since)
        if since is None or seq < int(since):
            return None  # Redis never held the start of this range
        streams = [keys.stream] if sessions is None else [keys.session_stream(s) for s in sessions]
        run = (run_id or "").encode()
        merged: list[tuple[int, bytes]] = []
        for stream in streams:
            try:
                info: dict[Any, Any] = r.xinfo_stream(stream)
            except redis.exceptions.ResponseError:
                continue  # no such stream: no event of that session was written
            deleted = info.get("max-deleted-entry-id") or b"0-0"
            first = info.get("first-entry")
            trimmed = int(info.get("length", 0)) < int(info.get("entries-added", 0))
            if entry_seq(deleted) > seq or (trimmed and first and entry_seq(first[0]) > seq + 1):
                return None  # trimmed past the resume point: the journal has it
            for entry_id, fields in r.xrange(stream, min=f"({seq}-0", max="+"):
                if run_id is None or fields.get(b"run") == run:
                    merged.append((entry_seq(entry_id), fields[b"env"]))
        merged.sort(key=lambda item: item[0])
        return [raw for _, raw in merged]


async def open_relay(
    url: str,
    *,
    keys: RedisKeys | None = None,
    history: HistorySource | None = None,
    wait_s: float = 30.0,
    **broker_options: Any,
) -> tuple[RelayBroker, RedisRelay]:
    """A started `RelayBroker` and its (not yet started) `RedisRelay`, positioned at the
    server-wide stream's end: the epoch is Redis', memory starts empty above the last seq
    written (older events come from `history`). Waits up to `wait_s` for Redis and for an API
    node to have written the epoch; raises `RelayUnavailable` after that."""
    keys = keys or RedisKeys()
    probe: Any = async_client(url, 5.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    problem = "no API node has written its epoch yet"
    try:
        while True:
            try:
                epoch = await probe.get(keys.epoch)
                last = await probe.xrevrange(keys.stream, count=1)
                if epoch is not None:
                    break
            except REDIS_DOWN as exc:
                problem = f"Redis at {url} is unreachable ({exc})"
            if loop.time() >= deadline:
                raise RelayUnavailable(f"cannot start a stream node: {problem}")
            await asyncio.sleep(0.2)
    finally:
        await probe.aclose()
    top = entry_seq(last[0][0]) if last else 0
    broker = RelayBroker(epoch=epoch.decode(), start_seq=top + 1, history=history, **broker_options)
    await broker.start()
    return broker, RedisRelay(url, broker, keys=keys)
