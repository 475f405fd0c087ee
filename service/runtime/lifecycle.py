"""One run's lifecycle on the loop: start, hand-off to a worker thread, finish, fallback.

`RunLifecycle` owns it: the scheduler makes one, handing it its own side (`LifecycleHost`:
sessions, live runs, commits, the cache budget), and its dispatcher starts
`RunLifecycle.run_one` for each run it takes from the queue:

1. hand it the session's cache (the run stays `queued` until it is planned: a cancel now
   makes it `cancelling`);
2. run `execution.execute_run` through the scheduler's executor: in a worker thread
   (`anyio.to_thread.run_sync` with the scheduler's `CapacityLimiter(workers)`), or on a
   `runwire worker` process through Redis (`service.runtime.remote`), whose reports call the
   same callbacks;
3. when the runner has planned, its observer calls back (`announce_start`, scheduled on the
   loop; the worker goes on computing, its `step.*` events held in the run's `StartGate`): the
   run becomes `running` with its effective mode, the session `running_partial`/`running_full`
   with its `active_run_id`, both in one commit, then `run.started` and
   `session.state_changed` are published, then the held step events;
4. `finish`: the final record and summary are committed, then the one terminal event is
   published, the session rests (`idle`, `error_*`, or its previous state after a cancel), and
   a failed partial run of a session with `auto_fallback` queues a full run at the front.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.to_thread

from pipeline.observer import RunInfo
from pipeline.rundir import RunDirectory
from service.contract.models import SubmitResult
from service.contract.records import RunRecord, RunSource, RunStatus, SessionState
from service.runtime.config import Config
from service.runtime.conversions import apply_outcome, run_started_data, terminal_event_data
from service.runtime.diskfull import STORAGE_FULL_RUN_ERROR, commit_outcome, retry_while_full
from service.runtime.execution import RunJob, RunOutcome, StartGate
from service.runtime.live import LiveRun, SessionEntry
from service.runtime.memory import CACHE_EVICTED
from service.runtime.remote import RunExecutor
from service.runtime.run_inputs import SOURCE_CHANGED, source_specs
from service.runtime.run_queue import RunQueue
from service.runtime.transitions import error_state, run_transition, running_state
from service.storage.io_thread import PendingEvent, snapshot
from service.storage.publisher import EventPublisher
from streaming import events as ev
from streaming.envelope import utc_now
from streaming.tasks import TaskSupervisor

__all__ = ["LifecycleHost", "RunLifecycle", "terminal_event"]

log = logging.getLogger("service.runtime.lifecycle")

FALLBACK_PARTIAL_FAILED = "partial_failed"
CACHE_LOST = "cache_lost"


class LifecycleHost(Protocol):
    """The scheduler's side of a run's lifecycle: what `RunLifecycle` reads and calls. Declared
    here so the lifecycle names no scheduler module (`service.runtime.scheduler.Scheduler` is
    the one implementation)."""

    config: Config
    sessions: dict[str, SessionEntry]
    live: dict[str, LiveRun]
    publisher: EventPublisher
    limiter: anyio.CapacityLimiter | None
    loop: asyncio.AbstractEventLoop | None
    stopping: bool
    durations: collections.deque[float]
    tasks: TaskSupervisor  # owns every task the lifecycle starts
    queue: RunQueue
    executor: RunExecutor

    async def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> None: ...

    async def commit(
        self,
        *,
        runs: tuple[RunRecord, ...] = (),
        sessions: tuple[SessionEntry, ...] = (),
        summaries: tuple[tuple[RunDirectory, RunRecord], ...] = (),
        events: list[PendingEvent] | None = None,
        close_run: str | None = None,
        on_done: Callable[[], None] | None = None,
        manifests: dict[str, dict[str, Any]] | None = None,
        after: Callable[[], None] | None = None,
        sync_after_events: bool = False,
    ) -> None: ...

    async def enqueue(
        self,
        entry: SessionEntry,
        *,
        mode: str,
        sources: dict[str, RunSource],
        changed_sources: tuple[str, ...] = (),
        run_name: str | None = None,
        request: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        retry_of: str | None = None,
        fallback_reason: str | None = None,
        recovered_from: str | None = None,
        force: bool = False,
        front: bool = False,
        announce: tuple[tuple[str, dict[str, Any]], ...] = (),
    ) -> SubmitResult: ...

    async def set_state(self, entry: SessionEntry, new: SessionState) -> bool: ...

    def state_events(self, entry: SessionEntry, old: SessionState) -> list[PendingEvent]: ...

    async def cancel_queued(self, entry: SessionEntry, live: LiveRun) -> None: ...

    def cache_used(self, entry: SessionEntry) -> None: ...

    async def enforce_cache_budget(self, holding: SessionEntry | None = None) -> int: ...

    async def release_memory(self) -> None: ...

    async def drop_cache(self, entry: SessionEntry) -> None: ...

    def computed(self, run_id: str) -> None: ...


class RunLifecycle:
    """One run from the queue to its terminal event (see the module docstring)."""

    def __init__(self, host: LifecycleHost) -> None:
        self._host = host

    async def run_one(self, run_id: str, sid: str) -> None:
        """Run one run taken from the queue, start to terminal event (the dispatcher's task)."""
        live = self._host.live.get(run_id)
        entry = self._host.sessions.get(sid)
        if live is None or entry is None:
            return
        record = live.record
        async with entry.lock:
            if entry.deleted or live.cancel.cancelled:
                # Cancelled between leaving the queue and starting: it never ran.
                await self._host.cancel_queued(entry, live)
                return
            # The run stays `queued` (in memory and in the store) until the runner has planned it:
            # `announce_start` then records `running` with its effective mode in ONE commit, so the
            # client-visible change and its commit coincide and the hot path pays one fsync, not two.
            live.started_utc = utc_now()
            cache_lost, entry.cache_lost = entry.cache_lost, False
            if cache_lost and record.fallback_reason is None:
                record.fallback_reason = CACHE_LOST
            evicted, entry.cache_evicted = entry.cache_evicted, False
            if evicted and record.fallback_reason is None:
                # The cache is empty, so the run is full anyway; the reason says why.
                record.fallback_reason = CACHE_EVICTED
            entry.resting = entry.record.state
        # The directory exists since the run's acceptance (`Scheduler.enqueue`); its request file
        # may still be being written and synced: `finish` waits for that, the run need not.
        self._host.publisher.open_run(sid, run_id)
        live.gate = StartGate()
        job = RunJob(
            run_id=run_id,
            session_id=sid,
            spec=entry.spec,
            cache=entry.cache,
            sources=source_specs(live.sources),
            accepted=live.sources,
            mode=record.mode,
            changed_sources=live.changed_sources,
            cache_lost=cache_lost,
            cancel=live.cancel,
            run_dir=live.run_dir,
            publisher=self._host.publisher,
            on_started=partial(self._started_from_thread, entry, live),
            sinks=dict(entry.record.sinks),
            write_roots=tuple(self._host.config.write_roots),
            gate=live.gate,
            upcoming=self._upcoming(sid),
        )
        # Worker threads here, or a `runwire worker` through Redis (service.runtime.remote).
        outcome = await self._host.executor.execute(
            job,
            record,
            pipeline_text=entry.pipeline_text,
            expect_cache=entry.record.last_run is not None,
        )
        if outcome.status is RunStatus.INTERRUPTED:
            entry.cache_lost = True  # its worker died with the cache: the next run is full
        self._host.computed(run_id)
        await self.finish(entry, live, outcome)

    def _upcoming(self, sid: str) -> Mapping[str, RunSource] | None:
        """The sources of the session's next queued run (its frames are read ahead)."""
        for run_id in self._host.queue.waiting_for(sid):
            live = self._host.live.get(run_id)
            if live is not None and not live.cancel.cancelled:
                return live.sources
        return None

    def _started_from_thread(self, entry: SessionEntry, live: LiveRun, info: RunInfo) -> None:
        # Called by the run's worker thread, which goes on computing: the start is committed and
        # announced on the loop meanwhile (its step events wait in the gate), and `finish` waits
        # for that before it records the end.
        assert self._host.loop is not None
        args = (info.effective_mode, list(info.dirty_steps), list(info.skipped_steps))
        self._host.loop.call_soon_threadsafe(self._schedule_start, entry, live, args)

    def _schedule_start(
        self, entry: SessionEntry, live: LiveRun, args: tuple[str, list[str], list[str]]
    ) -> None:
        if self._host.tasks.closed:
            return  # shut down meanwhile: `finish` announces the start itself
        live.start_task = self._host.tasks.spawn(
            self.announce_start(entry, live, *args),
            name=f"run-start-{live.record.run_id}",
            handled=True,  # awaited by `finish`, which logs a failure
        )

    async def announce_start(
        self,
        entry: SessionEntry,
        live: LiveRun,
        effective_mode: str,
        dirty: list[str],
        skipped: list[str],
    ) -> None:
        """The runner has planned: commit `running` with the effective mode, then publish
        `run.started` and the session's `running_*` state."""
        record = live.record
        async with entry.lock:
            if record.status is RunStatus.QUEUED:  # `cancelling` if cancelled while it planned
                record.status = run_transition(record.status, RunStatus.RUNNING)
            record.started_utc = live.started_utc or utc_now()
            if not entry.deleted:
                entry.record.active_run_id = record.run_id
                if record.run_id in entry.record.queued_run_ids:
                    entry.record.queued_run_ids.remove(record.run_id)
            record.effective_mode = effective_mode
            record.dirty_steps = dirty
            record.skipped_steps = skipped
            old = entry.record.state
            if not entry.deleted:
                await self._host.set_state(entry, running_state(effective_mode))
            data = run_started_data(record)
            events = [(ev.RUN_STARTED, record.session_id, data, record.run_id)]
            # One I/O-thread hop: the commit, then `run.started` and the session's new state.
            await self._host.commit(
                runs=() if entry.deleted else (record,),
                sessions=(entry,),
                events=events + self._host.state_events(entry, old),
                after=live.gate.open if live.gate is not None else None,
            )
            live.announced = True

    async def finish(self, entry: SessionEntry, live: LiveRun, outcome: RunOutcome) -> None:
        """Record the outcome (commit first), publish the terminal event, rest the session."""
        sid = live.record.session_id
        await live.dir_ready()  # the request file is on disk before the summary
        if live.start_task is not None:
            try:
                await live.start_task
            except Exception:  # a store failure: announced again just below
                log.exception("run %s: cannot record its start", live.record.run_id)
        if not live.announced:
            # Planning failed before the first step (or the run crashed): announce the start
            # anyway so that every run's events read started -> terminal.
            mode = outcome.effective_mode or (
                "full" if live.record.mode != "partial" else "partial"
            )
            start = partial(
                self.announce_start, entry, live, mode, outcome.dirty_steps, outcome.skipped_steps
            )
            await retry_while_full(
                self._host, start
            )  # a full disk delays the start, never skips it
        # The final record is built on a copy and swapped in only once committed, so a client
        # reading the run never sees a final status the store does not have yet.
        record = snapshot(live.record)
        apply_outcome(record, outcome, finished_utc=utc_now())
        effective = record.effective_mode or "full"
        if outcome.status is not RunStatus.CANCELLED:
            self._host.durations.append(outcome.elapsed_s)
        fallback = (
            outcome.status is RunStatus.FAILED
            and effective == "partial"
            # Rerunning in full cannot help a run whose input file was replaced under it.
            and (outcome.error is None or outcome.error.code != SOURCE_CHANGED)
            and entry.record.auto_fallback
            and not entry.deleted
            and not self._host.stopping
        )
        async with entry.lock:
            # Under the lock: a cancel may have moved the live record to `cancelling` meanwhile.
            record.status = run_transition(live.record.status, outcome.status)
            old = entry.record.state
            entry.record.active_run_id = None
            entry.record.last_run = snapshot(record)
            if outcome.status is RunStatus.SUCCEEDED:
                new = SessionState.IDLE
            elif outcome.status is RunStatus.FAILED:
                new = error_state(effective)
            else:
                new = entry.resting
            if not entry.deleted:
                await self._host.set_state(entry, new)
            if entry.clear_cache_after_run:
                entry.cache.clear()
                entry.clear_cache_after_run = False
                outcome.cache_bytes = 0
            entry.cache_bytes = outcome.cache_bytes
            self._host.cache_used(entry)
            # Within the budget before the run is announced finished (this run's cache included).
            evicted = 0 if entry.deleted else await self._host.enforce_cache_budget(holding=entry)
            runs = () if entry.deleted else (record,)

            def commit_final() -> Awaitable[None]:
                # One I/O-thread hop: summary and commit, then the terminal event (its journal is
                # then closed) and the session's new state. Rebuilt from `record` on each attempt:
                # on a full disk `commit_outcome` turns the run into a STORAGE_FULL failure.
                manifest = None if record.error is STORAGE_FULL_RUN_ERROR else outcome.manifest
                return self._host.commit(
                    runs=runs,
                    sessions=(entry,),
                    summaries=((live.run_dir, record),),
                    manifests={record.run_id: manifest} if manifest is not None else None,
                    events=[terminal_event(record), *self._host.state_events(entry, old)],
                    close_run=record.run_id,
                    # Swapped in once committed and before the terminal event is out: a client that
                    # reads the run after `run.finished` sees its final record.
                    on_done=partial(setattr, live, "record", record),
                    sync_after_events=True,
                )

            await commit_outcome(
                self._host, entry, record, commit_final
            )  # a full disk: ends failed
            self._host.live.pop(record.run_id, None)
            if fallback:
                # Ahead of everything else in the queue, and before this run's slot is freed:
                # the full run continues this run's work.
                await self._host.enqueue(
                    entry,
                    mode="full",
                    sources=live.sources,
                    changed_sources=live.changed_sources,
                    run_name=record.run_name,
                    fallback_reason=FALLBACK_PARTIAL_FAILED,
                    recovered_from=record.run_id,
                    force=True,
                    front=True,
                )
        if entry.deleted:
            # Deleted while this run used the cache: now nothing does.
            await self._host.drop_cache(entry)
        elif evicted:
            await self._host.release_memory()
        log.info(
            "run %s of session %s: %s in %.3f s",
            record.run_id,
            sid,
            record.status,
            record.elapsed_s,
        )

    async def emit_terminal(self, record: RunRecord) -> None:
        """Publish the run's one terminal event: `run.cancelled` or `run.finished`."""
        await self._host.emit(*terminal_event(record))


def terminal_event(record: RunRecord) -> PendingEvent:
    """The run's one terminal event: `run.cancelled` or `run.finished`, with its data."""
    type, data = terminal_event_data(record)
    return (type, record.session_id, data, record.run_id)
