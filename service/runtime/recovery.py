"""Restart recovery (contract section 7, issue 5): rebuild the runtime's memory from the store.

On start, for every stored session: its pipeline is loaded again (it was valid when stored; if a
step it names is gone now, the session is kept in the store but not served, and the log says
why); runs that were `running` or `cancelling` become `interrupted` (summary written,
`run.interrupted` published); `queued` runs are queued again in their original order, each with the sources it was accepted
with (stored with the run, `service.runtime.run_inputs`); and since
in-memory caches did not survive, the next run of every session that has run before is full with
`fallback_reason: "cache_lost"`.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from pipeline.atomic import write_json_atomic
from pipeline.errors import PipelineError
from pipeline.rundir import RunDirectory
from service.contract.errors import ServiceError
from service.contract.records import (
    FINAL_RUN_STATUSES,
    RunError,
    RunRecord,
    RunStatus,
    SessionRecord,
    SessionState,
)
from service.runtime.run_inputs import as_run_sources
from service.runtime.scheduler import LiveRun, Scheduler, SessionEntry, changed_sources_of
from service.runtime.transitions import error_state, is_running, run_transition
from service.runtime.validation import parse_pipeline
from service.storage.io_thread import DurableIO
from service.storage.retained import RetainedRuns
from streaming import events as ev
from streaming.envelope import utc_now

__all__ = ["recover"]

log = logging.getLogger("service.runtime.recovery")

FINAL_STATUS_VALUES = sorted(status.value for status in FINAL_RUN_STATUSES)

# How long an Idempotency-Key keeps returning its first run. Long enough for any client retry
# loop; without a limit the keys table would grow with every keyed submit forever.
IDEMPOTENCY_KEY_TTL = timedelta(days=7)

INTERRUPTED_ERROR = RunError(
    code="INTERRUPTED", message="the service stopped while this run was active"
)


def _resting_state(record: SessionRecord) -> SessionState:
    last = record.last_run
    if last is not None and last.status is RunStatus.FAILED:
        return error_state(last.effective_mode or "full")
    return SessionState.IDLE


async def recover(scheduler: Scheduler) -> None:
    """Load sessions, interrupt runs that were active, re-queue waiting runs."""
    store = scheduler.store
    cutoff = (
        (datetime.now(UTC) - IDEMPOTENCY_KEY_TTL)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )
    await scheduler.io(store.prune_idempotency, cutoff)
    rows = await scheduler.io(store.load_sessions)
    for record, text in rows:
        try:
            spec = await scheduler.io(parse_pipeline, text)
        except (ServiceError, PipelineError) as exc:
            log.error(
                "session %s not restored: its pipeline no longer loads: %s", record.session_id, exc
            )
            continue
        entry = SessionEntry(record, spec, text, cache_lost=record.last_run is not None)
        record.active_run_id = None
        record.queued_run_ids = []
        scheduler.sessions[record.session_id] = entry

    active = await scheduler.io(
        store.list_runs, None, [RunStatus.RUNNING.value, RunStatus.CANCELLING.value]
    )
    for run in active:
        await _interrupt(scheduler, run)
    if scheduler.remote is not None:  # a `runwire worker` may still compute some of them
        scheduler.remote.abandon([run.run_id for run in active])

    queued = await scheduler.io(store.list_runs, None, [RunStatus.QUEUED.value])
    for run in queued:
        owner = scheduler.sessions.get(run.session_id)
        if owner is None:
            continue
        scheduler.queue.push(run.run_id, run.session_id, force=True)
        request = await scheduler.io(store.get_run_request, run.run_id)
        sources = await scheduler.io(store.get_run_sources, run.run_id)
        if sources is None:  # not possible after migration 5; kept for a hand-edited store
            sources = as_run_sources(owner.record.sources)
        live = LiveRun(
            run,
            changed_sources_of(request),
            scheduler.run_dir(run.session_id, run.run_id),
            sources,
        )
        if isinstance(request, dict):
            # The directory is written after the commit that queued the run: a crash in between
            # leaves it missing, so it is completed now from the store's copy of the request.
            await scheduler.io(_complete_run_dir, live, request)
        scheduler.live[run.run_id] = live
        owner.record.queued_run_ids.append(run.run_id)

    orphans, repaired = await scheduler.io(_close_run_dirs, scheduler)
    finished = await scheduler.io(store.list_runs, None, FINAL_STATUS_VALUES)
    repaired += await scheduler.io(_repair_manifests, scheduler, finished)
    if repaired:
        log.warning(
            "rewrote the final files of %d finished run(s) from the store (lost to a power loss?)",
            repaired,
        )
    unended = await scheduler.io(_runs_without_terminal_event, scheduler, finished)
    for run in unended:
        await _emit_missing_terminal(scheduler, run)
    entries = tuple(scheduler.sessions.values())
    before = [entry.record.state for entry in entries]
    for entry in entries:
        # A session stored as running has no active run now; it rests in the state its last run
        # left it in. (Assigned directly: recovery rebuilds state, it is not a transition.)
        if is_running(entry.record.state):
            entry.record.state = _resting_state(entry.record)
            entry.record.updated_utc = utc_now()
    # One commit for every session (its queue ids and state rebuilt), then the announcements.
    await scheduler.commit(sessions=entries)
    for entry, old in zip(entries, before, strict=True):
        await scheduler.announce_state(entry, old)
    if rows or active or queued:
        log.info(
            "recovered %d sessions, interrupted %d runs, re-queued %d runs, closed %d orphans,"
            " ended %d runs whose terminal event was lost",
            len(scheduler.sessions),
            len(active),
            len(queued),
            orphans,
            len(unended),
        )


def _runs_without_terminal_event(scheduler: Scheduler, runs: list[RunRecord]) -> list[RunRecord]:
    """Final runs whose journal does not end with a terminal event.

    A run's final status is committed before its terminal event is written (a client must never
    be told of an outcome the store does not have); a crash between the two leaves the run final
    with no `run.finished` / `run.cancelled` / `run.interrupted` in its `events.ndjson`. Only
    each journal's tail is read, so this stays cheap as the history grows.
    """
    return [
        run
        for run in runs
        if _last_event_type(scheduler.publisher.run_journal(run.session_id, run.run_id))
        not in ev.TERMINAL_RUN_TYPES
    ]


def _last_event_type(path: Path, tail: int = 65536) -> str | None:
    try:
        with open(path, "rb") as journal:
            journal.seek(0, os.SEEK_END)
            size = journal.tell()
            journal.seek(max(0, size - tail))
            data = journal.read()
    except FileNotFoundError:
        return None
    # The part after the last newline is a torn write (or empty): not an event.
    lines = [line for line in data.split(b"\n")[:-1] if line.strip()]
    if not lines:
        return None
    try:
        kind = msgspec.json.decode(lines[-1], type=_TypeOnly).type
    except msgspec.MsgspecError:
        return None
    return kind


class _TypeOnly(msgspec.Struct):
    type: str


async def _emit_missing_terminal(scheduler: Scheduler, run: RunRecord) -> None:
    if run.status is RunStatus.INTERRUPTED:
        data = {"status": RunStatus.INTERRUPTED.value, "elapsed_s": run.elapsed_s}
        await scheduler.emit(ev.RUN_INTERRUPTED, run.session_id, data, run.run_id)
    else:
        await scheduler.lifecycle.emit_terminal(run)


def _close_run_dirs(scheduler: Scheduler) -> tuple[int, int]:
    """Run directories without a readable `summary.json`: returns (closed, repaired).

    - **Repaired**: the store has the run's final record. A run's final files are not fsynced
      (`service.storage.run_files`), so a power loss can take them after the commit that made
      the run final; they are rewritten from the store (summary from the record, manifest from
      the one saved with it).
    - **Closed**: no stored run owns the directory, and it will never finish. The store commit
      comes before the run directory is written, so a crash cannot normally leave one behind;
      but a directory from an older version, or one whose store row was lost with a restored
      backup, would otherwise be listed as `queued` forever. It is kept (it is evidence) and
      marked `interrupted`.
    """
    closed = repaired = 0
    for session_id, run_id in RetainedRuns(scheduler.config.runs_dir).unfinished():
        if run_id in scheduler.live:
            continue
        stored = scheduler.store.get_run(run_id)
        if stored is not None:
            if stored.status in FINAL_RUN_STATUSES:
                run_dir = scheduler.run_dir(session_id, run_id)
                _rewrite_manifest(scheduler, run_dir)
                run_dir.write_summary(msgspec.to_builtins(stored))
                repaired += 1
            continue
        run_dir = scheduler.run_dir(session_id, run_id)
        request = {}
        if run_dir.request_path.exists():
            try:
                request = json.loads(run_dir.request_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                request = {}
        now = utc_now()
        record = RunRecord(
            run_id=run_id,
            session_id=session_id,
            run_name=request.get("run_name") if isinstance(request, dict) else None,
            status=RunStatus.INTERRUPTED,
            queued_utc=str(request.get("queued_utc", now)) if isinstance(request, dict) else now,
            finished_utc=now,
            error=INTERRUPTED_ERROR,
        )
        run_dir.write_summary(msgspec.to_builtins(record))
        for stale in run_dir.path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        closed += 1
    return closed, repaired


def _manifest_lost(run_dir: RunDirectory) -> bool:
    try:
        return run_dir.manifest_path.stat().st_size == 0
    except FileNotFoundError:
        return True


def _rewrite_manifest(scheduler: Scheduler, run_dir: RunDirectory) -> None:
    """Write a lost `manifest.json` again: the copy the store saved with the final record,
    else one computed from `artifacts/` (a run stored before schema v6)."""
    if not _manifest_lost(run_dir):
        return
    manifest = scheduler.store.get_run_manifest(run_dir.run_id)
    if manifest is None:
        run_dir.write_manifest()
    else:
        write_json_atomic(run_dir.manifest_path, manifest)


def _repair_manifests(scheduler: Scheduler, finished: list[RunRecord]) -> int:
    """Finished runs whose `manifest.json` a power loss took (missing or empty) while their
    summary survived: rewritten from the store. One `stat` per finished run."""
    repaired = 0
    for run in finished:
        run_dir = scheduler.run_dir(run.session_id, run.run_id)
        if not _manifest_lost(run_dir) or not run_dir.summary_path.exists():
            continue  # intact, or no directory at all (nothing to repair into)
        manifest = scheduler.store.get_run_manifest(run.run_id)
        if manifest is None:
            continue  # stored before schema v6 (fsynced then): an older layout, left as it is
        write_json_atomic(run_dir.manifest_path, manifest)
        repaired += 1
    return repaired


def _complete_run_dir(live: LiveRun, request: dict[str, object]) -> None:
    if not live.run_dir.request_path.exists():
        DurableIO.write_new_run_dir(live.run_dir, live.record, request, live.sources)


async def _interrupt(scheduler: Scheduler, run: RunRecord) -> None:
    run.status = run_transition(run.status, RunStatus.INTERRUPTED)
    run.finished_utc = utc_now()
    if run.error is None:
        run.error = INTERRUPTED_ERROR
    entry = scheduler.sessions.get(run.session_id)
    run_dir = scheduler.run_dir(run.session_id, run.run_id)
    await scheduler.io(run_dir.create)
    if entry is not None:
        entry.record.last_run = run
        entry.cache_lost = True
    await scheduler.commit(runs=(run,), summaries=((run_dir, run),))
    data = {"status": RunStatus.INTERRUPTED.value, "elapsed_s": run.elapsed_s}
    await scheduler.emit(ev.RUN_INTERRUPTED, run.session_id, data, run.run_id)
