"""`runwire worker`: a process that takes runs from Redis and computes them with `execute_run`.

The worker never touches the SQLite store or the event broker: it reads jobs
(`service.runtime.remote_wire.RemoteJob`) from its own stream and from the shared one (consumer
group `workers`), runs each one with the very `execute_run` a local run uses, writing outputs
and sinks into the run directory on the shared data directory, and reports the plan, every
`step.*` event and the outcome on the `reports` stream, which the API node turns into the
run's records and events (`service.runtime.remote`).

Affinity: the worker keeps each session's `IncrementalCache` (at most `max_sessions`, least
recently used dropped first) and a lease on it in Redis (`lease:<session>`, PX `lease_ttl`),
renewed by the heartbeat thread with its own heartbeat key. A lease it fails to renew (it was
cut off from Redis for longer than the TTL, and another worker may have run the session since)
drops that session's cache, so a stale cache is never used. Everything is synchronous: the
redis-py sync client, one thread per run (`threads`), one heartbeat thread.

Redis errors are retried with a capped backoff: a report is never dropped, a run's thread waits
for Redis rather than lose its outcome.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis
from redis.exceptions import RedisError, ResponseError

from pipeline.cancel import CancelToken
from pipeline.incremental import IncrementalCache
from pipeline.loader import PipelineSpec
from pipeline.observer import RunInfo
from pipeline.rundir import RunDirectory
from service.contract.errors import ServiceError
from service.contract.records import RunError, RunStatus
from service.runtime.execution import RunJob, StartGate, execute_run
from service.runtime.remote_wire import (
    ENCODER,
    JOB_DECODER,
    JOBS,
    MARKER_TTL_S,
    REPORTS,
    WORKER_GROUP,
    WORKERS,
    OutcomeReport,
    OutcomeWire,
    RemoteJob,
    Report,
    StartedReport,
    StepReport,
    WorkerInfo,
    attempt_key,
    cancel_key,
    claim_key,
    heartbeat_key,
    lease_key,
    report_entry,
    text,
    worker_jobs,
)
from service.runtime.run_inputs import source_specs
from service.runtime.validation import parse_pipeline
from streaming.envelope import utc_now

__all__ = ["Worker", "WorkerSettings"]

log = logging.getLogger("service.runtime.worker")

T = TypeVar("T")

# Renew a lease only if this worker still holds it (compare-and-pexpire).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
CANCEL_POLL_S = 0.25  # how often running runs' cancel keys are looked at
STEP_BATCH = 64  # step reports held before they are sent in one round trip
STEP_FLUSH_S = 0.1  # ... or once the oldest is this old (progress stays live)
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True)
class WorkerSettings:
    """`runwire worker`'s settings (`service.cli.worker` builds them from flags and env)."""

    broker: str
    data_dir: Path
    name: str = ""
    threads: int = 1
    lease_ttl: float = 10.0
    max_sessions: int = 64  # session caches held; past it the least recently used is dropped

    @property
    def worker_name(self) -> str:
        return self.name or default_name()


class _Running:
    def __init__(self, job: RemoteJob) -> None:
        self.job = job
        self.cancel = CancelToken()


