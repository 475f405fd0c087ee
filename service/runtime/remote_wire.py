"""The run side of Redis: key names and the messages between the API node and `runwire worker`.

Both sides import this module only (the API node's `service.runtime.remote`, the worker's
`service.runtime.worker`), so a key or a field cannot drift between them. Keys (all under
`runwire:runs:`, apart from the event side's keys):

- `jobs` (stream, consumer group `workers`): runs of sessions no live worker holds;
- `jobs:<worker>` (stream, group `workers`): runs of the sessions that worker holds a lease on;
- `reports` (stream, consumer group `api`): what workers report back, read by the API node;
  an entry's field `rs` holds a batch of reports in order, one JSON text per line (`r`: one);
- `lease:<session>` (string, PX `--lease-ttl`): the worker holding the session's cache;
- `worker:<name>` (string, PX `--lease-ttl`): a worker's heartbeat, its `WorkerInfo` as JSON;
- `workers` (set): names of workers seen, for `GET /v1/workers`;
- `attempt:<run>`: the current dispatch of a run (a stale job message is skipped);
- `claim:<run>:<attempt>`: which worker took that dispatch (SET NX: one worker runs it);
- `cancel:<run>`: set by the API node when a client cancels a run a worker has.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.contract.records import RunError, RunSource, RunStatus, SourceRecord, StepStateRecord

__all__ = [
    "API_GROUP",
    "JOBS",
    "REPORTS",
    "WORKERS",
    "WORKER_GROUP",
    "OutcomeReport",
    "RemoteJob",
    "Report",
    "StartedReport",
    "StepReport",
    "WorkerInfo",
    "attempt_key",
    "cancel_key",
    "claim_key",
    "heartbeat_key",
    "lease_key",
    "report_entry",
    "report_lines",
    "text",
    "worker_jobs",
]

PREFIX = "runwire:runs:"
JOBS = PREFIX + "jobs"
REPORTS = PREFIX + "reports"
WORKERS = PREFIX + "workers"
WORKER_GROUP = "workers"
API_GROUP = "api"
# A claim, attempt or cancel key outlives any run; it only has to outlast the job message.
MARKER_TTL_S = 7 * 24 * 3600


def text(value: bytes | str) -> str:
    """A Redis reply as text (the clients answer bytes unless asked to decode)."""
    return value.decode() if isinstance(value, bytes) else value


def worker_jobs(name: str) -> str:
    return f"{PREFIX}jobs:{name}"


def lease_key(session_id: str) -> str:
    return f"{PREFIX}lease:{session_id}"


def heartbeat_key(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def attempt_key(run_id: str) -> str:
    return f"{PREFIX}attempt:{run_id}"


def claim_key(run_id: str, attempt: str) -> str:
    return f"{PREFIX}claim:{run_id}:{attempt}"


def cancel_key(run_id: str) -> str:
    return f"{PREFIX}cancel:{run_id}"


class RemoteJob(msgspec.Struct, kw_only=True):
    """Everything a worker needs to build the same `RunJob` the API node would run locally."""

    run_id: str
    session_id: str
    attempt: str
    pipeline_text: str
    sources: dict[str, RunSource]  # as accepted (with file identities), run-request.json's
    mode: str
    changed_sources: list[str] = msgspec.field(default_factory=list)
    cache_lost: bool = False
    # The session has run before: a worker without its cache plans full with `cache_lost`.
    expect_cache: bool = False
    sinks: dict[str, SourceRecord] = msgspec.field(default_factory=dict)
    write_roots: list[str] = msgspec.field(default_factory=list)


class StartedReport(msgspec.Struct, tag="started", tag_field="kind", kw_only=True):
    """The runner planned: the API node commits `running` and publishes `run.started`."""

    run_id: str
    attempt: str
    worker: str
    effective_mode: str
    dirty_steps: list[str] = msgspec.field(default_factory=list)
    skipped_steps: list[str] = msgspec.field(default_factory=list)
    cache_lost: bool = False


class StepReport(msgspec.Struct, tag="step", tag_field="kind", kw_only=True):
    """One `step.*` event, published by the API node after `run.started`."""

    run_id: str
    attempt: str
    worker: str
    type: str
    data: dict[str, Any]


class OutcomeWire(msgspec.Struct, kw_only=True):
    """`service.runtime.execution.RunOutcome` on the wire."""

    status: RunStatus
    effective_mode: str | None = None
    dirty_steps: list[str] = msgspec.field(default_factory=list)
    skipped_steps: list[str] = msgspec.field(default_factory=list)
    step_durations_s: dict[str, float] = msgspec.field(default_factory=dict)
    step_states: dict[str, StepStateRecord] = msgspec.field(default_factory=dict)
    artifacts: list[str] = msgspec.field(default_factory=list)
    error: RunError | None = None
    elapsed_s: float = 0.0
    manifest: dict[str, Any] | None = None


class OutcomeReport(msgspec.Struct, tag="outcome", tag_field="kind", kw_only=True):
    """The run ended on the worker: the API node records it and publishes the terminal event."""

    run_id: str
    attempt: str
    worker: str
    outcome: OutcomeWire


Report = StartedReport | StepReport | OutcomeReport


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A worker's heartbeat value (`GET /v1/workers` lists these)."""

    name: str
    pid: int
    host: str
    threads: int
    running: list[str] = msgspec.field(default_factory=list)  # run ids
    sessions: int = 0  # sessions whose cache (and lease) it holds
    started_utc: str = ""
    runs_done: int = 0


ENCODER = msgspec.json.Encoder()
JOB_DECODER = msgspec.json.Decoder(RemoteJob)
REPORT_DECODER = msgspec.json.Decoder(Report)
INFO_DECODER = msgspec.json.Decoder(WorkerInfo)


def report_entry(reports: list[bytes]) -> dict[bytes, bytes]:
    """The `reports` stream entry holding encoded reports in order: field `rs`, one per line
    (compact JSON has no raw newline). One XADD for a batch, not one per report."""
    return {b"rs": b"\n".join(reports)}


def report_lines(fields: dict[bytes, bytes] | None) -> list[bytes]:
    """The encoded reports of a `reports` entry, in order: a batch (`rs`), or the single
    report (`r`) that workers of an earlier release send; [] for anything else."""
    if not fields:
        return []
    if b"rs" in fields:
        return fields[b"rs"].split(b"\n")
    if b"r" in fields:
        return [fields[b"r"]]
    return []
