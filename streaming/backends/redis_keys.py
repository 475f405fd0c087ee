"""What runwire keeps in Redis for events, and how an entry is spelled.

Keys (all under one configurable prefix, `runwire:` by default):

- `<prefix>events`: the server-wide stream, every event, capped (`MAXLEN ~`) at
  `global_maxlen` entries; a stream node's relay reads it.
- `<prefix>events:<sid>`: one stream per session, capped at the replay size; a resume on a
  stream node reads it when its memory no longer holds the events.
- `<prefix>epoch`: the epoch of the history in the streams; `<prefix>top`: the highest seq
  written; `<prefix>since`: every event above this seq was written (below it Redis may hold
  nothing: it was empty or of another epoch when the writer started).

An entry's id is `<seq>-0`, so XRANGE from a seq is a range query, and a repeated XADD of an
already-written event is refused by Redis (the writer relies on that for at-most-once).
Fields: `sid`, `run` (empty without a run) and `env`, the envelope bytes exactly as published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.exceptions
import redis.retry

__all__ = [
    "CLOSE_WAIT_S",
    "DEFAULT_PREFIX",
    "REDIS_DOWN",
    "REDIS_FAILED",
    "RedisKeys",
    "async_client",
    "entry_seq",
    "sync_client",
]

DEFAULT_PREFIX = "runwire:"

# Errors meaning "Redis is not reachable or not ready" (connection refused or reset, a timeout,
# `LOADING` while it replays its append-only file): retried, never fatal.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OSError,
)
# Seconds `aclose` waits for a cancelled relay or writer task to end.
CLOSE_WAIT_S = 5.0
# ... and errors Redis answers with (read-only replica, out of memory): as good as down.
REDIS_FAILED: tuple[type[BaseException], ...] = (*REDIS_DOWN, redis.exceptions.ResponseError)


@dataclass(frozen=True)
class RedisKeys:
    """The event keys under `prefix` (see the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def stream(self) -> str:
        return f"{self.prefix}events"

    def session_stream(self, session_id: str) -> str:
        return f"{self.prefix}events:{session_id}"

    @property
    def session_pattern(self) -> str:
        return f"{self.prefix}events:*"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def top(self) -> str:
        return f"{self.prefix}top"

    @property
    def since(self) -> str:
        return f"{self.prefix}since"


def entry_seq(entry_id: Any) -> int:
    """The seq of a stream entry id `<seq>-0`."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


# redis-py retries a failed command itself by default, with back-off of seconds: the writer
# and the relay retry on their own terms (and must notice an outage at once), so no retries.
def async_client(url: str, timeout: float, *, read_timeout: float | None = None) -> Any:
    """A `redis.asyncio.Redis` for `url` with `timeout` on connect and reads, no retries."""
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=read_timeout or timeout,
        retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
    )  # fmt: skip


def sync_client(url: str, timeout: float) -> Any:
    """A blocking `redis.Redis` (thread-safe pool) for `url`, no retries."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )  # fmt: skip
