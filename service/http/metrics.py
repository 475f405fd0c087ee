"""Prometheus metrics for `GET /v1/metrics`, in a registry of their own (one per scrape).

Loop-owned figures are read at scrape time: the runtime's readiness figures (sessions, active
and queued runs, queue capacity, sessions in error, subscribers) and the broker's seq counter
(events published since start). The run figures (runs by status, and the duration histogram of
finished runs) are kept in memory by `RunFigures` and brought up to date at each scrape with
one bounded query: the runs stored since the previous scrape plus the runs it saw unfinished
(at most the queue's capacity and the running ones). A final run never changes again, so it
is counted once; a scrape never reads the whole run history, however long it grows. The first
scrape after a start reads the stored runs once, so the figures survive restarts as the store
does.

The registry is built per scrape around that scrape's `Snapshot` (not prometheus-client's
global one), so that several apps in one process (tests) never collide, concurrent scrapes
share no state, and nothing else leaks into the output.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
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

__all__ = [
    "CONTENT_TYPE",
    "RUN_DURATION_BUCKETS",
    "RunFigures",
    "ServiceMetrics",
    "Snapshot",
    "StateCollector",
    "render_gauges",
]

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
    (
        "runwire_task_failures",
        "Background tasks of the runtime that failed unhandled since "
        "start (each logged with its traceback).",
        "task_failures",
    ),
)


FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})

# `(queue_order, status, elapsed_s)` of the runs after a queue position and at some positions.
LoadRuns = Callable[[int, Iterable[int]], list[tuple[int, str, float | None]]]


@dataclass
class DurationHistogram:
    """Cumulative-at-render histogram of run durations: one count per bucket plus +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(RUN_DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(RUN_DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [str(b) for b in RUN_DURATION_BUCKETS] + ["+Inf"]
        running, out = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports: readiness figures, stored runs by status, the duration
    histogram of finished runs by status, and the events published since the service started."""

    readiness: dict[str, Any] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    durations: dict[str, DurationHistogram] = field(default_factory=dict)
    events_published: int = 0


class RunFigures:
    """Runs by status and finished runs' durations, kept in memory (see the module docstring).

    Memory: one histogram per final status, and one entry per unfinished run (bounded by the
    queue's capacity plus the running runs). Thread-safe: scrapes may run concurrently.
    """

    def __init__(self, load: LoadRuns) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._after = 0  # every run at or before this queue position has been seen
        self._final: dict[str, int] = {}
        self._durations: dict[str, DurationHistogram] = {}
        self._pending: dict[int, str] = {}  # queue position -> status of unfinished runs

    def update(self) -> tuple[dict[str, int], dict[str, DurationHistogram]]:
        """Read what changed since the last call (blocking); the figures as of now."""
        with self._lock:
            for order, status, elapsed in self._load(self._after, list(self._pending)):
                self._after = max(self._after, order)
                if status not in FINAL_STATUSES:
                    self._pending[order] = status
                    continue
                self._pending.pop(order, None)
                self._final[status] = self._final.get(status, 0) + 1
                if elapsed is not None:
                    self._durations.setdefault(status, DurationHistogram()).observe(elapsed)
            counts = dict(self._final)
            for status in self._pending.values():
                counts[status] = counts.get(status, 0) + 1
            durations = {
                status: DurationHistogram(list(h.counts), h.total)
                for status, h in self._durations.items()
            }
        return counts, durations


class StateCollector(Collector):
    """Yields every metric from `snapshot()`, called in the scraping thread."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for name, doc, key in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(snap.readiness.get(key) or 0))
        runs = GaugeMetricFamily("runwire_runs", "Stored runs by status.", labels=["status"])
        for status, count in sorted(snap.runs_by_status.items()):
            runs.add_metric([status], float(count))
        yield runs
        durations = HistogramMetricFamily(
            "runwire_run_duration_seconds",
            "Wall time of stored runs, by status.",
            labels=["status"],
        )
        for status, histogram in sorted(snap.durations.items()):
            durations.add_metric([status], histogram.buckets(), sum_value=histogram.total)
        yield durations
        yield from _remote_families(snap.readiness)
        yield CounterMetricFamily(
            "runwire_events_published",
            "Events published since the service started.",
            value=float(snap.events_published),
        )


def _remote_families(figures: dict[str, Any]) -> Iterator[Metric]:
    """The run side on Redis (`serve --runs workers`): present only then."""
    if "remote_queue_depth" not in figures:
        return
    for name, doc, key in (
        ("runwire_remote_queue_depth", "Runs handed to Redis, not yet finished.",
         "remote_queue_depth"),
        ("runwire_remote_reports_lag", "Worker reports not yet consumed by the API node.",
         "remote_reports_lag"),
        ("runwire_workers_alive", "runwire worker processes with a live heartbeat.",
         "remote_workers_alive"),
        ("runwire_remote_runs_inflight", "Runs this node awaits from workers.",
         "remote_runs_inflight"),
        ("runwire_broker_available", "1 when Redis answered the last check.",
         "remote_broker_available"),
    ):  # fmt: skip
        yield GaugeMetricFamily(name, doc, value=float(figures.get(key) or 0))
    leases = GaugeMetricFamily(
        "runwire_worker_leases", "Session leases held, per worker.", labels=["worker"]
    )
    for worker, count in sorted(dict(figures.get("remote_leases") or {}).items()):
        leases.add_metric([worker], float(count))
    yield leases


class ServiceMetrics:
    """Renders the app's metrics: one registry holding a `StateCollector` per scrape.

    `load_runs(after, pending)` is `SessionStore.run_figures_after`; it reads the store, so
    `render` runs in a worker thread, while the loop-owned figures (readiness, the broker's
    counter) are read on the loop by the caller and passed in.
    """

    def __init__(self, load_runs: LoadRuns) -> None:
        self.runs = RunFigures(load_runs)

    def render(self, readiness: dict[str, Any], events_published: int) -> bytes:
        """The Prometheus text exposition (blocking: call it from a worker thread)."""
        counts, durations = self.runs.update()
        snapshot = Snapshot(readiness, counts, durations, events_published)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StateCollector(lambda: snapshot))
        return generate_latest(registry)


class _Gauges(Collector):
    def __init__(self, gauges: Iterable[tuple[str, str, float]]) -> None:
        self._gauges = list(gauges)

    def collect(self) -> Iterator[Metric]:
        for name, doc, value in self._gauges:
            yield GaugeMetricFamily(name, doc, value=value)


def render_gauges(gauges: Iterable[tuple[str, str, float]]) -> bytes:
    """`(name, help, value)` gauges in the text exposition (the broker backend's figures,
    `service.http.backend.backend_figures`; a stream node's whole `/metrics`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Gauges(gauges))
    return generate_latest(registry)