class Worker:
    """One worker process's loop (see the module docstring). `run()` blocks until `stop()`."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.name = settings.worker_name
        self.ttl_ms = max(int(settings.lease_ttl * 1000), 100)
        self.redis = redis.Redis.from_url(
            settings.broker, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._caches: OrderedDict[str, IncrementalCache] = OrderedDict()
        self._specs: OrderedDict[str, PipelineSpec] = OrderedDict()
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._started_utc = utc_now()
        self._runs_done = 0
        self._out_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._outbox: list[bytes] = []  # reports not yet sent (bounded: STEP_BATCH)
        self._outbox_since = 0.0
        self._taken: set[bytes] = set()  # job messages being run (not yet acknowledged)
        self._last_claim = 0.0
        self._pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="runwire-run")

    # -- the loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking runs; `run()` returns once the running ones have ended."""
        self._stop.set()
        with self._idle:
            self._idle.notify_all()

    def run(self) -> None:
        """Register, then take jobs until `stop()`; running runs finish before it returns."""
        self._retry(self._register)
        beat = threading.Thread(target=self._heartbeat_loop, name="runwire-heartbeat", daemon=True)
        beat.start()
        log.info("worker %s taking runs from %s", self.name, self.settings.broker)
        while not self._stop.is_set():
            with self._idle:
                free = self.settings.threads - len(self._running)
                if free <= 0:
                    self._idle.wait(1.0)
                    continue
            try:
                batches = self._read(free)
            except RedisError as exc:
                log.warning("worker %s: Redis unavailable (%s); retrying", self.name, exc)
                self._stop.wait(0.5)  # backoff between attempts
                with contextlib.suppress(RedisError):
                    self._register()  # a Redis that lost its data has lost our groups too
                continue
            taken = 0
            for stream, entries in batches:
                for msg_id, fields in entries:
                    if taken >= free:
                        break  # left pending to this worker: read again with id 0 next time
                    if msg_id in self._taken:
                        continue
                    if fields is None:  # deleted while pending: acknowledge, nothing to run
                        self._retry(partial(self._forget, stream, msg_id))
                        continue
                    taken += 1
                    self._take(stream, msg_id, fields)
        self._pool.shutdown(wait=True)
        self._retry(self._unregister)

    def _read(self, free: int) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]]:
        """Up to about `free` job messages: first any delivered to this worker and not yet
        taken (after a restart or an over-read), then its own stream, then the shared group,
        then (every half TTL) jobs a dead worker read from the shared group and never took."""
        mine = worker_jobs(self.name)
        pending = self.redis.xreadgroup(
            WORKER_GROUP, self.name, {mine: "0", JOBS: "0"}, count=free + len(self._taken)
        )
        batches = self._named(pending)
        if any(m not in self._taken for _, entries in batches for m, _f in entries):
            return batches
        if time.monotonic() - self._last_claim > self.settings.lease_ttl / 2:
            self._last_claim = time.monotonic()
            claimed = self.redis.xautoclaim(
                JOBS, WORKER_GROUP, self.name, min_idle_time=self.ttl_ms, count=free
            )
            if claimed and claimed[1]:
                return [(JOBS, claimed[1])]
        own = self._named(self.redis.xreadgroup(WORKER_GROUP, self.name, {mine: ">"}, count=free))
        if own:
            return own
        return self._named(self.redis.xreadgroup(
            WORKER_GROUP, self.name, {mine: ">", JOBS: ">"}, count=free, block=1000
        ))  # fmt: skip

    @staticmethod
    def _named(got: Any) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]]:
        out = []
        for stream, entries in got or ():
            name = text(stream)
            if entries:
                out.append((name, entries))
        return out

    def _take(self, stream: str, msg_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            job = JOB_DECODER.decode(fields[b"job"])
        except (KeyError, msgspec.DecodeError):
            log.error("worker %s: dropping an unreadable job message %r", self.name, msg_id)
            self._retry(lambda: self._forget(stream, msg_id))
            return
        current = self._retry(lambda: self.redis.get(attempt_key(job.run_id)))
        claim = claim_key(job.run_id, job.attempt)
        if (
            current is None
            or text(current) != job.attempt
            or not self._retry(lambda: self.redis.set(claim, self.name, nx=True, ex=MARKER_TTL_S))
        ):
            # A stale dispatch, or one another worker took (a re-routed job): not ours.
            self._retry(lambda: self._forget(stream, msg_id))
            return
        running = _Running(job)
        with self._lock:
            self._running[job.run_id] = running
            self._taken.add(msg_id)
        self._pool.submit(self._run_job, stream, msg_id, running)

    def _forget(self, stream: str, msg_id: bytes) -> None:
        pipe = self.redis.pipeline()
        pipe.xack(stream, WORKER_GROUP, msg_id)
        pipe.xdel(stream, msg_id)
        pipe.execute()

    # -- one run -------------------------------------------------------------------------------

    def _run_job(self, stream: str, msg_id: bytes, running: _Running) -> None:
        job = running.job
        try:
            self._retry(
                lambda: self.redis.set(lease_key(job.session_id), self.name, px=self.ttl_ms)
            )
            spec = self._spec(job.pipeline_text)
            cache, had = self._cache(job.session_id)
            cache_lost = job.cache_lost or (job.expect_cache and not had)
            if cache_lost:
                cache.clear()
            gate = StartGate()
            gate.open()  # the API node orders events; here each goes straight to the stream
            run_job = RunJob(
                run_id=job.run_id,
                session_id=job.session_id,
                spec=spec,
                cache=cache,
                sources=source_specs(job.sources),
                accepted=job.sources,
                mode=job.mode,
                changed_sources=tuple(job.changed_sources),
                cache_lost=cache_lost,
                cancel=running.cancel,
                run_dir=RunDirectory(self.settings.data_dir / "runs" / job.session_id / job.run_id),
                publisher=_ReportSink(self, job),
                on_started=lambda info: self._started(job, info, cache_lost),
                sinks=job.sinks,
                write_roots=tuple(Path(p) for p in job.write_roots),
                gate=gate,
            )
            outcome = execute_run(run_job)
            wire = OutcomeWire(
                status=outcome.status,
                effective_mode=outcome.effective_mode,
                dirty_steps=outcome.dirty_steps,
                skipped_steps=outcome.skipped_steps,
                step_durations_s=outcome.step_durations_s,
                step_states=outcome.step_states,
                artifacts=outcome.artifacts,
                error=outcome.error,
                elapsed_s=outcome.elapsed_s,
                manifest=outcome.manifest,
            )
            self.report(OutcomeReport(run_id=job.run_id, attempt=job.attempt,
                                      worker=self.name, outcome=wire))  # fmt: skip
            self._retry(lambda: self._forget(stream, msg_id))
        except Exception as exc:
            # Outside `execute_run` (which never raises): the pipeline does not load here (a
            # pipeline package missing on this machine), or a bug. The run fails, saying so;
            # the worker goes on.
            log.exception("worker %s: run %s", self.name, job.run_id)
            detail = str(exc)
            if isinstance(exc, ServiceError) and exc.errors:  # name the unknown step
                detail += ": " + "; ".join(f"{e['path']}: {e['message']}" for e in exc.errors)
            error = RunError(code="INTERNAL", message=f"worker {self.name}: {detail}",
                             exception_type=type(exc).__name__)  # fmt: skip
            self.report(OutcomeReport(run_id=job.run_id, attempt=job.attempt, worker=self.name,
                                      outcome=OutcomeWire(status=RunStatus.FAILED, error=error)))  # fmt: skip
            self._retry(lambda: self._forget(stream, msg_id))
        finally:
            with self._idle:
                self._running.pop(job.run_id, None)
                self._taken.discard(msg_id)
                self._runs_done += 1
                self._idle.notify_all()

    def _started(self, job: RemoteJob, info: RunInfo, cache_lost: bool) -> None:
        self.report(StartedReport(
            run_id=job.run_id, attempt=job.attempt, worker=self.name,
            effective_mode=info.effective_mode, dirty_steps=list(info.dirty_steps),
            skipped_steps=list(info.skipped_steps), cache_lost=cache_lost,
        ))  # fmt: skip

    def report(self, report: Report) -> None:
        """Send one report on the `reports` stream (retried until Redis takes it).

        Step events are batched: held (in order) until the run's next start or outcome report,
        `STEP_BATCH` of them, or `STEP_FLUSH_S` of age (the heartbeat thread flushes those), and
        then sent as one stream entry: a run emits dozens of them, and one round trip (or even
        one entry) each would cost more than a small frame's whole reduction.
        """
        raw = ENCODER.encode(report)
        with self._out_lock:
            self._outbox.append(raw)
            if len(self._outbox) == 1:
                self._outbox_since = time.monotonic()
            if isinstance(report, StepReport) and len(self._outbox) < STEP_BATCH:
                return
        self.flush_reports()

    def flush_reports(self, older_than: float = 0.0) -> None:
        """Send the held reports (only if the oldest is `older_than` seconds old)."""
        with self._send_lock:  # one sender at a time: reports keep their order
            with self._out_lock:
                if not self._outbox or time.monotonic() - self._outbox_since < older_than:
                    return
                batch, self._outbox = self._outbox, []

            entry: Any = report_entry(batch)  # one XADD for the batch

            def send() -> None:
                self.redis.xadd(REPORTS, entry)

            self._retry(send)

    def _spec(self, text: str) -> PipelineSpec:
        with self._lock:
            spec = self._specs.get(text)
            if spec is not None:
                self._specs.move_to_end(text)
                return spec
        spec = parse_pipeline(text)
        with self._lock:
            self._specs[text] = spec
            while len(self._specs) > self.settings.max_sessions:
                self._specs.popitem(last=False)
        return spec

    def _cache(self, session_id: str) -> tuple[IncrementalCache, bool]:
        with self._lock:
            cache = self._caches.get(session_id)
            had = cache is not None
            if cache is None:
                cache = self._caches[session_id] = IncrementalCache()
            self._caches.move_to_end(session_id)
            busy = {r.job.session_id for r in self._running.values()}
            dropped = [sid for sid in self._caches if sid not in busy and sid != session_id][
                : max(0, len(self._caches) - self.settings.max_sessions)
            ]
            for sid in dropped:
                del self._caches[sid]
        for sid in dropped:  # its lease goes too: its next run is routed anywhere, in full
            self._retry(partial(self._release, keys=[lease_key(sid)], args=[self.name]))
        return cache, had

    # -- heartbeat, leases, cancels ------------------------------------------------------------

    def _info(self) -> WorkerInfo:
        with self._lock:
            return WorkerInfo(
                name=self.name, pid=os.getpid(), host=socket.gethostname(),
                threads=self.settings.threads, running=sorted(self._running),
                sessions=len(self._caches), started_utc=self._started_utc,
                runs_done=self._runs_done,
            )  # fmt: skip

    def _register(self) -> None:
        for stream in (JOBS, worker_jobs(self.name)):
            try:
                self.redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._beat()
        self.redis.sadd(WORKERS, self.name)

    def _unregister(self) -> None:
        with self._lock:
            sessions = list(self._caches)
        for sid in sessions:
            self._release(keys=[lease_key(sid)], args=[self.name])
        self.redis.delete(heartbeat_key(self.name))

    def _beat(self) -> None:
        self.redis.set(heartbeat_key(self.name), ENCODER.encode(self._info()), px=self.ttl_ms)
        self.redis.sadd(WORKERS, self.name)  # listed again after Redis lost its data
        with self._lock:
            sessions = list(self._caches)
        if not sessions:
            return
        pipe = self.redis.pipeline(transaction=False)
        for sid in sessions:
            self._renew(keys=[lease_key(sid)], args=[self.name, self.ttl_ms], client=pipe)
        renewed = pipe.execute()
        with self._lock:
            busy = {r.job.session_id for r in self._running.values()}
            for sid, ok in zip(sessions, renewed, strict=True):
                if not ok and sid not in busy:
                    # Another worker may have run the session since: this cache is stale.
                    self._caches.pop(sid, None)
                    log.info("worker %s: lease on session %s lost; cache dropped", self.name, sid)

    def _heartbeat_loop(self) -> None:
        every = self.settings.lease_ttl / 3
        last = time.monotonic()
        while not self._stop.wait(CANCEL_POLL_S):
            try:
                self.flush_reports(older_than=STEP_FLUSH_S)
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    self._beat()
                with self._lock:
                    running = list(self._running.values())
                if running:
                    pipe = self.redis.pipeline(transaction=False)
                    for r in running:
                        pipe.exists(cancel_key(r.job.run_id))
                    for r, flagged in zip(running, pipe.execute(), strict=True):
                        if flagged:
                            r.cancel.cancel()
            except RedisError as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.name, exc)

    def _retry(self, call: Callable[[], T]) -> T:
        delay = 0.05
        while True:
            try:
                return call()
            except RedisError as exc:
                log.warning("worker %s: Redis unavailable (%s); retrying", self.name, exc)
                time.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, MAX_BACKOFF_S)


class _ReportSink:
    """A run's `step.*` events, as reports on the stream (the API node publishes them)."""

    def __init__(self, worker: Worker, job: RemoteJob) -> None:
        self._worker = worker
        self._job = job

    def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> None:
        self._worker.report(StepReport(run_id=self._job.run_id, attempt=self._job.attempt,
                                       worker=self._worker.name, type=type, data=data))  # fmt: skip


def default_name() -> str:
    """A name unique on this machine and across restarts: host, pid and a short random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
