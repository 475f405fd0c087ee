"""The broker backend as the service sees it (contract section 12, docs/scale-out.md).

On the API node with `--broker redis://...`, `start_event_writer` attaches a
`streaming.backends.RedisEventWriter` to the broker (`ServiceState.event_writer`); on a stream
node, `ServiceState.relay` is the `RedisRelay` feeding its broker. `broker_ok(state)` is the one
readiness check for both (and for anything else that needs Redis, e.g. the run queue):
False while a configured Redis is unreachable. `backend_figures(state)` are the role's
Prometheus gauges.
"""

from __future__ import annotations

from service.http.state import ServiceState
from service.runtime.config import Config
from streaming.backends import RedisEventWriter, RedisKeys
from streaming.broker import Broker
from streaming.replay import HistorySource

__all__ = ["backend_figures", "broker_ok", "start_event_writer"]


def start_event_writer(
    config: Config, broker: Broker, start_seq: int, history: HistorySource
) -> RedisEventWriter:
    """Copy every event `broker` releases into Redis (`config.broker`), from now on; the
    journal (`history`) supplies what Redis misses. Call on the loop, after `broker.start()`."""
    assert config.broker is not None
    writer = RedisEventWriter(
        config.broker,
        epoch=broker.epoch,
        start_seq=start_seq,
        replay_size=config.replay_size,
        history=history,
        keys=RedisKeys(config.redis_prefix),
    )
    broker.on_release = writer.offer
    writer.start()
    return writer


def broker_ok(state: ServiceState) -> bool:
    """False while a Redis backend is configured and unreachable (readiness: `unavailable`).
    Always True with the embedded in-memory broker."""
    return all(part is None or part.connected for part in (state.event_writer, state.relay))


async def backend_figures(state: ServiceState) -> list[tuple[str, str, float]]:
    """`(metric, help, value)` gauges of this node's backend: the Redis writer's backlog on
    the API node; subscribers and relay lag on a stream node; nothing in-memory."""
    out: list[tuple[str, str, float]] = []
    writer, relay = state.event_writer, state.relay
    if writer is not None or relay is not None:
        up = 1.0 if broker_ok(state) else 0.0
        out.append(("runwire_redis_up", "1 while Redis answers, else 0.", up))
    if writer is not None:
        out.append((
            "runwire_redis_writer_backlog",
            "Events released on this API node not yet written to Redis.",
            float(writer.backlog),
        ))  # fmt: skip
        out.append((
            "runwire_redis_events_written",
            "Events written to Redis since start.",
            float(writer.written_count),
        ))  # fmt: skip
    if relay is not None:
        broker = state.broker
        top = await relay.api_top()
        lag = max(0, top - broker.top_seq) if top is not None else 0
        out.append(("runwire_stream_subscribers", "Live subscribers on this stream node.",
                    float(broker.subscriber_count)))  # fmt: skip
        out.append(("runwire_relay_lag_events",
                    "Seqs this stream node is behind the API node's top (in Redis).",
                    float(lag)))  # fmt: skip
        out.append(("runwire_relay_top_seq", "Highest seq this stream node has delivered.",
                    float(broker.top_seq)))  # fmt: skip
    return out
