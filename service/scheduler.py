"""The scheduler: sessions and runs in memory, the queue, the dispatcher, submit and cancel.

One run's start-to-finish path lives in `service.lifecycle`.

Owns the in-memory sessions (`SessionEntry`: record, loaded pipeline, incremental cache) and the
live (queued or active) runs, and moves them through the state machines of `service.sessions`.

Thread boundaries, each crossed in one place:

- **I/O thread** (`service.durable.DurableIO`, as `Scheduler.io`/`.emit`/`.commit`): one dedicated
  thread runs every store call, every run-directory write and every event the loop emits. One thread means store commits and
  journal lines happen in the order the loop asked for them, and the loop never touches SQLite
  or a file.
- **Worker threads**: `anyio.to_thread.run_sync(execute_run, ..., limiter=CapacityLimiter(workers))`.
  The dispatcher hands out at most `workers` runs at a time, so a run marked `running` really is.

Durability: a state change is committed (I/O thread) before the event that announces it and
before the answer to the request that caused it. Records are snapshotted (deep-copied) on the
loop before they cross to the I/O thread, so the loop may keep mutating its copy.

Per-session `asyncio.Lock`: every change to a session's record (sources, queue ids, state,
last run) happens under it, so two requests on the same session cannot lose each other's update
across the awaits of a commit. Sessions never wait on each other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from pipeline.cancel import CancelToken
from pipeline.incremental import IncrementalCache
from pipeline.loader import PipelineSpec
from pipeline.rundir import RunDirectory, new_run_id
from pipeline.step import SourceSpec
from streaming import events as ev
from streaming.envelope import utc_now

from . import lifecycle
from .config import Config
from .durable import DurableIO, snapshot
from .errors import ServiceError
from .models import SubmitResult
from .publisher import EventSink
from .records import RunRecord, RunStatus, SessionRecord, SessionState
from .runqueue import QueueFull, RunQueue
from .sessions import run_transition, session_transition
from .store import SessionStore

__all__ = ["LiveRun", "Scheduler", "SessionEntry", "changed_sources_of", "snapshot"]

log = logging.getLogger("service.scheduler")

# After the shutdown grace, cancelled runs get this long to reach a step boundary; a step that
# ignores its cancel token is left behind (its run is `interrupted` at the next start).
CANCEL_WAIT_S = 5.0


@dataclass(eq=False)
class SessionEntry:
    """A session as the runtime holds it in memory."""

    record: SessionRecord
    spec: PipelineSpec
    pipeline_text: str
    cache: IncrementalCache = field(default_factory=IncrementalCache)
    cache_lost: bool = False  # the service restarted since this session last ran
    resting: SessionState = SessionState.IDLE  # state to return to after a cancelled run
    clear_cache_after_run: bool = False  # `reset full` arrived while a run used the cache
    deleted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def source_specs(self) -> dict[str, SourceSpec]:
        """The session's sources as the runner and the planner take them (copies)."""
        return {
            ref: SourceSpec(type=s.type, location=s.location, options=dict(s.options))
            for ref, s in self.record.sources.items()
        }


def changed_sources_of(request: Any) -> tuple[str, ...]:
    """`changed_sources` of a stored run request (`SessionStore.get_run_request`), or ()."""
    if isinstance(request, dict) and isinstance(request.get("changed_sources"), list):
        return tuple(str(ref) for ref in request["changed_sources"])
    return ()


@dataclass(eq=False)
class LiveRun:
    """A queued or active run."""

    record: RunRecord
    changed_sources: tuple[str, ...]
    run_dir: RunDirectory
    cancel: CancelToken = field(default_factory=CancelToken)
    started_utc: str | None = None  # taken from the queue (recorded once the run is announced)
    announced: bool = False  # run.started published
    dir_task: asyncio.Task[None] | None = None  # writing the run directory (see `enqueue`)

    async def dir_ready(self) -> None:
        """Wait until the run directory is written. A failure is logged, not raised: the run
        is committed, its directory is made again when it starts; only the request copy is lost."""
        if self.dir_task is None:
            return
        try:
            await self.dir_task
        except Exception:
            log.exception("run %s: cannot write its run directory", self.record.run_id)
        self.dir_task = None


