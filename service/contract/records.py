"""The service's records: the contract's Session and Run objects (section 4).

These Structs are at once what the store persists, what the runtime updates, and what the HTTP
API returns, so the wire shape and the stored shape cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import msgspec

# re-exported: the records are where the rest of the service has always found them
from service.contract.statuses import (
    FINAL_RUN_STATUSES as FINAL_RUN_STATUSES,
)
from service.contract.statuses import (
    RETRYABLE_RUN_STATUSES as RETRYABLE_RUN_STATUSES,
)
from service.contract.statuses import RunStatus as RunStatus
from service.contract.statuses import SessionState as SessionState


class SourceRecord(msgspec.Struct, kw_only=True):
    """A source or sink: `ref -> {type, location, options}`."""

    type: str
    location: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class FileIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """What a source file was when a run was accepted: a rewrite changes at least one of these
    (a rewrite in place keeping size and mtime still changes `ctime_ns`; a replacement by
    rename changes `inode`)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


class RunSource(SourceRecord, kw_only=True):
    """A source as a run was given it at acceptance: the record plus the file's identity then.

    `identity` is None for runs queued by a runwire older than schema version 5 (they read
    whatever the file holds when they start)."""

    identity: FileIdentity | None = None


class SampleRef(msgspec.Struct, kw_only=True):
    """The sample a run reduces (or one a coalesced run superseded): its `sample` source."""

    location: str
    type: str = "hdf5"


class PipelineInfo(msgspec.Struct, kw_only=True):
    name: str
    version: str


class RunError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    failed_step: str | None = None
    exception_type: str | None = None


class StepStateRecord(msgspec.Struct, kw_only=True):
    """`{status, duration_s, error}` (contract: `{status, duration_s, error?}`): every key is
    always present, `error` null unless the step failed, as the Run object's own `error`.
    (Defaults were once omitted, which dropped `duration_s` of a step skipped in 0.0 s.)"""

    status: str  # succeeded | skipped | failed | cancelled | pending
    duration_s: float = 0.0
    error: str | None = None


class RunRecord(msgspec.Struct, kw_only=True):
    """The contract's Run object."""

    run_id: str
    session_id: str
    run_name: str | None = None
    mode: str = "auto"  # as requested: auto | partial | full
    effective_mode: str | None = None  # partial | full, once planned
    status: RunStatus = RunStatus.QUEUED
    queued_utc: str
    started_utc: str | None = None
    finished_utc: str | None = None
    elapsed_s: float | None = None
    dirty_steps: list[str] = msgspec.field(default_factory=list)
    skipped_steps: list[str] = msgspec.field(default_factory=list)
    step_durations_s: dict[str, float] = msgspec.field(default_factory=dict)
    step_states: dict[str, StepStateRecord] = msgspec.field(default_factory=dict)
    fallback_reason: str | None = None
    recovered_from_run_id: str | None = None
    retry_of: str | None = None
    error: RunError | None = None
    artifacts: list[str] = msgspec.field(default_factory=list)
    # The sample this run reduces, fixed when it was accepted (None: no `sample` source).
    sample: SampleRef | None = None
    # Samples of submissions merged into this run by `coalesce: true` that it superseded (each
    # the sample the run held before a merge that changed it), oldest first: no run reduces them.
    coalesced: list[SampleRef] = msgspec.field(default_factory=list)
    # The `runwire worker` that computed it (`serve --runs workers`); None for a local run.
    worker: str | None = None


class SessionRecord(msgspec.Struct, kw_only=True):
    """The contract's Session object."""

    session_id: str
    name: str | None = None
    state: SessionState = SessionState.IDLE
    active_run_id: str | None = None
    queued_run_ids: list[str] = msgspec.field(default_factory=list)
    sources: dict[str, SourceRecord] = msgspec.field(default_factory=dict)
    sinks: dict[str, SourceRecord] = msgspec.field(default_factory=dict)
    source_profile: str | None = None
    required_source_refs: list[str] = msgspec.field(default_factory=list)
    pipeline: PipelineInfo
    last_run: RunRecord | None = None
    created_utc: str
    updated_utc: str
    auto_fallback: bool = True
