"""Running one run in a worker thread: the runner, an observer publishing its events, sinks.

`execute_run(job)` is what the runtime hands to `anyio.to_thread.run_sync`; everything in it is
synchronous and may block (numpy, h5py, file I/O). It never raises: whatever happens becomes a
`RunOutcome` the runtime records (an unexpected exception is a failed run with code INTERNAL and
a logged traceback, so a runtime bug cannot leave a run `running` forever).

Events: `step.*` events are emitted from this thread by `PublishingObserver` through the
thread-safe `EventPublisher`. The run's start is different: `on_run_started` calls
`job.on_started(info)`, which asks the runtime to commit the run as `running` with its effective
mode and publish `run.started`, and returns at once: the run computes while its start is
committed. Its `step.*` events wait in `job.gate` (a `StartGate`) until `run.started` is out, so
a client never hears of a step before the run's start, nor of a run state the store does not
have. The terminal event is published by the runtime after it has committed the final record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import msgspec

from pipeline.cancel import CancelToken
from pipeline.exitcodes import ExitCode
from pipeline.hdf5io import drop_read_ahead
from pipeline.incremental import IncrementalCache
from pipeline.loader import PipelineSpec
from pipeline.observer import RunInfo
from pipeline.packages.activation import ActivePackage
from pipeline.rundir import RunDirectory
from pipeline.runner import ProcessingRunner, RunResult
from pipeline.step import SourceSpec
from service.contract.records import RunError, RunSource, RunStatus, SourceRecord, StepStateRecord
from service.runtime.packages import record_packages, run_after_hooks
from service.runtime.run_inputs import SOURCE_CHANGED, changed_inputs, source_specs
from service.runtime.sinks import SinkError, write_sinks
from service.runtime.step_events import StepEventObserver

__all__ = [
    "PublishingObserver",
    "RunJob",
    "RunOutcome",
    "StartGate",
    "StepEventSink",
    "execute_run",
]

log = logging.getLogger("service.runtime.execution")


class StartGate:
    """Holds a run's step events until its start is announced, then lets them through in order.

    Bounded: past `limit` held events the emitting (worker) thread waits for the start rather
    than hold more. `open()` (the I/O thread, right after publishing `run.started`) emits what
    is held, under the lock, so an event the worker emits meanwhile comes after them.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._lock = threading.Lock()
        self._held: list[Callable[[], object]] | None = []
        self._opened = threading.Event()
        self._limit = limit

    def emit(self, emit: Callable[[], object]) -> None:
        """Call `emit` now if the gate is open; else hold it (or wait for the gate when full)."""
        with self._lock:
            if self._held is not None:
                if len(self._held) < self._limit:
                    self._held.append(emit)
                    return
                full = True
            else:
                full = False
        if full:
            self._opened.wait()
        emit()

    def open(self) -> None:
        """Emit the held events in order and let later ones through. Idempotent."""
        with self._lock:
            for emit in self._held or ():
                emit()
            self._held = None
        self._opened.set()


class StepEventSink(Protocol):
    """Where a run's `step.*` events go: the API node's `EventPublisher` for a local run, a
    `runwire worker`'s report stream for a remote one (`service.runtime.worker`)."""

    def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> object: ...


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
    publisher: StepEventSink
    on_started: Callable[[RunInfo], None]
    sinks: Mapping[str, SourceRecord] = field(default_factory=dict)
    write_roots: tuple[Path, ...] = ()
    # The sources with their file identities at acceptance (`service.runtime.run_inputs`).
    accepted: Mapping[str, RunSource] = field(default_factory=dict)
    gate: StartGate = field(default_factory=StartGate)  # step events wait for `run.started`
    # The sources of the session's next queued run: its new frames are read while this run
    # computes (`ProcessingRunner.read_ahead`; bounded, and used only for the very same files).
    upcoming: Mapping[str, RunSource] | None = None


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
    cache_bytes: int = 0  # the session cache's array bytes after the run
    manifest: dict[str, Any] | None = None  # of the artifacts, written with the summary


