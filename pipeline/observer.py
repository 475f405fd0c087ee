"""Observers: run- and step-level notifications, shared by any number of listeners.

The runner calls observers synchronously from the thread running the step (a worker thread of a
parallel group included), so an observer must be quick and thread-safe; the service's observer
only stamps an event and hands it to the broker. An observer that raises is logged (once per
observer and method, to keep a broken observer from flooding the log) and never breaks the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runstate import RunResult

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class RunInfo:
    """What is known when a run starts: the pipeline and the plan's outcome."""

    pipeline_name: str
    pipeline_version: str
    mode: str  # as requested: auto | partial | full
    effective_mode: str  # partial | full
    dirty_steps: tuple[str, ...] = ()
    skipped_steps: tuple[str, ...] = ()
    reasons: dict[str, list[str]] = field(default_factory=dict)


class RunObserver:
    """Base class: every method is a no-op. Override the ones you need."""

    def on_run_started(self, info: RunInfo) -> None:
        """The run was planned and is about to execute its first step. Also called when
        planning found a missing required source: `on_run_finished` then follows at once with
        the failure (`MISSING_REQUIREMENT`). Not called for a dry run."""

    def on_step_started(self, step_id: str) -> None:
        """A step (leaf, nested pipeline or group; full dotted id) starts executing. A step
        skipped (its cached result reused, or an optional source absent) never starts: it gets
        `on_step_finished` with status `skipped` only. A nested pipeline or group starts just
        before its first child that runs; one whose children are all skipped never starts."""

    def on_step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        """A running step reported progress (`ctx.progress()`)."""

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        """A step ended: status `succeeded`, `skipped` or `failed` (cancelled steps: `failed`
        with error `cancelled`)."""

    def on_run_finished(self, result: RunResult) -> None:
        """The run ended (succeeded, failed or cancelled); `result` is final."""


class ObserverFanout(RunObserver):
    """Calls every observer in turn; one that raises is logged and skipped for that call."""

    __slots__ = ("_lock", "_observers", "_reported")

    def __init__(self, observers: Sequence[RunObserver]) -> None:
        self._observers = tuple(observers)
        self._reported: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._observers)

    def _failed(self, observer: RunObserver, method: str, exc: BaseException) -> None:
        key = (id(observer), method)
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        if first:
            log.error("observer %r failed in %s", observer, method, exc_info=exc)

    def _call(self, method: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception as exc:  # an observer must never break the run
                self._failed(observer, method, exc)

    def on_run_started(self, info: RunInfo) -> None:
        self._call("on_run_started", info)

    def on_step_started(self, step_id: str) -> None:
        self._call("on_step_started", step_id)

    def on_step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        self._call("on_step_progress", step_id, fraction, message)

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        self._call("on_step_finished", step_id, status, duration_s, error)

    def on_run_finished(self, result: RunResult) -> None:
        self._call("on_run_finished", result)


class RecordingObserver(RunObserver):
    """Keeps every notification as a tuple `(kind, ...)`; for tests and benchmarks.

    Unbounded by design (it holds one run's notifications for inspection); do not attach it to
    a long-lived runner.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.finished = threading.Event()

    def on_run_started(self, info: RunInfo) -> None:
        self.events.append(("run_started", info))

    def on_step_started(self, step_id: str) -> None:
        self.events.append(("step_started", step_id))

    def on_step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        self.events.append(("step_progress", step_id, fraction, message))

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        self.events.append(("step_finished", step_id, status, duration_s, error))

    def on_run_finished(self, result: RunResult) -> None:
        self.events.append(("run_finished", result))
        self.finished.set()

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]
