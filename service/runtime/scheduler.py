"""The scheduler: sessions and runs in memory, the queue, the dispatcher, submit and cancel.

One run's start-to-finish path lives in `service.runtime.lifecycle`.

Owns the in-memory sessions (`SessionEntry`: record, loaded pipeline, incremental cache) and the
live (queued or active) runs, and moves them through the state machines of `service.runtime.transitions`.

Thread boundaries, each crossed in one place:

- **I/O thread** (`service.storage.io_thread.DurableIO`, as `Scheduler.io`/`.emit`/`.commit`): one dedicated
  thread runs every store call, every run-directory write and every event the loop emits. One thread means store commits and
  journal lines happen in the order the loop asked for them, and the loop never touches SQLite
  or a file.
- **Worker threads**: `anyio.to_thread.run_sync(execute_run, ..., limiter=CapacityLimiter(workers))`.
  The dispatcher hands out at most `workers` runs at a time (a run back from its thread and only
  recording its end frees its slot), so a run marked `running` really is computing or ending.

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
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from pipeline.rundir import RunDirectory, new_run_id
from service.contract.errors import ServiceError
from service.contract.models import SubmitResult
from service.contract.records import RunRecord, RunSource, RunStatus, SessionState
from service.runtime.config import Config
from service.runtime.lifecycle import RunLifecycle
from service.runtime.live import LiveRun, SessionEntry, changed_sources_of
from service.runtime.memory import choose_evictions, default_cache_memory, release_memory
from service.runtime.remote import LocalThreads, RemoteRuns, RunExecutor
from service.runtime.run_inputs import sample_of
from service.runtime.run_queue import QueueFull, RunQueue
from service.runtime.transitions import run_transition, session_transition
from service.storage.io_thread import DurableIO, PendingEvent, snapshot
from service.storage.publisher import EventSink
from service.storage.store import SessionStore
from streaming import events as ev
from streaming.envelope import utc_now
from streaming.tasks import TaskSupervisor

__all__ = ["LiveRun", "Scheduler", "SessionEntry", "changed_sources_of", "snapshot"]

log = logging.getLogger("service.runtime.scheduler")

# After the shutdown grace, cancelled runs get this long to reach a step boundary; a step that
# ignores its cancel token is left behind (its run is `interrupted` at the next start).
CANCEL_WAIT_S = 5.0
# Then what is left (the dispatcher, a run task stuck behind such a step) is cancelled and
# waited for this long.
TASKS_CLOSE_WAIT_S = 1.0


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
        self._acks: dict[str, asyncio.Task[None]] = {}  # see `enqueue(acknowledge_later=)`
        self.accepting = False
        self.limiter: anyio.CapacityLimiter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # Every background task (dispatcher, runs, run directories, run starts) is owned here.
        self.tasks = TaskSupervisor("scheduler")
        self._dispatcher: asyncio.Task[None] | None = None
        self._active: dict[str, asyncio.Task[None]] = {}  # run_id -> its task
        # Runs handed out and not yet back from their worker thread: at most `workers`. A run
        # that is only recording its end (summary, commit, events) no longer holds a slot, so
        # another session's run computes meanwhile.
        self._computing: set[str] = set()
        self.stopping = False
        # Recent run durations, for a Retry-After that means something (bounded: last 32).
        self.durations: collections.deque[float] = collections.deque(maxlen=32)
        # The incremental caches' memory budget (service.runtime.memory) and evictions since start.
        self.cache_budget = (
            config.cache_memory if config.cache_memory is not None else default_cache_memory()
        )
        self.cache_evictions = 0
        # One run's start-to-end, owned by one object that is handed this scheduler's side.
        self.lifecycle = RunLifecycle(self)
        # Where runs compute: this process's threads, or `runwire worker`s through Redis.
        self.remote: RemoteRuns | None = None
        self.executor: RunExecutor = LocalThreads(lambda: self.limiter)
        self.capacity = config.workers  # runs handed out at once
        if config.runs == "workers" and config.broker is not None:
            self.remote = RemoteRuns(config.broker, lease_ttl=config.lease_ttl)
            self.executor = self.remote
            # Handed to Redis, a run waits there for a free worker: the bound is the queue's.
            self.capacity = max(config.workers, config.queue_size)

    # -- lifecycle -----------------------------------------------------------------------------

    def start_dispatcher(self) -> None:
        """Start handing queued runs to workers (at most `config.workers` at once)."""
        self.limiter = anyio.CapacityLimiter(self.config.workers)
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._dispatcher = self.tasks.spawn(self._dispatch(), name="runwire-dispatcher")
        if self.remote is not None:
            self.remote.start()
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
        await self.tasks.aclose(TASKS_CLOSE_WAIT_S)  # the dispatcher, and anything left behind
        if self.remote is not None:
            await self.remote.aclose()
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
        acknowledge_later: bool = False,
    ) -> SubmitResult:
        """Create, commit and queue a run of `sources` (frozen by `run_inputs.accept_sources`).
        Call with `entry.lock` held. Raises QUEUE_FULL.

        Returns once the run is on disk and announced (`run.queued`), or, with
        `acknowledge_later`, as soon as that is under way: the caller then releases
        `entry.lock` (which the run needs to start) and awaits `acknowledged(run_id)` before
        answering.

        The session record is saved in the same commit, so a change the caller made to it just
        before (a new sample) is durable with the run; `announce` lists session events
        `(type, data)` to publish after that commit and before `run.queued`.

        The run is held in the queue (counted, not startable) until it is committed and its
        `run.queued` event is out, so `run.started` can never precede either.
        """
        if self.remote is not None and not force:
            await self.remote.check()  # Redis down: 503 BROKER_UNAVAILABLE, nothing changed
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
            sample=sample_of(sources),
        )
        live = LiveRun(record, changed_sources, self.run_dir(sid, run_id), sources)
        body = dict(request or {})
        body.setdefault("mode", mode)
        body.setdefault("changed_sources", list(changed_sources))
        self.live[run_id] = live
        entry.record.queued_run_ids.append(run_id)
        entry.record.updated_utc = record.queued_utc
        # The run directory is made in the acceptance's I/O call (a mkdir, before the commit), so
        # the run can start as soon as it is committed. Its request file (three fsyncs) is
        # written in the background: the store commit is what makes the 202 true, and whatever
        # writes the run's summary (its end, a cancel) waits for `dir_task` first.
        live.dir_task = self.tasks.spawn(
            anyio.to_thread.run_sync(
                self.durable.write_new_run_dir, live.run_dir, snapshot(record), body, sources
            ),
            name=f"run-dir-{run_id}",
            handled=True,  # awaited by `LiveRun.dir_ready`, which logs a failure
        )
        data: dict[str, Any] = {"mode": mode, "position": self.position(run_id)}
        for key in ("run_name", "retry_of", "fallback_reason", "recovered_from_run_id"):
            if getattr(record, key) is not None:
                data[key] = getattr(record, key)
        if record.sample is not None:
            data["sample"] = msgspec.to_builtins(record.sample)
        events: list[PendingEvent] = [(t, sid, d, None) for t, d in announce]
        events.append((ev.RUN_QUEUED, sid, data, run_id))
        try:
            # The commit, not yet synced: the run can start meanwhile (below).
            await self.io(
                partial(self.durable.save_new_run, synced=False, make_dir=live.run_dir),
                snapshot(record),
                snapshot(entry.record),
                entry.pipeline_text,
                body,
                idempotency_key,
                sources,
            )
        except BaseException as exc:
            self.queue.remove(run_id)
            self.live.pop(run_id, None)
            entry.record.queued_run_ids.remove(run_id)
            if isinstance(exc, Exception):  # refused (disk full...): leave no directory behind
                await self.durable.discard_new_run_dir(live.dir_task, live.run_dir)
            raise
        position = self.position(run_id)
        # Startable now. Its `run.started` still comes after `run.queued`: both go through the
        # one I/O thread, in order, and `sync_then_emit` is queued there before this returns.
        self.queue.release(run_id)
        self.wake()
        # The sync and `run.queued` while the run starts: the 202 waits for the run to be on disk.
        ack = self.durable.io_submitted(self.durable.sync_then_emit, events)
        if acknowledge_later:
            # Awaited by `acknowledged` (the caller's), which raises what it raised.
            self._acks[run_id] = self.tasks.spawn(ack, name=f"run-ack-{run_id}", handled=True)
        else:
            await ack
        return SubmitResult(
            run_id=run_id,
            status=RunStatus.QUEUED.value,
            position=position,
            sample=snapshot(record.sample) if record.sample is not None else None,
        )

    async def acknowledged(self, run_id: str) -> None:
        """Wait until the run an `enqueue(acknowledge_later=True)` returned is on disk and
        announced; raises what syncing it raised. At once for any other run."""
        ack = self._acks.pop(run_id, None)
        if ack is not None:
            await ack

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
    ) -> None:
        """Snapshot and save records (and write run summaries) in one I/O-thread call, then
        journal and publish `events` in that same call (not if the commit fails), then close
        the journal of run `close_run` (`on_done`: see `DurableIO.then_emit`).

        `sync_after_events` (a run's final commit): the events go out once the commit is made
        and the store is synced right after them, so a subscriber does not wait for the disk.
        A process crash loses nothing either way; see docs/durability.md for a power loss."""
        await self.io(
            partial(
                self.durable.then_emit, on_done=on_done, after=after, sync_after=sync_after_events
            ),
            events or [],
            close_run,
            partial(self.durable.commit, synced=not sync_after_events),
            [snapshot(r) for r in runs],
            [(snapshot(e.record), e.pipeline_text) for e in sessions if not e.deleted],
            [(d, snapshot(r)) for d, r in summaries],
            manifests,
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
        for event in self.state_events(entry, old):
            await self.emit(*event)

    def state_events(self, entry: SessionEntry, old: SessionState) -> list[PendingEvent]:
        """`session.state_changed` if the state differs from `old` (to publish after a commit)."""
        new = entry.record.state
        if old == new:
            return []
        data = {"from": old.value, "to": new.value, "active_run_id": entry.record.active_run_id}
        return [(ev.SESSION_STATE_CHANGED, entry.record.session_id, data, None)]

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

    # -- memory --------------------------------------------------------------------------------

    @property
    def cache_bytes(self) -> int:
        """The sessions' caches' array bytes, as measured when each one's last run ended."""
        return sum(e.cache_bytes for e in self.sessions.values() if not e.deleted)

    def cache_used(self, entry: SessionEntry) -> None:
        """A run of `entry` ended: its cache is the most recently used."""
        entry.last_used = time.monotonic()

    async def enforce_cache_budget(self, holding: SessionEntry | None = None) -> int:
        """Evict whole caches, least recently used first, until the total fits the budget;
        returns how many were evicted. The caller then gives the memory back
        (`release_memory`, in a worker thread), when it suits it.

        `holding`: a session whose lock the caller holds. Another session's cache is evicted
        under its lock, and skipped if that lock is taken (the session is changing, or a run is
        about to use the cache): never waiting for a lock, two finishing runs cannot deadlock.
        A session with a run in flight keeps its cache.
        """
        if self.cache_bytes <= self.cache_budget:
            return 0
        candidates = [
            (sid, e.cache_bytes, e.last_used, e is not holding and self.in_flight(sid) is not None)
            for sid, e in self.sessions.items()
            if not e.deleted
        ]
        evicted = 0
        for sid in choose_evictions(candidates, self.cache_budget):
            entry = self.sessions.get(sid)
            if entry is None or (entry is not holding and entry.lock.locked()):
                continue
            if entry is holding:
                # The caller's run is over (its worker let go of the cache).
                await self._evict(entry, busy=False)
            else:
                async with entry.lock:  # free: taken at once, without yielding
                    await self._evict(entry, busy=self.in_flight(sid) is not None)
            evicted += entry.cache_evicted
        return evicted

    async def _evict(self, entry: SessionEntry, *, busy: bool) -> None:
        # Checked under the lock: a run may have taken the cache meanwhile.
        if entry.deleted or busy:
            return
        # Dropping the arrays frees megabytes: not on the loop.
        await anyio.to_thread.run_sync(entry.cache.clear)
        entry.cache_bytes = 0
        entry.cache_evicted = True
        self.cache_evictions += 1
        log.info("session %s: incremental cache evicted (memory budget)", entry.record.session_id)

    async def release_memory(self) -> None:
        """Give freed memory back to the OS (`malloc_trim`, in a worker thread)."""
        await anyio.to_thread.run_sync(release_memory)

    async def drop_cache(self, entry: SessionEntry) -> None:
        """Free a deleted session's cache and give the memory back to the OS (worker thread)."""

        def drop() -> None:
            entry.cache.clear()
            release_memory()  # the module function, in this worker thread

        entry.cache_bytes = 0
        await anyio.to_thread.run_sync(drop)

    # -- running -------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self.stopping and len(self._computing) < self.capacity:
                item = self.queue.next_runnable()
                if item is None:
                    break
                task = self.tasks.spawn(
                    self.lifecycle.run_one(item.run_id, item.session_id),
                    name=f"run-{item.run_id}",
                    handled=True,  # `_run_done` logs a failure
                )
                self._active[item.run_id] = task
                self._computing.add(item.run_id)
                task.add_done_callback(partial(self._run_done, item.run_id, item.session_id))

    def computed(self, run_id: str) -> None:
        """The run's worker thread returned: its compute slot is free for another run (the
        session's own next run still waits until this one has ended, `RunQueue.finish`)."""
        if run_id in self._computing:
            self._computing.discard(run_id)
            self.wake()

    def _run_done(self, run_id: str, session_id: str, task: asyncio.Task[None]) -> None:
        self._computing.discard(run_id)
        self._active.pop(run_id, None)
        self.queue.finish(session_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s: scheduler failure", run_id, exc_info=task.exception())
        self.wake()
