"""`DurableIO`: the runtime's one I/O thread — store commits, run directories, journalled events.

Everything the runtime must not do on the event loop (SQLite, file writes, event journal lines)
goes through `DurableIO.io`, which runs the call on one dedicated thread. One thread, not a pool:
commits and journal lines then happen in exactly the order the loop asked for them (a run's
`run.queued` line can never be written before the commit that created the run), and the store,
which serialises its callers anyway, is never contended.

The executor's queue is unbounded in principle but bounded in practice: every caller awaits its
call, so there are at most as many pending calls as concurrent requests and runs.

Records crossing to the thread must be snapshots (`snapshot`): the loop keeps mutating its own
copies while the thread encodes them.

Files a *user* named (a pipeline path, source files, sink directories) are never read on the
I/O thread: a slow or hostile path (a FIFO, a hung network mount) would stall every commit,
readiness probe and shutdown behind it. Those checks go through `DurableIO.examine`, a separate
pool of `EXAMINE_THREADS` threads, and open files through `pipeline.safeio` (regular files
only, non-blocking open, bounded reads).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from pipeline.rundir import RunDirectory
from service.contract.errors import is_storage_full, storage_full_error
from service.contract.records import FINAL_RUN_STATUSES, RunRecord, RunSource, SessionRecord
from service.storage.publisher import EventPublisher, EventSink
from service.storage.run_files import write_final_files
from service.storage.store import SessionStore, StoreError, check_room
from streaming.envelope import utc_now

__all__ = ["EXAMINE_THREADS", "DurableIO", "PendingEvent", "snapshot"]

# Threads checking user-named files (`DurableIO.examine`). Few: the checks are short (stat, a
# non-blocking open, at most 1 MiB read); callers beyond this wait their turn, off the loop.
EXAMINE_THREADS = 2

log = logging.getLogger("service.storage.io_thread")

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

# An event to publish after a commit: (type, session_id, data, run_id).
PendingEvent = tuple[str, str, dict[str, Any], str | None]


def snapshot(record: S) -> S:
    """A deep copy of a record, safe to hand to another thread (or to a client)."""
    return msgspec.json.decode(msgspec.json.encode(record), type=type(record))


class DurableIO:
    """The I/O thread and the synchronous work done on it."""

    def __init__(self, store: SessionStore, broker: EventSink, runs_dir: Path) -> None:
        self.store = store
        self.runs_dir = Path(runs_dir)
        self.publisher = EventPublisher(broker, self.runs_dir)
        self.store_ok = True  # false after a store failure, until a store call succeeds again
        # True from a write that failed for want of space until a call succeeds again (or the
        # readiness probe writes): readiness is `unavailable` meanwhile.
        self.storage_full = False
        self.last_updated_utc: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runwire-io")
        self._examine_pool = ThreadPoolExecutor(
            max_workers=EXAMINE_THREADS, thread_name_prefix="runwire-examine"
        )

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous call in the I/O thread and return its result (or raise).

        A call that fails because the disk (or quota) is full raises `ServiceError`
        STORAGE_FULL (507 with `Retry-After`) instead of its raw error: the store rolled its
        transaction back, so nothing was half-written, and the caller's own clean-up runs.
        """
        return await self.io_submitted(fn, *args)

    def io_submitted(self, fn: Callable[..., T], *args: Any) -> Coroutine[Any, Any, T]:
        """`io`, with the call queued on the I/O thread now, before this returns: its place
        among the thread's calls is taken even if the caller awaits the result later (after
        releasing a lock, say). Await the result exactly once."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))
        return self._io_result(future)

    async def _io_result(self, future: asyncio.Future[T]) -> T:
        try:
            result = await future
        except Exception as exc:
            if is_storage_full(exc):
                self.store_ok = False
                self.storage_full = True
                raise storage_full_error() from exc
            if isinstance(exc, StoreError):
                self.store_ok = False
            raise
        # A store call that worked means the store is usable again (readiness recovers without
        # a restart once, say, the disk has space again).
        self.store_ok = True
        self.storage_full = False
        self.last_updated_utc = utc_now()
        return result

    async def examine(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a check of user-named files (validation, pipeline loading) off the I/O thread,
        so that whatever the path names cannot delay a commit."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._examine_pool, partial(fn, *args))

    async def ensure_room(self) -> None:
        """Raise STORAGE_FULL (507) now if the data directory's disk is (nearly) full: for
        changes made in memory before their commit, so that a full disk changes nothing."""
        await self.io(check_room, self.store.path.parent)

    async def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> None:
        """Journal and publish an event from the loop (see `EventPublisher.emit`)."""
        await self.io(self.publisher.emit, type, session_id, data, run_id)

    def run_dir(self, session_id: str, run_id: str) -> RunDirectory:
        """`runs/<session_id>/<run_id>/`."""
        return RunDirectory(self.runs_dir / session_id / run_id)

    async def close(self) -> None:
        """Close the journals, then let the thread finish what is queued (no new calls)."""
        await self.io(self.publisher.close)
        self._pool.shutdown(wait=False)
        self._examine_pool.shutdown(wait=False)

    # -- synchronous work, on the I/O thread ---------------------------------------------------

    def then_emit(
        self,
        events: list[PendingEvent],
        close_run: str | None,
        fn: Callable[..., T],
        *args: Any,
        on_done: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
        sync_after: bool = False,
    ) -> T:
        """`fn(*args)`, then `on_done()`, then journal and publish `events` in order (then close
        run `close_run`'s journal): one I/O-thread hop for a commit and the events that announce
        it. If `fn` raises, nothing is published.

        `on_done` runs in this thread between the commit and the events: it may only swap a
        reference the loop reads (a live run's record), so that a client told of the change by
        an event reads the changed object. `after` runs once the events are out (it opens a
        run's `StartGate`). `sync_after`: `fn` committed without syncing, and the store is
        synced once the events are out (a run's final commit, see `Scheduler.commit`); a sync
        that fails is logged, not raised, since the commit and its events stand (the next
        synced commit meets the same disk)."""
        result = fn(*args)
        if on_done is not None:
            on_done()
        for type, session_id, data, run_id in events:
            self.publisher.emit(type, session_id, data, run_id)
        if close_run is not None:
            self.publisher.close_run(close_run)
        if after is not None:
            after()
        if sync_after:
            try:
                self.store.sync()
            except StoreError:
                log.exception("the store's last commit could not be synced to disk")
        return result

    def sync_then_emit(self, events: list[PendingEvent]) -> None:
        """Sync the store (commits made with `synced=False`), then journal and publish `events`.
        The events go out even if the sync fails (what they announce is committed); the
        failure is raised after them."""
        try:
            self.store.sync()
        finally:
            for type, session_id, data, run_id in events:
                self.publisher.emit(type, session_id, data, run_id)

    def save_new_run(
        self,
        record: RunRecord,
        session: SessionRecord,
        pipeline_text: str,
        request: dict[str, Any] | None,
        idempotency_key: str | None,
        sources: dict[str, RunSource] | None = None,
        *,
        synced: bool = True,
        make_dir: RunDirectory | None = None,
    ) -> None:
        """Save a new run (with its sources), its session and its idempotency key in one
        commit (`synced=False`: see `SessionStore.transaction`). `make_dir`: first make the
        run's directory (not synced: `write_new_run_dir` does that, with the request file, in
        the background), so that the run can start as soon as this returns."""
        if make_dir is not None:
            make_dir.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with self.store.transaction(synced=synced):
            self.store.save_run(record, request, sources)
            self.store.save_session(session, pipeline_text)
            if idempotency_key is not None:
                self.store.save_idempotency(session.session_id, idempotency_key, record.run_id)

    async def discard_new_run_dir(
        self, writing: asyncio.Task[None] | None, run_dir: RunDirectory
    ) -> None:
        """Remove the directory of a run whose submit failed, once its background write
        (`writing`) is over: a refused submit leaves nothing behind. Only files this runtime
        wrote are there (the request, temporaries)."""
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await self.io(shutil.rmtree, run_dir.path, True)

    @staticmethod
    def write_new_run_dir(
        run_dir: RunDirectory,
        record: RunRecord,
        request: dict[str, Any],
        sources: dict[str, RunSource] | None = None,
    ) -> None:
        """Create the run directory with `run-request.json` (any thread: touches no shared state):
        the submitted request plus the sources the run was accepted with."""
        run_dir.create()
        body: dict[str, Any] = {"run_id": record.run_id, "session_id": record.session_id, **request}
        if sources is not None:
            body["sources"] = msgspec.to_builtins(sources)
        run_dir.write_request(body)

    def commit(
        self,
        runs: list[RunRecord],
        sessions: list[tuple[SessionRecord, str]],
        summaries: list[tuple[RunDirectory, RunRecord]],
        manifests: dict[str, dict[str, Any]] | None = None,
        synced: bool = True,
    ) -> None:
        """Write run summaries (and the manifests given, by run id), then save runs (with
        those manifests) and sessions in one transaction (`synced`: see
        `SessionStore.transaction`)."""
        # Summaries first: a crash between the two leaves the store saying `running`, which the
        # next start turns into `interrupted` (and rewrites the summary); never the reverse.
        # A run's final files are not fsynced (`write_final_files`): this commit is their
        # durable copy, and recovery rewrites them from it after a power loss.
        for run_dir, record in summaries:
            manifest = (manifests or {}).get(record.run_id)
            if manifest is not None:
                write_final_files(run_dir, manifest, msgspec.to_builtins(record))
                continue
            if record.status in FINAL_RUN_STATUSES and not run_dir.manifest_path.exists():
                # Runs that never reached the end of execution (cancelled while queued,
                # interrupted by a restart) get a manifest too: the retained-runs API would
                # otherwise call them "no-manifest", the marker reserved for older layouts.
                run_dir.write_manifest()
            run_dir.write_summary(msgspec.to_builtins(record))
        with self.store.transaction(synced=synced):
            for record in runs:
                self.store.save_run(record, manifest=(manifests or {}).get(record.run_id))
            for session, text in sessions:
                self.store.save_session(session, text)
