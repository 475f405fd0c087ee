"""Wire types of the HTTP API (contract section 4): request bodies and result objects.

The HTTP layer decodes every request body with these Structs (`forbid_unknown_fields`, so a typo
in a field name is a 422 naming the field, not a silently ignored option) and the OpenAPI
document is generated from the same classes, so the two cannot drift apart. The stored objects
(sessions, runs) live in `service.contract.records`; this module holds what only crosses the wire.

Checks that need the file system or the session (path confinement, readable files, required
sources) are the runtime's job; what can be said about a body in isolation is said here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.contract.records import RunError, RunRecord, SampleRef, SessionRecord, SessionState

__all__ = [
    "REF_PATTERN",
    "SESSION_ID_PATTERN",
    "CreateSessionRequest",
    "DryRunResult",
    "LatestErrors",
    "PipelineInput",
    "ProcessRequest",
    "Readiness",
    "ReadinessMetrics",
    "ResetRequest",
    "RunList",
    "SampleRequest",
    "SessionList",
    "SinkInput",
    "SinksRequest",
    "SourceInput",
    "SourceTemplate",
    "SourcesRequest",
    "SubmitResult",
    "TemplateList",
]

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Source and sink refs appear in reasons (`source_changed:REF`) and in file names, so they are
# kept to the same safe alphabet as session ids.
REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"

SessionId = Annotated[str, msgspec.Meta(pattern=SESSION_ID_PATTERN, description="session id")]
Ref = Annotated[str, msgspec.Meta(pattern=REF_PATTERN, description="source or sink ref")]
# Locations are file paths; 4096 is PATH_MAX on Linux.
Location = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Options = dict[str, Any]
SourceType = Literal["hdf5", "npy", "json"]
SinkType = Literal["hdf5", "csv"]
Mode = Literal["auto", "partial", "full"]


class PipelineInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pipeline given inline (`yaml_text`, YAML or JSON) or by a server-side `path`; exactly one."""

    yaml_text: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    path: Location | None = None
    # An installed pipeline package's pipeline (`NAME` or `NAME@VERSION`; `file` picks one of
    # its pipelines, default the first); creating the session activates it (docs/packages.md).
    package: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    file: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None

    def __post_init__(self) -> None:
        # msgspec turns this ValueError into a ValidationError naming `$.pipeline`.
        if (self.yaml_text is not None) + (self.path is not None) + (self.package is not None) != 1:
            raise ValueError("exactly one of `yaml_text`, `path` or `package` is required")


class CreateSessionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions`. Without `session_id` the server picks one."""

    pipeline: PipelineInput
    session_id: SessionId | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    source_profile: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    auto_fallback: bool = True


class SourceInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One source: `{"ref", "type", "location", "options"?}`."""

    ref: Ref
    type: SourceType
    location: Location
    options: Options = msgspec.field(default_factory=dict)


class SourcesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`PUT /v1/sessions/{sid}/sources`: replaces every source of the session."""

    sources: list[SourceInput]


class SinkInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One sink: where a successful run's reduced curve is written (`hdf5` NXcanSAS or `csv`)."""

    ref: Ref
    type: SinkType
    location: Location
    options: Options = msgspec.field(default_factory=dict)


class SinksRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`PUT /v1/sessions/{sid}/sinks`: replaces every sink of the session."""

    sinks: list[SinkInput]


class SampleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/sample`: set source `sample`; with `process` also submit a run."""

    location: Location
    type: SourceType = "hdf5"
    options: Options = msgspec.field(default_factory=dict)
    process: bool = False


class ProcessRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/process` and `.../process/dry-run`."""

    mode: Mode = "auto"
    changed_sources: list[Ref] = msgspec.field(default_factory=list)
    run_name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    coalesce: bool = False


class ResetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/reset`: `partial` clears the error state, `full` also the cache."""

    mode: Literal["partial", "full"]


class SubmitResult(msgspec.Struct, kw_only=True):
    """The 202 answer to a submit: `position` is 0 when the run is next (or already running)."""

    run_id: str
    status: str
    position: int
    # The sample the run reduces (fixed at acceptance), if the session has one.
    sample: SampleRef | None = None
    # True when `coalesce: true` merged this request into an already queued run.
    merged: bool = False
    # The run's superseded samples (see `RunRecord.coalesced`).
    coalesced: list[SampleRef] = msgspec.field(default_factory=list)


class DryRunResult(msgspec.Struct, kw_only=True):
    """What a run would do now, from the planner, without running anything."""

    effective_mode: str
    dirty_steps: list[str]
    skipped_steps: list[str]
    reasons: dict[str, list[str]]
    missing_required_sources: list[str]
    warnings: list[str]
    can_process: bool


class LatestErrors(msgspec.Struct, kw_only=True):
    """`GET /v1/sessions/{sid}/errors/latest`.

    `current_error` is set while the session is in an error state (cleared by a successful run or
    a reset); `latest_error` and `latest_failed_run` keep the most recent failure regardless.
    """

    session_id: str
    state: SessionState
    active_run_id: str | None
    updated_utc: str
    current_error: RunError | None
    latest_error: RunError | None
    latest_failed_run: RunRecord | None


class SourceTemplate(msgspec.Struct, kw_only=True):
    """A built-in source profile (`GET /v1/source-templates`)."""

    name: str
    description: str
    required: list[str]
    optional: list[str]


class SessionList(msgspec.Struct, kw_only=True):
    sessions: list[SessionRecord]


class RunList(msgspec.Struct, kw_only=True):
    """A page of a session's runs, newest first; `next_before` pages on (pass it as `before`),
    null on the last page."""

    runs: list[RunRecord]
    next_before: str | None = None


class TemplateList(msgspec.Struct, kw_only=True):
    templates: list[SourceTemplate]


class ReadinessMetrics(msgspec.Struct, kw_only=True):
    session_count: int
    active_run_count: int
    queued_run_count: int
    queue_capacity: int
    error_session_count: int
    error_session_ids: list[str]
    subscriber_count: int
    last_updated_utc: str | None


class Readiness(msgspec.Struct, kw_only=True):
    """`GET /readiness`: `status` is `ok`, `degraded` (sessions in error) or `unavailable`."""

    status: Literal["ok", "degraded", "unavailable"]
    ready: bool
    metrics: ReadinessMetrics


class WorkerStatus(msgspec.Struct, kw_only=True):
    """One `runwire worker` as the API node last saw it (`GET /v1/workers`)."""

    name: str
    alive: bool
    pid: int | None = None
    host: str | None = None
    threads: int | None = None
    running: list[str] = msgspec.field(default_factory=list)  # run ids it computes now
    sessions: int = 0  # session caches it holds
    leases: int = 0  # session leases it holds in Redis
    started_utc: str | None = None
    runs_done: int = 0


class WorkerList(msgspec.Struct, kw_only=True):
    """`GET /v1/workers`: `runs` is `local` (no workers: runs compute in the API node's threads)
    or `workers`; `queue_depth` counts runs handed to Redis and not yet finished."""

    runs: str
    broker_available: bool
    queue_depth: int = 0
    reports_lag: int = 0
    workers: list[WorkerStatus] = msgspec.field(default_factory=list)