class Scheduler:
    """Sessions, live runs, the queue and the dispatcher (see the module docstring)."""

    def __init__(self, config: Config, store: SessionStore, broker: EventSink) -> None:
        self.config = config
        self.store = store
        self.durable = DurableIO(store, broker, config.runs_dir)
        self.publisher = self.durable.publisher
        self.io = self.durable.io
        self.emit = self.durable.emit
        self.run_dir = self.durable.run_dir
        self.queue = RunQueue(config.queue_size)
        self.sessions: dict[str, SessionEntry] = {}
        self.live: dict[str, LiveRun] = {}
        self.accepting = False
        self.limiter: anyio.CapacityLimiter | None = None
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._active: dict[str, asyncio.Task[None]] = {}  # run_id -> its task
        self.stopping = False
        # Recent run durations, for a Retry-After that means something (bounded: last 32).
        self.durations: collections.deque[float] = collections.deque(maxlen=32)

    # -- lifecycle -----------------------------------------------------------------------------

    def start_dispatcher(self) -> None:
        """Start handing queued runs to workers (at most `config.workers` at once)."""
        self.limiter = anyio.CapacityLimiter(self.config.workers)
        self._wake = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="runwire-dispatcher")
        self.accepting = True
        self.wake()

    def wake(self) -> None:
        """Make the dispatcher look at the queue again."""
        if self._wake is not None:
            self._wake.set()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting and starting runs; let active runs finish for `grace` seconds, then
        cancel them. Queued runs stay queued in the store and run after the next start."""
        self.accepting = False
        self.stopping = True
        tasks = set(self._active.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            if pending:
                # Every run handed to a task, including one still being planned (not yet
                # `running`): its token is what its worker thread checks.
                for run_id in list(self._active):
                    live = self.live.get(run_id)
                    if live is not None:
                        live.cancel.cancel()
                await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
        # Queued runs stay queued; their directories must be complete before the loop goes.
        await asyncio.gather(*(live.dir_ready() for live in list(self.live.values())))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await self.durable.close()

    # -- submitting ----------------------------------------------------------------------------

    def retry_after(self) -> str:
        """Seconds until a queue slot is likely free: mean recent run time x queue / workers."""
        mean = sum(self.durations) / len(self.durations) if self.durations else 1.0
        estimate = mean * max(len(self.queue), 1) / max(self.config.workers, 1)
        return str(min(max(math.ceil(estimate), 1), 300))

    def queue_full_error(self) -> ServiceError:
        """QUEUE_FULL (429) with a `Retry-After` estimate."""
        return ServiceError(
            "QUEUE_FULL",
            f"the run queue is full ({self.queue.capacity} runs waiting); retry later",
            headers={"Retry-After": self.retry_after()},
        )

    def position(self, run_id: str) -> int:
        """Runs ahead of `run_id` in the queue (0 once it left the queue)."""
        try:
            return self.queue.position(run_id)
        except KeyError:
            return 0

    async def enqueue(
        self,
        entry: SessionEntry,
        *,
        mode: str,
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
    ) -> SubmitResult:
        """Create, commit and queue a run. Call with `entry.lock` held. Raises QUEUE_FULL.

        The session record is saved in the same commit, so a change the caller made to it just
        before (a new sample) is durable with the run; `announce` lists session events
        `(type, data)` to publish after that commit and before `run.queued`.

        The run is held in the queue (counted, not startable) until it is committed and its
        `run.queued` event is out, so `run.started` can never precede either.
        """
        sid = entry.record.session_id
        run_id = new_run_id()
        try:
            self.queue.push(run_id, sid, ready=False, force=force, front=front)
        except QueueFull:
            raise self.queue_full_error() from None
        record = RunRecord(
            run_id=run_id,
            session_id=sid,
            run_name=run_name,
            mode=mode,
            queued_utc=utc_now(),
            retry_of=retry_of,
            fallback_reason=fallback_reason,
            recovered_from_run_id=recovered_from,
        )
        live = LiveRun(record, changed_sources, self.run_dir(sid, run_id))
        body = dict(request or {})
        body.setdefault("mode", mode)
        body.setdefault("changed_sources", list(changed_sources))
        self.live[run_id] = live
        entry.record.queued_run_ids.append(run_id)
        entry.record.updated_utc = record.queued_utc
        # The run directory (with its request file: three fsyncs) is written in the background:
        # the store commit is what makes the 202 true, and everything that later needs the
        # directory (the run's start, a cancel's summary) waits for `dir_task` first.
        live.dir_task = asyncio.create_task(
            anyio.to_thread.run_sync(
                self.durable.write_new_run_dir, live.run_dir, snapshot(record), body
            )
        )
        try:
            await self.io(
                self.durable.save_new_run,
                snapshot(record),
                snapshot(entry.record),
                entry.pipeline_text,
                body,
                idempotency_key,
            )
        except BaseException as exc:
            self.queue.remove(run_id)
            self.live.pop(run_id, None)
            entry.record.queued_run_ids.remove(run_id)
            if isinstance(exc, Exception):  # refused (disk full...): leave no directory behind
                await self.durable.discard_new_run_dir(live.dir_task, live.run_dir)
            raise
        for event_type, event_data in announce:
            await self.emit(event_type, sid, event_data)
        data: dict[str, Any] = {"mode": mode, "position": self.position(run_id)}
        for key in ("run_name", "retry_of", "fallback_reason", "recovered_from_run_id"):
            if getattr(record, key) is not None:
                data[key] = getattr(record, key)
        await self.emit(ev.RUN_QUEUED, sid, data, run_id)
        position = self.position(run_id)
        self.queue.release(run_id)
        self.wake()
        return SubmitResult(run_id=run_id, status=RunStatus.QUEUED.value, position=position)

    async def commit(
        self,
        *,
        runs: tuple[RunRecord, ...] = (),
        sessions: tuple[SessionEntry, ...] = (),
        summaries: tuple[tuple[RunDirectory, RunRecord], ...] = (),
    ) -> None:
        """Snapshot and save records (and write run summaries) in one I/O-thread call."""
        await self.io(
            self.durable.commit,
            [snapshot(r) for r in runs],
            [(snapshot(e.record), e.pipeline_text) for e in sessions if not e.deleted],
            [(d, snapshot(r)) for d, r in summaries],
        )

    async def set_state(self, entry: SessionEntry, new: SessionState) -> bool:
        """Transition the session (validated); returns whether it changed. Not committed here."""
        old = entry.record.state
        if old == new:
            return False
        entry.record.state = session_transition(old, new)
        entry.record.updated_utc = utc_now()
        return True

    async def announce_state(self, entry: SessionEntry, old: SessionState) -> None:
        """Publish `session.state_changed` if the state differs from `old`."""
        new = entry.record.state
        if old != new:
            data = {"from": old.value, "to": new.value, "active_run_id": entry.record.active_run_id}
            await self.emit(ev.SESSION_STATE_CHANGED, entry.record.session_id, data)

    # -- cancelling ----------------------------------------------------------------------------

    def in_flight(self, session_id: str) -> LiveRun | None:
        """The session's run that a worker has (or is about to have): taken from the queue and
        past its start, not yet finished. It holds the session's cache from the moment it leaves
        the queue, before `run.started` makes the session `running_*`."""
        for live in self.live.values():
            if live.record.session_id == session_id and live.started_utc is not None:
                return live
        return None

    async def cancel(self, entry: SessionEntry, live: LiveRun) -> None:
        """Cancel a live run in whatever phase it is. Call with `entry.lock` held.

        Waiting in the queue: `cancelled` at once. Taken by a worker (still `queued` while it
        plans) or `running`: `cancelling` (committed), then `cancelled` once the runner stops at a
        step boundary (cooperative: between steps and inside long steps). Already `cancelling`:
        nothing more to do.
        """
        await self.durable.ensure_room()  # a full disk: 507 before anything changes
        status = live.record.status
        if live.record.run_id in self.queue.waiting_for(entry.record.session_id):
            await self.cancel_queued(entry, live)
        elif status in (RunStatus.QUEUED, RunStatus.RUNNING):
            live.cancel.cancel()
            live.record.status = run_transition(status, RunStatus.CANCELLING)
            if not entry.deleted:
                await self.commit(runs=(live.record,))

    async def cancel_queued(self, entry: SessionEntry, live: LiveRun) -> None:
        """Cancel a waiting run at once. Call with `entry.lock` held."""
        await self.durable.ensure_room()  # a full disk: 507 before anything changes
        await live.dir_ready()
        record = live.record
        self.queue.remove(record.run_id)
        record.status = run_transition(record.status, RunStatus.CANCELLED)
        record.finished_utc = utc_now()
        record.elapsed_s = 0.0
        if record.run_id in entry.record.queued_run_ids:
            entry.record.queued_run_ids.remove(record.run_id)
        entry.record.updated_utc = record.finished_utc
        runs = (record,) if not entry.deleted else ()
        await self.commit(runs=runs, sessions=(entry,), summaries=((live.run_dir, record),))
        self.live.pop(record.run_id, None)
        data = {"status": "cancelled", "elapsed_s": 0.0, "reason": "cancelled while queued"}
        await self.emit(ev.RUN_CANCELLED, record.session_id, data, record.run_id)

    # -- running -------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self.stopping and len(self._active) < self.config.workers:
                item = self.queue.next_runnable()
                if item is None:
                    break
                task = asyncio.create_task(lifecycle.run_one(self, item.run_id, item.session_id))
                self._active[item.run_id] = task
                task.add_done_callback(partial(self._run_done, item.run_id, item.session_id))

    def _run_done(self, run_id: str, session_id: str, task: asyncio.Task[None]) -> None:
        self._active.pop(run_id, None)
        self.queue.finish(session_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s: scheduler failure", run_id, exc_info=task.exception())
        self.wake()
