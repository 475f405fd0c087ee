"""Running one run in a worker thread: the runner, an observer publishing its events, sinks.

`execute_run(job)` is what the runtime hands to `anyio.to_thread.run_sync`; everything in it is
synchronous and may block (numpy, h5py, file I/O). It never raises: whatever happens becomes a
`RunOutcome` the runtime records (an unexpected exception is a failed run with code INTERNAL and
a logged traceback, so a runtime bug cannot leave a run `running` forever).

Events: `step.*` events are emitted from this thread by `PublishingObserver` through the
thread-safe `EventPublisher`. The run's start is different: `on_run_started` calls
`job.on_started(info)`, which blocks this thread until the runtime has committed the run as
`running` with its effective mode and published `run.started` — so a client never hears of a run
state the store does not have. The terminal event is published by the runtime after it has
committed the final record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from pipeline.cancel import CancelToken
from pipeline.exitcodes import ExitCode
from pipeline.incremental import IncrementalCache
from pipeline.loader import PipelineSpec
from pipeline.observer import RunInfo
from pipeline.packages.activation import ActivePackage
from pipeline.rundir import RunDirectory
from pipeline.runner import ProcessingRunner, RunResult
from pipeline.step import SourceSpec

from .packages_runtime import record_packages, run_after_hooks
from .publisher import EventPublisher
from .records import RunError, RunStatus, SourceRecord, StepStateRecord
from .sinks import SinkError, write_sinks
from .step_events import StepEventObserver

__all__ = ["PublishingObserver", "RunJob", "RunOutcome", "execute_run"]

log = logging.getLogger("service.execution")


@dataclass
class RunJob:
    """Everything a worker thread needs to run one run; built by the runtime on the loop."""

    run_id: str
    session_id: str
    spec: PipelineSpec
    cache: IncrementalCache
    sources: dict[str, SourceSpec]
    mode: str
    changed_sources: tuple[str, ...]
    cache_lost: bool
    cancel: CancelToken
    run_dir: RunDirectory
    publisher: EventPublisher
    on_started: Callable[[RunInfo], None]
    sinks: Mapping[str, SourceRecord] = field(default_factory=dict)
    write_roots: tuple[Path, ...] = ()


@dataclass
class RunOutcome:
    """How a run ended, in the terms of `RunRecord`."""

    status: RunStatus
    effective_mode: str | None = None
    dirty_steps: list[str] = field(default_factory=list)
    skipped_steps: list[str] = field(default_factory=list)
    step_durations_s: dict[str, float] = field(default_factory=dict)
    step_states: dict[str, StepStateRecord] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    error: RunError | None = None
    elapsed_s: float = 0.0


class PublishingObserver(StepEventObserver):
    """Turns runner notifications into `step.*` events of one run (see the module docstring)."""

    def __init__(self, job: RunJob) -> None:
        self._job = job

    def emit(self, type: str, data: dict[str, Any]) -> None:
        self._job.publisher.emit(type, self._job.session_id, data, self._job.run_id)

    def on_run_started(self, info: RunInfo) -> None:
        self._job.on_started(info)


def _status_of(result: RunResult) -> RunStatus:
    if result.exit_code == ExitCode.OK:
        return RunStatus.SUCCEEDED
    if result.exit_code == ExitCode.CANCELLED:
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def outcome_from_result(result: RunResult) -> RunOutcome:
    """Translate the runner's `RunResult` into the service's terms."""
    states = {
        step_id: StepStateRecord(
            status=state.status, duration_s=state.duration_s, error=state.error
        )
        for step_id, state in result.step_states.items()
    }
    error = None
    if result.error is not None:
        error = RunError(
            code=result.error.code,
            message=result.error.message,
            failed_step=result.error.failed_step,
            exception_type=result.error.exception_type,
        )
    return RunOutcome(
        status=_status_of(result),
        effective_mode=result.effective_mode,
        dirty_steps=list(result.dirty_steps),
        skipped_steps=list(result.skipped_steps),
        step_durations_s=dict(result.step_durations_s),
        step_states=states,
        artifacts=list(result.artifacts),
        error=error,
    )


def execute_run(job: RunJob) -> RunOutcome:
    """Run `job` to completion in the calling (worker) thread. Never raises."""
    observer = PublishingObserver(job)
    t0 = time.perf_counter()
    used: list[ActivePackage] = []
    try:
        job.run_dir.artifacts_dir.mkdir(parents=True, exist_ok=True)
        runner = ProcessingRunner(
            job.spec,
            observers=(observer,),
            cache=job.cache,
            artifacts_dir=job.run_dir.artifacts_dir,
        )
        result = runner.run(
            job.sources,
            mode=job.mode,
            changed_sources=job.changed_sources,
            cancel=job.cancel,
            cache_lost=job.cache_lost,
        )
        outcome = outcome_from_result(result)
        if outcome.status is RunStatus.SUCCEEDED and job.sinks:
            try:
                write_sinks(
                    job.sinks,
                    artifacts_dir=job.run_dir.artifacts_dir,
                    artifacts=outcome.artifacts,
                    session_id=job.session_id,
                    run_id=job.run_id,
                    write_roots=job.write_roots,
                )
            except SinkError as exc:
                outcome.status = RunStatus.FAILED
                outcome.error = RunError(
                    code="SINK_FAILED", message=str(exc), failed_step=f"sinks.{exc.ref}"
                )
        used = record_packages(job.spec, job.run_dir)  # pipeline packages -> manifest.json
        job.run_dir.write_manifest()
    except Exception as exc:  # a bug or an I/O failure outside any step
        log.exception("run %s of session %s crashed", job.run_id, job.session_id)
        outcome = RunOutcome(
            status=RunStatus.FAILED,
            error=RunError(
                code="INTERNAL", message="internal error", exception_type=type(exc).__name__
            ),
        )
    outcome.elapsed_s = time.perf_counter() - t0
    if used:  # each package's on_after_run(ctx, summary), with the run's status and error
        run_after_hooks(used, {"session_id": job.session_id, "run_id": job.run_id,
                               "status": str(outcome.status.value),
                               "error": msgspec.to_builtins(outcome.error)})  # fmt: skip
    return outcome
