"""Prometheus metrics for `GET /v1/metrics`, in a registry of their own (one per scrape).

Every figure is read from live state at scrape time (`StateCollector`): the runtime's readiness
figures (sessions, active and queued runs, queue capacity, sessions in error, subscribers), the
store's runs (count by status, and the duration histogram of finished runs), and the broker's
seq counter (events published since start). Nothing is counted on the side, so nothing can
drift from the truth, and the histogram survives restarts because the store does.

The registry is built per scrape around that scrape's `Snapshot` (not prometheus-client's
global one), so that several apps in one process (tests) never collide, concurrent scrapes
share no state, and nothing else leaks into the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "RUN_DURATION_BUCKETS", "ServiceMetrics", "Snapshot", "StateCollector"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Run durations span milliseconds (partial reruns) to many minutes (full reductions).
RUN_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

# (metric name, help, key in the readiness figures)
_GAUGES = (
    ("runwire_sessions", "Sessions held by the service.", "session_count"),
    ("runwire_runs_active", "Runs executing now.", "active_run_count"),
    ("runwire_queue_depth", "Runs waiting in the queue.", "queued_run_count"),
    ("runwire_queue_capacity", "Runs the queue holds before answering 429.", "queue_capacity"),
    ("runwire_sessions_in_error", "Sessions in an error state.", "error_session_count"),
    ("runwire_subscribers", "Live event subscribers (SSE and WebSocket).", "subscriber_count"),
    ("runwire_cache_bytes", "Bytes held by the sessions' incremental caches.", "cache_bytes"),
    ("runwire_cache_budget_bytes", "Budget of the incremental caches.", "cache_budget_bytes"),
    ("runwire_cache_evictions", "Caches evicted for the budget since start.", "cache_evictions"),
)


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports: readiness figures, `(status, elapsed_s)` per stored run, and
    the number of events published since the service started."""

    readiness: dict[str, Any] = field(default_factory=dict)
    runs: Sequence[tuple[str, float | None]] = ()
    events_published: int = 0


def _histogram(name: str, doc: str, runs: Sequence[tuple[str, float | None]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["status"])
    by_status: dict[str, list[float]] = {}
    for status, elapsed in runs:
        if elapsed is not None:
            by_status.setdefault(status, []).append(elapsed)
    for status, values in sorted(by_status.items()):
        buckets = [
            (str(bound), float(sum(1 for v in values if v <= bound)))
            for bound in RUN_DURATION_BUCKETS
        ]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([status], buckets, sum_value=sum(values))
    return family


class StateCollector(Collector):
    """Yields every metric from `snapshot()`, called in the scraping thread."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for name, doc, key in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(snap.readiness.get(key) or 0))
        runs = GaugeMetricFamily("runwire_runs", "Stored runs by status.", labels=["status"])
        counts: dict[str, int] = {}
        for status, _ in snap.runs:
            counts[status] = counts.get(status, 0) + 1
        for status, count in sorted(counts.items()):
            runs.add_metric([status], float(count))
        yield runs
        yield _histogram(
            "runwire_run_duration_seconds", "Wall time of stored runs, by status.", snap.runs
        )
        yield CounterMetricFamily(
            "runwire_events_published",
            "Events published since the service started.",
            value=float(snap.events_published),
        )


class ServiceMetrics:
    """Renders the app's metrics: one registry holding a `StateCollector` per scrape.

    `load_runs()` returns `(status, elapsed_s)` of every stored run; it reads the store, so
    `render` runs in a worker thread, while the loop-owned figures (readiness, the broker's
    counter) are read on the loop by the caller and passed in.
    """

    def __init__(self, load_runs: Callable[[], Sequence[tuple[str, float | None]]]) -> None:
        self._load_runs = load_runs

    def render(self, readiness: dict[str, Any], events_published: int) -> bytes:
        """The Prometheus text exposition (blocking: call it from a worker thread)."""
        snapshot = Snapshot(readiness, self._load_runs(), events_published)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(lambda: snapshot))
        return generate_latest(registry)
