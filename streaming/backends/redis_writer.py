"""`RedisEventWriter`: the API node's one writer of events into Redis Streams.

The API node's `Broker` stays the publisher: it stamps, the service journals, the broker
releases in seq order and hands each released event to `offer` (its `on_release` hook). The
writer copies them into Redis in that order, in batches of one script call each, from one task:
per event its session's stream first, then the server-wide stream (whose last id is the commit
point: a batch cut off half-way is redone from there, and entries Redis already has are
skipped), then `top`.

Redis down. Local subscribers never notice: the broker does not wait for the writer. Released
events wait in a bounded backlog (`backlog_limit`); past it the backlog is dropped and only
the seq it reached is remembered. On every (re)connect the writer compares the server-wide
stream's last seq with what must be there and, when something is missing, reads it back from
the journal (`history`, the run directories' event logs) before writing the backlog: Redis is
caught up in seq order with no operator action. So is a Redis that restarted empty.

`connected` is what readiness reports (`service` answers 503 `unavailable` while it is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import redis.exceptions

from streaming.backends.redis_keys import (
    CLOSE_WAIT_S,
    REDIS_DOWN,
    RedisKeys,
    async_client,
    entry_seq,
)
from streaming.envelope import Event
from streaming.replay import HistorySource, read_history
from streaming.tasks import TaskSupervisor

__all__ = ["RedisEventWriter"]

log = logging.getLogger(__name__)

_BATCH = 512  # events per round trip

# A batch in one command: each event into its session's stream, then the server-wide one (its
# last id is the commit point), then `top`. Packing and parsing ~2 XADDs per event in redis-py
# was a third of the API node's CPU under a burst of runs; this is one EVALSHA per batch.
# Entry fields: `sid`, `run` and `env` (the envelope, what `redis_relay` reads).
# KEYS: server-wide stream, top, then the batch's session streams. ARGV: session maxlen,
# server-wide maxlen, top, then per event: its stream's KEYS index, id, sid, run, envelope.
# An id Redis already has ("equal or smaller": a batch written again after a cut) is skipped.
_WRITE_SCRIPT = """
local function xadd(key, maxlen, i)
  local r = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, ARGV[i + 1],
                        'sid', ARGV[i + 2], 'run', ARGV[i + 3], 'env', ARGV[i + 4])
  if type(r) == 'table' and r.err and not string.find(r.err, 'equal or smaller', 1, true) then
    return r
  end
  return nil
end
for i = 4, #ARGV, 5 do
  local err = xadd(KEYS[tonumber(ARGV[i])], ARGV[1], i) or xadd(KEYS[1], ARGV[2], i)
  if err then return err end
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""


