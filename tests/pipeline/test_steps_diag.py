"""Diagnostic steps: sleep with progress and cancellation, failure modes, progress bursts."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest

import pipeline.steps  # noqa: F401
from pipeline.cancel import CancelToken
from pipeline.errors import CancelledError, StepFailure
from pipeline.step import REGISTRY, StepContext, StepResult


def make(name: str, params: dict[str, Any] | None = None) -> Any:
    cls = REGISTRY[name]
    return cls("d", msgspec.convert(params or {}, cls.Params))


def recording_context(
    cancel: CancelToken | None = None,
) -> tuple[StepContext, list[tuple[float | None, str | None]]]:
    events: list[tuple[float | None, str | None]] = []
    ctx = StepContext(
        "d", {}, cancel=cancel or CancelToken(), report=lambda f, m: events.append((f, m))
    )
    return ctx, events


def test_sleep_emits_one_progress_event_per_tick() -> None:
    ctx, events = recording_context()
    assert make("diag.sleep", {"seconds": 0.0, "ticks": 4}).compute({}, ctx) == {"done": True}
    assert [f for f, _ in events] == [0.25, 0.5, 0.75, 1.0]
    assert events[0][1] == "tick 1/4"


def test_sleep_wakes_at_once_when_cancelled() -> None:
    cancel = CancelToken()
    ctx, events = recording_context(cancel)
    step = make("diag.sleep", {"seconds": 3600.0, "ticks": 2})  # an hour, uncancelled
    errors: list[BaseException] = []

    def target() -> None:
        try:
            step.compute({}, ctx)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    cancel.cancel()
    thread.join(timeout=10.0)
    assert not thread.is_alive()
    assert isinstance(errors[0], CancelledError)
    assert "cancelled after 0/2 ticks" in str(errors[0])
    assert events == []


def test_sleep_cancelled_mid_run_reports_completed_ticks() -> None:
    cancel = CancelToken()
    events: list[float | None] = []

    def report(fraction: float | None, message: str | None) -> None:
        events.append(fraction)
        if len(events) == 1:
            cancel.cancel()

    ctx = StepContext("d", {}, cancel=cancel, report=report)
    with pytest.raises(CancelledError, match="cancelled after 1/3 ticks"):
        make("diag.sleep", {"seconds": 0.0, "ticks": 3}).compute({}, ctx)
    assert events == [pytest.approx(1 / 3)]


def test_fail_raises_or_returns() -> None:
    ctx, _ = recording_context()
    with pytest.raises(StepFailure, match="boom"):
        make("diag.fail", {"message": "boom"}).compute({}, ctx)
    result = make("diag.fail", {"message": "soft", "mode": "return"}).compute({}, ctx)
    assert isinstance(result, StepResult) and not result.success and result.message == "soft"
    with pytest.raises(msgspec.ValidationError):
        make("diag.fail", {"mode": "explode"})


def test_emit_sends_count_events_with_payload() -> None:
    ctx, events = recording_context()
    make("diag.emit", {"count": 2050, "payload_bytes": 16}).compute({}, ctx)
    assert len(events) == 2050
    assert events[-1] == (1.0, "x" * 16)
    ctx, events = recording_context()
    make("diag.emit", {"count": 3}).compute({}, ctx)
    assert events[0][1] is None


def test_emit_stops_when_cancelled() -> None:
    cancel = CancelToken()
    cancel.cancel()
    ctx, events = recording_context(cancel)
    with pytest.raises(CancelledError):
        make("diag.emit", {"count": 5000}).compute({}, ctx)
    assert len(events) == 1024  # checked every 1024 events, not per event


def test_noop_passes_its_input_through() -> None:
    ctx, _ = recording_context()
    assert make("diag.noop").compute({"value": 3}, ctx) == {"value": 3}
    assert make("diag.noop").compute({}, ctx) == {"value": None}
