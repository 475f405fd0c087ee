"""Broker backends (contract section 12): where events go besides the local fan-out.

The channels (`streaming.channels`) always talk to a `streaming.broker.Broker`; the backend is
chosen at start-up and never seen by them:

- in-memory (the default): a plain `Broker`, nothing else;
- Redis Streams, publishing side (`RedisEventWriter`): attached to the API node's `Broker`
  through `Broker.on_release`, it copies every released event into Redis in seq order;
- Redis Streams, receiving side (`RelayBroker` fed by `RedisRelay`): a stream node's broker,
  whose events (seqs as given) come from Redis instead of being stamped locally.
"""

from __future__ import annotations

from streaming.backends.redis_keys import RedisKeys
from streaming.backends.redis_relay import RedisHistory, RedisRelay, RelayBroker, open_relay
from streaming.backends.redis_writer import RedisEventWriter

__all__ = [
    "RedisEventWriter",
    "RedisHistory",
    "RedisKeys",
    "RedisRelay",
    "RelayBroker",
    "open_relay",
]
