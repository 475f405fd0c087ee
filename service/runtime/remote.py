"""Where a run computes: worker threads of this process (default) or `runwire worker` processes.

`RunLifecycle.run_one` hands every run's `RunJob` to the scheduler's executor and awaits a
`RunOutcome`; the lifecycle around it (commit `running` + `run.started` when the runner has
planned, step events through the `StartGate`, final record, one terminal event) is the same
for both:

- `LocalThreads`: `execute_run` in a worker thread behind the scheduler's `CapacityLimiter`.
- `RemoteRuns` (`--broker redis://...`): the job goes to Redis (`service.runtime.remote_wire`),
  to the stream of the worker holding the session's lease if that worker is alive, else to the
  shared group. A report consumer (consumer group `api`, so a restart resumes unacknowledged
  reports) feeds the worker's reports into the job's own callbacks: `started` calls
  `job.on_started` (the lifecycle commits and announces the start), `step` events go through
  `job.gate` to the `EventPublisher` (in a worker thread: the publisher writes journals), and
  `outcome` ends the wait. A watcher (every `POLL_S`) forwards cancels, learns which worker
  claimed each run, re-routes runs queued for a dead worker to the shared group, and ends a run
  whose worker has lost its heartbeat (kill -9: within `--lease-ttl`) as `interrupted`.

The API node stays the one writer of the store and the one publisher of events: a worker only
writes the run directory's outputs. Redis unreachable: `check()` raises BROKER_UNAVAILABLE (503
with `Retry-After`) for new submits; a run already acknowledged waits for Redis (its dispatch
is retried) and is never dropped. After Redis comes back, workers get `lease_ttl` to beat
again before anyone is declared dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pipeline.observer import RunInfo
from service.contract.errors import ServiceError
from service.contract.records import RunError, RunRecord, RunStatus, SourceRecord
from service.runtime.execution import RunJob, RunOutcome, execute_run
from service.runtime.remote_wire import (
    API_GROUP,
    ENCODER,
    INFO_DECODER,
    JOBS,
    MARKER_TTL_S,
    REPORT_DECODER,
    REPORTS,
    WORKER_GROUP,
    WORKERS,
    OutcomeReport,
    RemoteJob,
    StartedReport,
    StepReport,
    attempt_key,
    cancel_key,
    claim_key,
    heartbeat_key,
    lease_key,
    report_lines,
    text,
    worker_jobs,
)
from streaming.tasks import TaskSupervisor

__all__ = ["CACHE_LOST", "WORKER_LOST", "LocalThreads", "RemoteRuns", "RunExecutor"]

log = logging.getLogger("service.runtime.remote")

CACHE_LOST = "cache_lost"
WORKER_LOST = "WORKER_LOST"  # the error code of a run whose worker died
POLL_S = 0.5  # the watcher's period: cancels, claims, liveness
FIGURES_EVERY_S = 2.0  # /metrics figures read from Redis at most this often
RETRY_AFTER_S = "5"  # BROKER_UNAVAILABLE's Retry-After


class RunExecutor(Protocol):
    """Computes one run; the lifecycle around it is `RunLifecycle`'s."""

    async def execute(
        self, job: RunJob, record: RunRecord, *, pipeline_text: str, expect_cache: bool
    ) -> RunOutcome: ...


class LocalThreads:
    """`execute_run` in this process's worker threads (the embedded default)."""

    def __init__(self, limiter: Callable[[], anyio.CapacityLimiter | None]) -> None:
        self._limiter = limiter

    async def execute(
        self, job: RunJob, record: RunRecord, *, pipeline_text: str, expect_cache: bool
    ) -> RunOutcome:
        return await anyio.to_thread.run_sync(execute_run, job, limiter=self._limiter())


@dataclass
class _Remote:
    job: RunJob
    record: RunRecord
    attempt: str
    payload: bytes
    done: asyncio.Future[RunOutcome]
    t0: float = field(default_factory=time.perf_counter)
    routed: str | None = None  # the worker whose stream holds the job; None: the shared group
    worker: str | None = None  # the worker that claimed it
    dispatched: bool = False
    cancel_sent: bool = False
    effective_mode: str | None = None