class PublishingObserver(StepEventObserver):
    """Turns runner notifications into `step.*` events of one run (see the module docstring)."""

    def __init__(self, job: RunJob) -> None:
        self._job = job

    def emit(self, type: str, data: dict[str, Any]) -> None:
        job = self._job
        job.gate.emit(partial(job.publisher.emit, type, job.session_id, data, job.run_id))

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


def _read_ahead(runner: ProcessingRunner, job: RunJob) -> None:
    """Start reading the next queued run's new files (those this run does not read)."""
    upcoming = job.upcoming
    if not upcoming:
        return
    refs = [
        ref
        for ref, source in upcoming.items()
        if (now := job.accepted.get(ref)) is None
        or (now.location, now.identity) != (source.location, source.identity)
    ]
    if refs:
        keep = [spec.location for spec in job.sources.values()]
        runner.read_ahead(source_specs(upcoming), owner=job.session_id, refs=refs, keep=keep)


def execute_run(job: RunJob) -> RunOutcome:
    """Run `job` to completion in the calling (worker) thread. Never raises."""
    observer = PublishingObserver(job)
    t0 = time.perf_counter()
    used: list[ActivePackage] = []
    try:
        if (changed := changed_inputs(job.accepted)) is not None:
            # Not the data this run was given: fail before reading anything.
            outcome = RunOutcome(
                status=RunStatus.FAILED, error=RunError(code=SOURCE_CHANGED, message=changed)
            )
            outcome.elapsed_s = time.perf_counter() - t0
            outcome.cache_bytes = job.cache.nbytes()
            job.run_dir.artifacts_dir.mkdir(parents=True, exist_ok=True)
            outcome.manifest = job.run_dir.manifest()
            drop_read_ahead(job.session_id, [spec.location for spec in job.sources.values()])
            return outcome
        job.run_dir.artifacts_dir.mkdir(parents=True, exist_ok=True)
        runner = ProcessingRunner(
            job.spec,
            observers=(observer,),
            cache=job.cache,
            artifacts_dir=job.run_dir.artifacts_dir,
        )
        _read_ahead(runner, job)
        result = runner.run(
            job.sources,
            mode=job.mode,
            changed_sources=job.changed_sources,
            cancel=job.cancel,
            cache_lost=job.cache_lost,
        )
        outcome = outcome_from_result(result)
        if (
            outcome.status is RunStatus.SUCCEEDED
            and (changed := changed_inputs(job.accepted)) is not None
        ):
            # Rewritten while the run read it: what it read is not (all) what it was given.
            outcome.status = RunStatus.FAILED
            outcome.error = RunError(code=SOURCE_CHANGED, message=changed)
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
        # Written with the summary (`service.storage.run_files`): one directory fsync for both.
        outcome.manifest = job.run_dir.manifest()
    except Exception as exc:  # a bug or an I/O failure outside any step
        log.exception("run %s of session %s crashed", job.run_id, job.session_id)
        outcome = RunOutcome(
            status=RunStatus.FAILED,
            error=RunError(
                code="INTERNAL", message="internal error", exception_type=type(exc).__name__
            ),
        )
    # Whatever this run's files had read ahead and the run did not take (it was cancelled,
    # failed first, or its steps were reused) is let go now.
    drop_read_ahead(job.session_id, [spec.location for spec in job.sources.values()])
    outcome.elapsed_s = time.perf_counter() - t0
    outcome.cache_bytes = job.cache.nbytes()
    if used:  # each package's on_after_run(ctx, summary), with the run's status and error
        run_after_hooks(used, {"session_id": job.session_id, "run_id": job.run_id,
                               "status": str(outcome.status.value),
                               "error": msgspec.to_builtins(outcome.error)})  # fmt: skip
    return outcome
