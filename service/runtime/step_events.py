"""Runner notifications turned into the contract's `step.*` event data, in one place.

Both the service (`service.runtime.execution`) and `runwire run` (`service.cli.run`) publish the same
events; they differ only in where an event goes, which subclasses say in `emit`.
"""

from __future__ import annotations

from typing import Any

from pipeline.observer import RunObserver
from streaming import events as ev


class StepEventObserver(RunObserver):
    """`step.started`, `step.progress` and `step.finished` with the contract's data fields."""

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Deliver one event of this run (called from the thread running the step)."""
        raise NotImplementedError

    def on_step_started(self, step_id: str) -> None:
        self.emit(ev.STEP_STARTED, {"step": step_id})

    def on_step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        data: dict[str, Any] = {"step": step_id}
        if fraction is not None:
            data["fraction"] = fraction
        if message is not None:
            data["message"] = message
        self.emit(ev.STEP_PROGRESS, data)

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        data: dict[str, Any] = {"step": step_id, "status": status, "duration_s": duration_s}
        if error is not None:
            data["error"] = error
        self.emit(ev.STEP_FINISHED, data)