class RemoteRuns:
    """Runs on `runwire worker` processes through Redis (see the module docstring)."""

    def __init__(self, url: str, *, lease_ttl: float = 10.0, consumer: str = "api") -> None:
        self.url = url
        self.lease_ttl = lease_ttl
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)
        self._consumer = consumer
        self._inflight: dict[str, _Remote] = {}
        self._tasks = TaskSupervisor("remote-runs")  # the report consumer and the watcher
        self.available = True
        self._grace_until = 0.0
        self._figures_at = 0.0
        # For /metrics and GET /v1/workers, refreshed by the watcher (never on a scrape).
        self.figures: dict[str, Any] = {}
        self.workers: list[dict[str, Any]] = []
        # Runs a restart interrupted that a worker may still be computing: told to stop.
        self._abandoned: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the report consumer and the watcher (on the running loop)."""
        self._tasks.spawn(self._consume(), name="runwire-reports")
        self._tasks.spawn(self._watch(), name="runwire-workers-watch")

    @property
    def task_failures(self) -> int:
        """Failures of the report consumer and the watcher nobody awaited (for /metrics)."""
        return self._tasks.failures

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self.redis.aclose()

    async def check(self) -> None:
        """Raise BROKER_UNAVAILABLE (503, `Retry-After`) unless Redis answers now."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            self.available = False
            raise ServiceError(
                "BROKER_UNAVAILABLE",
                "the run queue (Redis) is unreachable; retry later",
                headers={"Retry-After": RETRY_AFTER_S},
            ) from exc

    def abandon(self, run_ids: list[str]) -> None:
        """Runs this node ended `interrupted` at a restart: any worker still computing one is
        told to stop (its cancel key, set by the watcher once Redis answers)."""
        self._abandoned.extend(run_ids)

    # -- one run -------------------------------------------------------------------------------

    async def execute(
        self, job: RunJob, record: RunRecord, *, pipeline_text: str, expect_cache: bool
    ) -> RunOutcome:
        attempt = uuid.uuid4().hex
        wire = RemoteJob(
            run_id=job.run_id,
            session_id=job.session_id,
            attempt=attempt,
            pipeline_text=pipeline_text,
            sources=dict(job.accepted),
            mode=job.mode,
            changed_sources=list(job.changed_sources),
            cache_lost=job.cache_lost,
            expect_cache=expect_cache,
            sinks={
                k: SourceRecord(type=v.type, location=v.location, options=dict(v.options))
                for k, v in job.sinks.items()
            },
            write_roots=[str(p) for p in job.write_roots],
        )
        loop = asyncio.get_running_loop()
        state = _Remote(job, record, attempt, ENCODER.encode(wire), loop.create_future())
        self._inflight[job.run_id] = state
        try:
            delay = 0.05
            while not state.dispatched:
                if job.cancel.cancelled:  # cancelled while Redis was down: it never ran
                    return RunOutcome(status=RunStatus.CANCELLED)
                try:
                    await self._dispatch(state)
                except (RedisError, OSError) as exc:
                    self.available = False
                    log.warning("run %s: cannot queue it on Redis (%s); retrying", job.run_id, exc)
                    await asyncio.sleep(delay)  # backoff between attempts
                    delay = min(delay * 2, 2.0)
            return await state.done
        finally:
            self._inflight.pop(job.run_id, None)

    async def _dispatch(self, state: _Remote, *, shared: bool = False) -> None:
        sid = state.job.session_id
        holder = None if shared else await self.redis.get(lease_key(sid))
        target = None
        if holder is not None and await self.redis.exists(heartbeat_key(text(holder))):
            target = text(holder)
        stream = worker_jobs(target) if target is not None else JOBS
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(attempt_key(state.job.run_id), state.attempt, ex=MARKER_TTL_S)
        pipe.xadd(stream, {b"job": state.payload})
        await pipe.execute()
        state.routed = target
        state.dispatched = True

    # -- reports -------------------------------------------------------------------------------

    async def _consume(self) -> None:
        await self._ensure_group()
        cursor = "0"  # first what this consumer read before a restart and never acknowledged
        while True:
            got: Any
            try:
                got = await self.redis.xreadgroup(
                    API_GROUP, self._consumer, {REPORTS: cursor}, count=512, block=1000
                )
            except (RedisError, OSError) as exc:
                self.available = False
                # A batch Redis delivered but we never received stays pending to this
                # consumer: read those again first.
                cursor = "0"
                log.warning("reports: Redis unavailable (%s); retrying", exc)
                await asyncio.sleep(0.5)  # backoff between attempts
                with contextlib.suppress(RedisError, OSError):
                    await self._ensure_group()
                continue
            entries = [e for _stream, batch in got or () for e in batch]
            if cursor == "0" and not entries:
                cursor = ">"
                continue
            if entries:
                await self._handle([(msg_id, fields) for msg_id, fields in entries])

    async def _ensure_group(self) -> None:
        for stream, group in ((REPORTS, API_GROUP), (JOBS, WORKER_GROUP)):
            try:
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        steps: list[Callable[[], None]] = []

        async def flush() -> None:
            if steps:
                batch = list(steps)
                steps.clear()
                # The publisher writes the journal: not on the loop. The gate may hold them
                # until the run's start is announced (the loop stays free to announce it).
                await anyio.to_thread.run_sync(lambda: [emit() for emit in batch])

        for raw in [line for _msg_id, fields in entries for line in report_lines(fields)]:
            try:
                report = REPORT_DECODER.decode(raw)
            except msgspec.DecodeError:
                log.error("reports: an unreadable report was dropped")
                continue
            state = self._inflight.get(report.run_id)
            if state is None or state.attempt != report.attempt or state.done.done():
                continue  # a run this node gave up on (worker lost, restart): nothing to say
            job = state.job
            state.worker = report.worker
            if isinstance(report, StepReport):
                steps.append(
                    partial(
                        job.gate.emit,
                        partial(
                            job.publisher.emit, report.type, job.session_id, report.data, job.run_id
                        ),
                    )
                )
            elif isinstance(report, StartedReport):
                await flush()
                state.effective_mode = report.effective_mode
                state.record.worker = report.worker  # committed with `running`
                if report.cache_lost and state.record.fallback_reason is None:
                    state.record.fallback_reason = CACHE_LOST
                job.on_started(RunInfo(
                    pipeline_name=job.spec.name, pipeline_version=job.spec.version,
                    mode=job.mode, effective_mode=report.effective_mode,
                    dirty_steps=tuple(report.dirty_steps),
                    skipped_steps=tuple(report.skipped_steps),
                ))  # fmt: skip
            elif isinstance(report, OutcomeReport):
                await flush()
                wire = report.outcome
                outcome = RunOutcome(
                    status=wire.status, effective_mode=wire.effective_mode,
                    dirty_steps=wire.dirty_steps, skipped_steps=wire.skipped_steps,
                    step_durations_s=wire.step_durations_s, step_states=wire.step_states,
                    artifacts=wire.artifacts, error=wire.error, elapsed_s=wire.elapsed_s,
                    manifest=wire.manifest,
                )  # fmt: skip
                if not state.done.done():
                    state.done.set_result(outcome)
        await flush()
        ids = [msg_id for msg_id, _ in entries]
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xack(REPORTS, API_GROUP, *ids)
                pipe.xdel(REPORTS, *ids)
                await pipe.execute()
                return
            except (RedisError, OSError):
                self.available = False
                await asyncio.sleep(0.5)  # backoff: acknowledged once Redis is back

    # -- the watcher ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                await self.redis.ping()
                if not self.available:
                    self.available = True
                    # Their keys may have expired meanwhile: workers (beating every TTL/3) get
                    # a whole TTL to show up again before any is declared dead.
                    self._grace_until = time.monotonic() + self.lease_ttl
                    await self._redispatch_unclaimed()
                await self._watch_once()
            except (RedisError, OSError) as exc:
                if self.available:
                    log.warning("run queue: Redis unavailable (%s)", exc)
                self.available = False
            await asyncio.sleep(POLL_S)  # the watcher's period

    async def _redispatch_unclaimed(self) -> None:
        """After an outage, queue again every run no worker has claimed: a Redis restarted
        without its append-only file has forgotten them. Where the first job survived, the
        claim (SET NX per dispatch) lets only one of the two run."""
        for state in list(self._inflight.values()):
            if state.dispatched and state.worker is None and not state.done.done():
                await self._dispatch(state)

    async def _watch_once(self) -> None:
        if self._abandoned:
            pipe = self.redis.pipeline(transaction=False)
            for run_id in self._abandoned:
                pipe.set(cancel_key(run_id), b"1", ex=MARKER_TTL_S)
            await pipe.execute()
            self._abandoned.clear()
        states = [s for s in self._inflight.values() if s.dispatched and not s.done.done()]
        for state in states:
            if state.job.cancel.cancelled and not state.cancel_sent:
                await self.redis.set(cancel_key(state.job.run_id), b"1", ex=MARKER_TTL_S)
                state.cancel_sent = True
        unclaimed = [s for s in states if s.worker is None]
        if unclaimed:
            keys = [claim_key(s.job.run_id, s.attempt) for s in unclaimed]
            for state, holder in zip(unclaimed, await self.redis.mget(keys), strict=True):
                if holder is not None:
                    state.worker = text(holder)
        names = sorted({n for s in states for n in (s.worker, s.routed) if n is not None})
        alive: dict[str, bool] = {}
        if names:
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.exists(heartbeat_key(name))
            alive = dict(zip(names, [bool(x) for x in await pipe.execute()], strict=True))
        if time.monotonic() >= self._grace_until:
            for state in states:
                if state.worker is not None and not alive.get(state.worker, True):
                    self._lost(state)
                elif (
                    state.worker is None
                    and state.routed is not None
                    and not alive.get(state.routed, True)
                ):
                    log.warning("run %s: worker %s is gone; re-queued for any worker",
                                state.job.run_id, state.routed)  # fmt: skip
                    await self._dispatch(state, shared=True)
        if time.monotonic() - self._figures_at >= FIGURES_EVERY_S:
            self._figures_at = time.monotonic()
            await self._refresh_figures()

    def _lost(self, state: _Remote) -> None:
        log.warning("run %s: worker %s lost its heartbeat; run interrupted",
                    state.job.run_id, state.worker)  # fmt: skip
        state.done.set_result(RunOutcome(
            status=RunStatus.INTERRUPTED,
            effective_mode=state.effective_mode,
            error=RunError(code=WORKER_LOST,
                           message=f"worker {state.worker} stopped (its lease expired)"),
            elapsed_s=time.perf_counter() - state.t0,
        ))  # fmt: skip

    async def _refresh_figures(self) -> None:
        names = sorted(text(n) for n in await self.redis.smembers(WORKERS))
        infos = await self.redis.mget([heartbeat_key(n) for n in names]) if names else []
        workers: list[dict[str, Any]] = []
        for name, raw in zip(names, infos, strict=True):
            if raw is None:
                workers.append({"name": name, "alive": False})
                continue
            info = msgspec.to_builtins(INFO_DECODER.decode(raw))
            workers.append({**info, "alive": True})
        gone = [w["name"] for w in workers if not w["alive"]]
        if gone:  # listed once as gone, then forgotten: the set stays bounded
            await self.redis.srem(WORKERS, *gone)
        leases: Counter[str] = Counter()
        lease_keys = [k async for k in self.redis.scan_iter(match=lease_key("*"), count=500)]
        if lease_keys:
            for holder in await self.redis.mget(lease_keys):
                if holder is not None:
                    leases[text(holder)] += 1
        depth = await self.redis.xlen(JOBS)
        for w in workers:
            if w["alive"]:
                depth += await self.redis.xlen(worker_jobs(w["name"]))
                w["leases"] = leases.get(w["name"], 0)
        lag = 0
        for group in await self.redis.xinfo_groups(REPORTS):
            if group.get("name") in (API_GROUP, API_GROUP.encode()):
                lag = int(group.get("lag") or 0) + int(group.get("pending") or 0)
        self.workers = workers
        self.figures = {
            "remote_queue_depth": depth,
            "remote_leases": dict(leases),
            "remote_workers_alive": sum(1 for w in workers if w["alive"]),
            "remote_reports_lag": lag,
            "remote_runs_inflight": len(self._inflight),
        }
