"""Every conversion between the pipeline's results and the contract's objects, in one place.

The shapes, one each:

- `pipeline.planning.Plan` (the planner's answer) -> `DryRunResult` (the contract's dry-run
  object): `dry_run_result`. The service's `POST .../dry-run` and `runwire run --dry-run`
  print the same object.
- `pipeline.runstate.RunResult` (the runner's answer) -> `RunOutcome` (the same in the
  contract's terms: `RunStatus`, `RunError`, `StepStateRecord`): `outcome_from_result`
  (defined beside `RunOutcome` in `service.runtime.execution`).
- `RunOutcome` -> the run's `RunRecord` (the contract's Run object, `summary.json`):
  `apply_outcome`; `local_run_record` is the whole chain for `runwire run`.
- `RunRecord` -> the data of `run.started` and of the terminal `run.finished`/`run.cancelled`
  event: `run_started_data`, `terminal_event_data`.

The service (`service.runtime.lifecycle`, `service.runtime.inspection`) and `runwire run`
(`service.cli.run`) both use these, so a local run's summary and events have the service's
shape by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from service.contract.models import DryRunResult
from service.contract.records import RunError, RunRecord, RunStatus
from service.runtime.execution import RunOutcome, outcome_from_result
from streaming import events as ev

if TYPE_CHECKING:
    from pipeline.planning import Plan
    from pipeline.runstate import RunResult

__all__ = [
    "apply_outcome",
    "dry_run_result",
    "local_run_record",
    "outcome_from_result",
    "run_started_data",
    "terminal_event_data",
]


def dry_run_result(plan: Plan, *, also_missing: list[str] | tuple[str, ...] = ()) -> DryRunResult:
    """The contract's dry-run object for `plan`. `also_missing`: required sources the caller
    knows are missing beyond the planner's (a session's declared refs); any missing source
    means the run cannot go ahead."""
    missing = list(plan.missing_required_sources)
    missing += [ref for ref in also_missing if ref not in missing]
    return DryRunResult(
        effective_mode=plan.effective_mode,
        dirty_steps=list(plan.dirty_steps),
        skipped_steps=list(plan.skipped_steps),
        reasons={k: list(v) for k, v in plan.reasons.items()},
        missing_required_sources=missing,
        warnings=list(plan.warnings),
        can_process=not missing,  # the planner says the same of its own missing sources
    )


def apply_outcome(record: RunRecord, outcome: RunOutcome, *, finished_utc: str) -> None:
    """Write how the run ended into its record (status aside: the caller moves it through the
    run state machine, `service.runtime.transitions`)."""
    record.effective_mode = outcome.effective_mode or record.effective_mode or "full"
    record.finished_utc = finished_utc
    record.elapsed_s = outcome.elapsed_s
    record.dirty_steps = outcome.dirty_steps
    record.skipped_steps = outcome.skipped_steps
    record.step_durations_s = outcome.step_durations_s
    record.step_states = outcome.step_states
    record.artifacts = outcome.artifacts
    record.error = outcome.error


def local_run_record(
    result: RunResult, run_id: str, *, session_id: str = "local", cancelled_by: str | None = None
) -> RunRecord:
    """The Run object of a run made without a server (`runwire run`): queued when it started,
    mode `full`; a cancelled run's error says who cancelled it."""
    outcome = outcome_from_result(result)
    outcome.elapsed_s = result.elapsed_s
    record = RunRecord(
        run_id=run_id,
        session_id=session_id,
        mode="full",
        status=outcome.status,
        queued_utc=result.state.started_utc or "",
        started_utc=result.state.started_utc,
    )
    apply_outcome(record, outcome, finished_utc=result.state.finished_utc or "")
    if record.error is None and record.status is RunStatus.CANCELLED:
        record.error = RunError(
            code="CANCELLED", message=f"cancelled by {cancelled_by or 'request'}"
        )
    return record


def run_started_data(record: RunRecord) -> dict[str, Any]:
    """`run.started`'s data, once the run is planned (`effective_mode`, dirty and skipped
    steps set on the record)."""
    data: dict[str, Any] = {
        "mode": record.mode,
        "effective_mode": record.effective_mode,
        "dirty_steps": record.dirty_steps,
        "skipped_steps": record.skipped_steps,
    }
    if record.fallback_reason is not None:
        data["fallback_reason"] = record.fallback_reason
    if record.sample is not None:
        data["sample"] = msgspec.to_builtins(record.sample)
    return data


def terminal_event_data(record: RunRecord) -> tuple[str, dict[str, Any]]:
    """The run's one terminal event type, `run.cancelled`, `run.interrupted` (its `runwire
    worker` died) or `run.finished`, and its data."""
    data: dict[str, Any] = {"status": record.status.value, "elapsed_s": record.elapsed_s}
    if record.status is RunStatus.CANCELLED:
        return ev.RUN_CANCELLED, data
    if record.status is RunStatus.INTERRUPTED:
        if record.error is not None:
            data["error"] = msgspec.to_builtins(record.error)
        return ev.RUN_INTERRUPTED, data
    data["dirty_steps"] = record.dirty_steps
    data["skipped_steps"] = record.skipped_steps
    if record.fallback_reason is not None:
        data["fallback_reason"] = record.fallback_reason
    if record.error is not None:
        data["error"] = msgspec.to_builtins(record.error)
    if record.sample is not None:
        data["sample"] = msgspec.to_builtins(record.sample)
    return ev.RUN_FINISHED, data