class RedisEventWriter:
    """Copies released events into Redis Streams; see the module docstring.

    `start_seq`: the broker's first seq this run (everything below was released by an earlier
    process and is in `history`). `replay_size` caps each session stream; `global_maxlen` the
    server-wide one (default: 10 x replay size, at least 10,000). `retry_s`: the pause
    between reconnection attempts; `ping_s`: how often an idle writer checks that Redis is
    still there (readiness). `on_state(connected)` is called on changes.
    """

    def __init__(
        self,
        url: str,
        *,
        epoch: str,
        start_seq: int,
        replay_size: int,
        history: HistorySource | None,
        keys: RedisKeys | None = None,
        global_maxlen: int | None = None,
        backlog_limit: int = 100_000,
        retry_s: float = 0.5,
        ping_s: float = 1.0,
        socket_timeout: float = 5.0,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.url = url
        self.epoch = epoch
        self.keys = keys or RedisKeys()
        self.replay_size = replay_size
        self.global_maxlen = global_maxlen or max(10 * replay_size, 10_000)
        self.backlog_limit = backlog_limit
        self.retry_s = retry_s
        self.ping_s = ping_s
        self._history = history
        self._on_state = on_state
        self._redis: Any = async_client(url, socket_timeout)
        # EVALSHA, and EVAL when Redis does not know the script (restarted meanwhile)
        self._script = self._redis.register_script(_WRITE_SCRIPT)
        self._backlog: deque[Event] = deque()
        # Everything released up to this seq must be in Redis; what the backlog does not hold
        # of it is read back from the history.
        self._must_have = start_seq - 1
        self._written = 0  # the server-wide stream's last seq, as last seen
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever the backlog has just been written out
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSupervisor("redis-writer")
        self._closing = False
        self.connected = False
        self.written_count = 0

    # -- the broker's side (loop) -----------------------------------------------------------

    def offer(self, event: Event) -> None:
        """`Broker.on_release`: queue `event` for Redis. Never blocks."""
        backlog = self._backlog
        backlog.append(event)
        self._idle.clear()
        if len(backlog) > self.backlog_limit:
            # Redis has been away long: keep only the mark, the journal has the events.
            self._must_have = max(self._must_have, backlog[-1].seq)
            backlog.clear()
        if not self._wake.is_set():
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Events released but not yet confirmed in Redis (what the journal must supply
        after an overflow included, as a lower bound)."""
        extra = max(0, self._must_have - self._written) if not self._backlog else 0
        return len(self._backlog) + extra

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writing task on the running loop."""
        self._task = self._tasks.spawn(self._run(), name="redis-writer")

    async def aclose(self, flush_timeout: float = 2.0) -> None:
        """Write what is queued (for up to `flush_timeout` s), then stop."""
        self._closing = True
        task = self._task
        if task is not None:
            self._wake.set()
            if self._backlog and self.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(flush_timeout):
                        await self._idle.wait()
            # (a cancel turned into a connection error by redis-py: `_closing` ends the loop)
            await self._tasks.aclose(CLOSE_WAIT_S)
        await self._redis.aclose()

    # -- the task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._connect()
                self._set_connected(True)
                while True:
                    if not self._backlog:
                        self._wake.clear()
                        try:
                            async with asyncio.timeout(self.ping_s):
                                await self._wake.wait()
                        except TimeoutError:
                            await self._redis.ping()  # idle: is Redis still there?
                            continue
                    await self._write_backlog()
            except REDIS_DOWN as exc:
                self._set_connected(False, exc)
            except redis.exceptions.ResponseError as exc:
                # e.g. a read-only replica or OOM: as good as down for us; retry.
                self._set_connected(False, exc)
            await asyncio.sleep(self.retry_s)

    def _set_connected(self, value: bool, exc: BaseException | None = None) -> None:
        if value != self.connected:
            if value:
                log.info("events: writing to Redis at %s", self.url)
            else:
                log.warning("events: Redis unreachable (%s); local delivery goes on", exc)
            self.connected = value
            if self._on_state is not None:
                self._on_state(value)

    async def _connect(self) -> None:
        """Agree on the epoch, learn the last written seq, write what the journal must supply."""
        r, keys = self._redis, self.keys
        stored = await r.get(keys.epoch)
        if stored is not None and stored.decode() != self.epoch:
            log.warning("events: Redis held epoch %s, this history is %s: replacing its streams",
                        stored.decode(), self.epoch)  # fmt: skip
            doomed = [key async for key in r.scan_iter(match=keys.session_pattern, count=500)]
            await r.delete(keys.stream, keys.top, keys.since, *doomed)
            stored = None
        last = await r.xrevrange(keys.stream, count=1)
        self._written = entry_seq(last[0][0]) if last else 0
        if stored is None:
            await r.set(keys.epoch, self.epoch)
        first = await self._catch_up()
        if await r.get(keys.since) is None:
            # Redis held nothing of this history: it has everything from `first` on.
            if first is None:
                first = self._backlog[0].seq if self._backlog else self._must_have + 1
            await r.set(keys.since, max(0, min(first, self._written + 1) - 1))

    async def _catch_up(self) -> int | None:
        """Write the events in (`_written`, `_must_have`] from the journal, oldest first;
        returns the first seq written (None: nothing was missing)."""
        if self._history is None or self._written >= self._must_have:
            return None
        after, upto = self._written, self._must_have
        events = await anyio.to_thread.run_sync(
            read_history, self._history, after, upto, None, None
        )
        events = events[-self.global_maxlen :]  # the stream would trim the rest at once
        if not events:
            return None
        log.info("events: catching Redis up with %d events from the journal", len(events))
        for i in range(0, len(events), _BATCH):
            await self._write(events[i : i + _BATCH])
        return events[0].seq

    async def _write_backlog(self) -> None:
        backlog = self._backlog
        await self._catch_up()  # when the backlog overflowed while Redis was away
        while backlog:
            batch = [backlog[i] for i in range(min(_BATCH, len(backlog)))]
            await self._write(batch)
            for _ in batch:
                backlog.popleft()
        self._idle.set()

    async def _write(self, events: list[Event]) -> None:
        """One round trip (`_WRITE_SCRIPT`); entries Redis already has are skipped."""
        fresh = [e for e in events if e.seq > self._written]
        if not fresh:
            return
        keys = self.keys
        streams: dict[str, int] = {}  # session stream -> its index in KEYS (1-based, Lua)
        args: list[Any] = [self.replay_size, self.global_maxlen, fresh[-1].seq]
        for event in fresh:
            stream = keys.session_stream(event.session_id)
            index = streams.setdefault(stream, len(streams) + 3)
            args += (index, f"{event.seq}-0", event.session_id, event.run_id or "", event.raw)
        await self._script(keys=[keys.stream, keys.top, *streams], args=args)
        top = fresh[-1].seq
        self._written = top
        if top > self._must_have:
            self._must_have = top
        self.written_count += len(fresh)
