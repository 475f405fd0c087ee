"""`Runtime`: the facade the HTTP routes and the WebSocket control handler call.

Every method validates the whole request before changing anything (unknown profile, invalid
pipeline, location outside the roots, unreadable file, missing required source), then commits the
change to the store before returning, then publishes the event that announces it. The run
lifecycle itself (queue, workers, events, fallback) lives in `service.runtime.scheduler`; restart
recovery in `service.runtime.recovery`. Errors are `ServiceError`s with the contract's codes.

All methods are called on the event loop; none of them blocks it (file system and SQLite work
goes through the scheduler's I/O thread, planning through a worker thread).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import msgspec

from service.contract.errors import ServiceError
from service.contract.models import (
    CreateSessionRequest,
    DryRunResult,
    LatestErrors,
    PipelineInput,
    ProcessRequest,
    SampleRequest,
    SinkInput,
    SourceInput,
    SourceTemplate,
    SubmitResult,
)
from service.contract.records import (
    FINAL_RUN_STATUSES,
    RETRYABLE_RUN_STATUSES,
    PipelineInfo,
    RunRecord,
    RunSource,
    SessionRecord,
    SessionState,
    SourceRecord,
)
from service.runtime import inspection
from service.runtime.config import Config
from service.runtime.packages import PackageRuntime
from service.runtime.profiles import get_template, required_refs, source_templates
from service.runtime.recovery import recover
from service.runtime.run_inputs import accept_sources, sample_of
from service.runtime.scheduler import Scheduler, SessionEntry, changed_sources_of, snapshot
from service.runtime.sources import as_records, change, session_entry
from service.runtime.transitions import is_error, is_running
from service.runtime.validation import load_pipeline, validate_sources
from service.storage.store import SessionStore
from streaming import events as ev
from streaming.broker import Broker
from streaming.envelope import utc_now

__all__ = ["Runtime"]


class Runtime:
    """Sessions, sources, sinks and runs (see the module docstring)."""

    def __init__(self, config: Config, store: SessionStore, broker: Broker) -> None:
        self.config = config
        self.store = store
        self.broker = broker
        self._sched = Scheduler(config, store, broker)
        self._creating: set[str] = set()
        self.packages: PackageRuntime | None = None  # set by the app (service.runtime.packages)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover sessions and runs from the store, then start dispatching runs."""
        await recover(self._sched)
        self._sched.start_dispatcher()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting runs; active runs get `grace` seconds, then are cancelled."""
        await self._sched.shutdown(grace)

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: submits answer SERVICE_UNAVAILABLE."""
        return self._sched.accepting

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler (queue, live runs); for the demo, metrics and tests."""
        return self._sched

    # -- sessions ------------------------------------------------------------------------------

    def _entry(self, sid: str) -> SessionEntry:
        return session_entry(self._sched, sid)

    async def create_session(self, req: CreateSessionRequest) -> SessionRecord:
        """Load and validate the pipeline, store the session, publish `session.created`."""
        sid = req.session_id or f"session-{secrets.token_hex(4)}"
        if req.pipeline.package is None or self.packages is None:
            return await self._create_session(sid, req)
        # A package's pipeline: activate the package first (its steps must validate), bind it
        # to the session once created, release it if creation fails (service.runtime.packages).
        ref = req.pipeline.package
        text, _ = await self.packages.pipeline_text(ref, req.pipeline.file)
        req = msgspec.structs.replace(req, pipeline=PipelineInput(yaml_text=text))
        created = False
        try:
            record = await self._create_session(sid, req)
            created = True
            return record
        finally:
            await self.packages.bind_session(sid, ref, created)

    async def _create_session(self, sid: str, req: CreateSessionRequest) -> SessionRecord:
        if sid in self._sched.sessions or sid in self._creating:
            raise ServiceError("SESSION_EXISTS", f"session {sid!r} already exists")
        if req.source_profile is not None:
            get_template(req.source_profile)
        self._creating.add(sid)
        try:
            spec, text = await self._sched.durable.examine(
                load_pipeline, req.pipeline, self.config.read_roots
            )
            now = utc_now()
            record = SessionRecord(
                session_id=sid,
                name=req.name,
                source_profile=req.source_profile,
                required_source_refs=required_refs(spec.sources, req.source_profile),
                pipeline=PipelineInfo(name=spec.name, version=spec.version),
                created_utc=now,
                updated_utc=now,
                auto_fallback=req.auto_fallback,
            )
            entry = SessionEntry(record, spec, text)
            await self._sched.commit(sessions=(entry,))
            self._sched.sessions[sid] = entry
        finally:
            self._creating.discard(sid)
        data = {"name": record.name, "pipeline": msgspec.to_builtins(record.pipeline)}
        await self._sched.emit(ev.SESSION_CREATED, sid, data)
        return snapshot(record)

    async def list_sessions(self) -> list[SessionRecord]:
        """Every session, oldest first."""
        return [snapshot(e.record) for e in self._sched.sessions.values() if not e.deleted]

    async def get_session(self, sid: str) -> SessionRecord:
        """The session; SESSION_NOT_FOUND."""
        return snapshot(self._entry(sid).record)

    async def delete_session(self, sid: str) -> None:
        """Cancel the session's queued and active runs and forget it (run directories stay)."""
        entry = self._entry(sid)
        async with entry.lock:
            entry.deleted = True
            # Every live run, whatever its phase: one that left the queue but has not announced
            # its start yet is not the session's `active_run_id` but must stop all the same.
            for live in [lv for lv in self._sched.live.values() if lv.record.session_id == sid]:
                await self._sched.cancel(entry, live)
            await self._sched.io(self.store.delete_session, sid)
            self._sched.sessions.pop(sid, None)
            in_use = any(lv.record.session_id == sid for lv in self._sched.live.values())
        await self._sched.emit(ev.SESSION_DELETED, sid, {})
        if not in_use:
            # (A run still using the cache frees it when it ends: `RunLifecycle.finish`.)
            await self._sched.drop_cache(entry)
        if self.packages is not None:  # its package no longer needs to stay active
            await self.packages.release_session(sid)

    # -- sources and sinks ---------------------------------------------------------------------

    async def put_sources(self, sid: str, sources: list[SourceInput]) -> SessionRecord:
        """Replace every source (each file confined and checked first)."""
        return await change(
            self._sched, self.config, sid, "source", as_records(sources, "source"), replace=True
        )

    async def patch_source(self, sid: str, source: SourceInput) -> SessionRecord:
        """Add or replace one source."""
        return await change(self._sched, self.config, sid, "source", as_records([source], "source"))

    async def delete_source(self, sid: str, ref: str) -> SessionRecord:
        """Remove one source; NOT_FOUND if the session has no such ref."""
        return await change(self._sched, self.config, sid, "source", {}, remove=ref)

    async def put_sinks(self, sid: str, sinks: list[SinkInput]) -> SessionRecord:
        """Replace every sink (locations confined to the write roots)."""
        return await change(
            self._sched, self.config, sid, "sink", as_records(sinks, "sink"), replace=True
        )

    async def patch_sink(self, sid: str, sink: SinkInput) -> SessionRecord:
        """Add or replace one sink."""
        return await change(self._sched, self.config, sid, "sink", as_records([sink], "sink"))

    async def delete_sink(self, sid: str, ref: str) -> SessionRecord:
        """Remove one sink; NOT_FOUND if the session has no such ref."""
        return await change(self._sched, self.config, sid, "sink", {}, remove=ref)

    async def set_sample(
        self, sid: str, req: SampleRequest, *, idempotency_key: str | None = None
    ) -> tuple[SessionRecord, SubmitResult | None]:
        """Set source `sample`; with `process`, also submit a run that treats it as changed.

        With `process` the new sample and the run are committed together (one commit on the
        path from a new frame to its result), and nothing changes if the run is refused. A
        repeated `idempotency_key` (with `process`) changes nothing and returns the first run,
        as `submit` does: an instrument that re-sends after a lost answer queues one run.
        """
        sample = SourceRecord(type=req.type, location=req.location, options=dict(req.options))
        if not req.process:
            return await change(self._sched, self.config, sid, "source", {"sample": sample}), None
        self._check_accepting()
        entry = self._entry(sid)
        if (first := await self._idempotent(sid, idempotency_key)) is not None:
            return snapshot(entry.record), first
        self._check_required(entry, extra=("sample",))
        async with entry.lock:
            entry = self._entry(sid)
            # Checked again under the lock: two racing re-sends must not both enqueue.
            if (first := await self._idempotent(sid, idempotency_key)) is not None:
                return snapshot(entry.record), first
            before = entry.record.sources
            # One pass validates the new sample and every other source the run will read, and
            # fixes them (with each file's identity) as the run's inputs.
            accepted = await self._sched.durable.examine(
                accept_sources, {**before, "sample": sample}, self.config.read_roots
            )
            new = accepted["sample"]
            after = {
                **before,
                "sample": SourceRecord(type=new.type, location=new.location, options=new.options),
            }
            changed = [] if before.get("sample") == after["sample"] else ["sample"]
            entry.record.sources = after
            entry.record.updated_utc = utc_now()
            data = {"changed": changed, "sources": msgspec.to_builtins(after)}
            try:
                result = await self._sched.enqueue(
                    entry,
                    mode="auto",
                    sources=accepted,
                    changed_sources=("sample",),
                    request={"mode": "auto", "changed_sources": ["sample"]},
                    announce=((ev.SOURCES_CHANGED, data),),
                    idempotency_key=idempotency_key,
                    acknowledge_later=True,
                )
            except BaseException:
                entry.record.sources = before
                raise
            record = snapshot(entry.record)
        # Out of the lock, which the run takes to start: it starts while its commit is synced.
        await self._sched.acknowledged(result.run_id)
        return record, result

    # -- runs ----------------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self._sched.accepting:
            raise ServiceError("SERVICE_UNAVAILABLE", "the service is shutting down")

    def _check_required(self, entry: SessionEntry, extra: Iterable[str] = ()) -> None:
        present = set(entry.record.sources) | set(extra)
        missing = [ref for ref in entry.record.required_source_refs if ref not in present]
        if missing:
            raise ServiceError(
                "MISSING_SOURCES",
                f"required sources not set: {', '.join(missing)}",
                errors=[{"path": f"$.sources.{ref}", "message": "required"} for ref in missing],
            )

    def _check_changed_sources(self, entry: SessionEntry, req: ProcessRequest) -> None:
        known = set(entry.spec.sources) | set(entry.record.sources)
        unknown = [ref for ref in req.changed_sources if ref not in known]
        if unknown:
            raise ServiceError(
                "INVALID_REQUEST",
                f"changed_sources names unknown refs: {', '.join(unknown)}",
                errors=[
                    {"path": "$.changed_sources", "message": f"unknown ref {r!r}"} for r in unknown
                ],
            )

    async def _idempotent(self, sid: str, key: str | None) -> SubmitResult | None:
        """The run a previous request with this `Idempotency-Key` created, if any."""
        if key is None:
            return None
        run_id = await self._sched.io(self.store.idempotent_run, sid, key)
        if run_id is None:
            return None
        record = await self.get_run(run_id)
        return SubmitResult(
            run_id=run_id, status=record.status.value, position=self._sched.position(run_id)
        )

    async def submit(
        self, sid: str, req: ProcessRequest, *, idempotency_key: str | None = None
    ) -> SubmitResult:
        """Queue a run (202). QUEUE_FULL with Retry-After, MISSING_SOURCES, INVALID_REQUEST."""
        self._check_accepting()
        entry = self._entry(sid)
        if (first := await self._idempotent(sid, idempotency_key)) is not None:
            return first
        self._check_required(entry)
        self._check_changed_sources(entry, req)
        async with entry.lock:
            entry = self._entry(sid)
            if (first := await self._idempotent(sid, idempotency_key)) is not None:
                return first
            # The run's inputs are the session's sources now, fixed with their files'
            # identities; files that went since they were set are refused now (403/422) rather
            # than failing the run.
            sources = await self._sched.durable.examine(
                accept_sources, entry.record.sources, self.config.read_roots
            )
            if req.coalesce:
                merged = await self._coalesce(entry, req, sources, idempotency_key)
                if merged is not None:
                    return merged
            result = await self._sched.enqueue(
                entry,
                mode=req.mode,
                sources=sources,
                changed_sources=tuple(req.changed_sources),
                run_name=req.run_name,
                request=msgspec.to_builtins(req),
                idempotency_key=idempotency_key,
                acknowledge_later=True,
            )
        await self._sched.acknowledged(result.run_id)  # out of the lock: see `set_sample`
        return result

    async def _coalesce(
        self,
        entry: SessionEntry,
        req: ProcessRequest,
        sources: dict[str, RunSource],
        idempotency_key: str | None,
    ) -> SubmitResult | None:
        """Merge into the session's newest waiting run, if any (called with the lock held).

        The merged run takes the newest sources (`sources`, accepted for this request); the
        sample it held before, if different, is added to its `coalesced` list: no run reduces
        that sample, and the 202 and the Run object say so.
        """
        sid = entry.record.session_id
        waiting = self._sched.queue.waiting_for(sid)
        if not waiting:
            return None
        live = self._sched.live[waiting[-1]]
        # Built on a copy and swapped in once committed: a failed commit changes nothing.
        record = snapshot(live.record)
        changed = tuple(dict.fromkeys((*live.changed_sources, *req.changed_sources)))
        if "full" in (record.mode, req.mode):
            record.mode = "full"
        elif record.mode == "auto":
            record.mode = req.mode
        sample = sample_of(sources)
        if record.sample is not None and record.sample != sample:
            record.coalesced.append(record.sample)
        record.sample = sample
        await live.dir_ready()
        request: dict[str, Any] = {
            "mode": record.mode,
            "changed_sources": list(changed),
            "coalesced": msgspec.to_builtins(record.coalesced),
        }
        if record.run_name is not None:
            request["run_name"] = record.run_name
        # One commit for the run's merged request, inputs and idempotency key, then its
        # request file (a restart re-queues it with both).
        await self._sched.io(
            self._sched.durable.save_new_run,
            snapshot(record),
            snapshot(entry.record),
            entry.pipeline_text,
            request,
            idempotency_key,
            sources,
        )
        live.record, live.sources, live.changed_sources = record, sources, changed
        await self._sched.io(
            self._sched.durable.write_new_run_dir, live.run_dir, snapshot(record), request, sources
        )
        return SubmitResult(
            run_id=record.run_id,
            status=record.status.value,
            position=self._sched.position(record.run_id),
            sample=snapshot(sample) if sample is not None else None,
            merged=True,
            coalesced=[snapshot(s) for s in record.coalesced],
        )

    async def dry_run(self, sid: str, req: ProcessRequest) -> DryRunResult:
        """What a run would do now: effective mode, dirty steps with reasons; runs nothing.

        The body is checked as `submit` checks it (an unknown `changed_sources` ref is 422 for
        both), and `can_process` is false, with a warning, when a source file can no longer be
        read: a dry run never approves a request that `process` would refuse.
        """
        entry = self._entry(sid)
        self._check_changed_sources(entry, req)
        plan = await inspection.dry_run(entry, req)
        try:
            # `submit` refuses a source file that went away or left the read roots; the plan
            # reports it instead of failing, so a client sees every reason at once.
            await self._sched.durable.examine(
                validate_sources, entry.record.sources, self.config.read_roots
            )
        except ServiceError as exc:
            plan.warnings.append(exc.detail)
            plan.can_process = False
        return plan

    async def reset(self, sid: str, mode: str) -> SessionRecord:
        """`partial`: clear the error state; `full`: also drop the incremental cache."""
        entry = self._entry(sid)
        async with entry.lock:
            old = entry.record.state
            if is_running(old) or self._sched.in_flight(sid) is not None:
                # A run holds the cache (from the moment it left the queue, before the session
                # shows `running_*`) and decides the state when it ends: make it rest in idle,
                # and clear the cache once it is done with it.
                entry.resting = SessionState.IDLE
                entry.clear_cache_after_run = entry.clear_cache_after_run or mode == "full"
            elif mode == "full":
                entry.cache.clear()
                entry.cache_bytes = 0
                entry.cache_lost = False  # an empty cache: the next run is full anyway
                entry.cache_evicted = False
            if is_error(old):
                # Not running yet (a run not yet started goes idle -> running just as well).
                await self._sched.set_state(entry, SessionState.IDLE)
            entry.record.updated_utc = utc_now()
            await self._sched.commit(sessions=(entry,))
            await self._sched.announce_state(entry, old)
            return snapshot(entry.record)

    async def latest_errors(self, sid: str) -> LatestErrors:
        """The session's current and most recent error (`errors/latest`)."""
        return await inspection.latest_errors(self._sched, self._entry(sid))

    async def list_runs(self, sid: str) -> list[RunRecord]:
        """The session's runs, newest first (the order of every run listing; live ones as the
        runtime holds them now)."""
        self._entry(sid)
        runs = await self._sched.io(self.store.list_runs, sid, None)
        live = self._sched.live
        return [snapshot(live[r.run_id].record) if r.run_id in live else r for r in reversed(runs)]

    async def page_runs(
        self, sid: str, limit: int, before: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        """One page of the session's runs, newest first, and the `next_before` cursor (None
        on the last page); INVALID_REQUEST when `before` is not a run of this session."""
        self._entry(sid)
        runs = await self._sched.io(self.store.page_runs, sid, limit + 1, before)
        if runs is None:
            raise ServiceError(
                "INVALID_REQUEST",
                f"before: no run {before[:64]!r} in session {sid!r}" if before else "before",
                errors=[{"path": "$.before", "message": "expected a run id of this session"}],
            )
        live = self._sched.live
        page = [snapshot(live[r.run_id].record) if r.run_id in live else r for r in runs[:limit]]
        return page, (page[-1].run_id if len(runs) > limit else None)

    async def get_run(self, run_id: str) -> RunRecord:
        """A run, live or stored; RUN_NOT_FOUND."""
        live = self._sched.live.get(run_id)
        if live is not None:
            return snapshot(live.record)
        record = await self._sched.io(self.store.get_run, run_id)
        if record is None:
            raise ServiceError("RUN_NOT_FOUND", f"no run {run_id!r}")
        return record

    async def cancel_run(self, run_id: str) -> RunRecord:
        """Waiting: cancelled at once. Taken by a worker or running: `cancelling`, then
        `cancelled` at a step boundary (see `Scheduler.cancel`)."""
        live = self._sched.live.get(run_id)
        if live is None or live.record.status in FINAL_RUN_STATUSES:
            record = await self.get_run(run_id)
            raise ServiceError(
                "RUN_NOT_CANCELLABLE", f"run {run_id!r} is {record.status.value}: already final"
            )
        entry = self._entry(live.record.session_id)
        async with entry.lock:
            await self._sched.cancel(entry, live)
            return snapshot(live.record)

    async def retry_run(self, run_id: str) -> SubmitResult:
        """A new run of the same session and mode, with `retry_of` (failed/cancelled/interrupted)."""
        self._check_accepting()
        record = await self.get_run(run_id)
        if record.status not in RETRYABLE_RUN_STATUSES:
            raise ServiceError(
                "RUN_NOT_RETRYABLE",
                f"run {run_id!r} is {record.status.value}; only failed, cancelled or "
                "interrupted runs can be retried",
            )
        entry = self._entry(record.session_id)
        self._check_required(entry)
        request = await self._sched.io(self.store.get_run_request, run_id)
        changed = changed_sources_of(request)
        async with entry.lock:
            entry = self._entry(record.session_id)
            # A retry reduces the inputs of the run it retries (a run stored before they were
            # kept: the session's current ones), accepted again as they are on disk now.
            original = await self._sched.io(self.store.get_run_sources, run_id)
            sources = await self._sched.durable.examine(
                accept_sources,
                entry.record.sources if original is None else original,
                self.config.read_roots,
            )
            result = await self._sched.enqueue(
                entry,
                mode=record.mode,
                sources=sources,
                changed_sources=changed,
                run_name=record.run_name,
                request={"mode": record.mode, "changed_sources": list(changed), "retry_of": run_id},
                retry_of=run_id,
                acknowledge_later=True,
            )
        await self._sched.acknowledged(result.run_id)  # out of the lock: see `set_sample`
        return result

    # -- descriptions --------------------------------------------------------------------------

    def source_templates(self) -> list[SourceTemplate]:
        """The built-in source profiles."""
        return source_templates()

    def readiness(self) -> dict[str, Any]:
        """Readiness and queue figures (contract `GET /readiness`)."""
        return inspection.readiness(self._sched, self.broker.subscriber_count)

    async def refresh_readiness(self) -> dict[str, Any]:
        """`readiness()` after probing the store for writing (in the I/O thread)."""
        try:
            self._sched.durable.store_ok = bool(await self._sched.io(self.store.writable))
        except Exception:
            self._sched.durable.store_ok = False
        return self.readiness()
