"""The records of a run: `RunContext` while it runs (what the runner's hooks see), then
`RunResult` and, for a failed run, `RunErrorInfo`. Re-exported by `pipeline.runner`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .cancel import CancelToken
from .exitcodes import ExitCode
from .planning import Plan
from .step import CompletedState, SourceSpec


@dataclass(frozen=True)
class RunErrorInfo:
    """Why a run failed: `code` is the `ExitCode` name."""

    code: str
    message: str
    failed_step: str | None = None
    exception_type: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """The contract's run `error` object: `{code, message, failed_step, exception_type}`."""
        return {"code": self.code, "message": self.message, "failed_step": self.failed_step,
                "exception_type": self.exception_type}  # fmt: skip


@dataclass
class RunResult:
    """The outcome of one run."""

    state: CompletedState  # the run as a whole: succeeded | failed | cancelled
    exit_code: ExitCode
    plan: Plan
    effective_mode: str
    dirty_steps: list[str]  # leaf steps actually executed (failed ones included)
    skipped_steps: list[str]  # leaf steps whose cached (or absent-source) results were reused
    step_states: dict[str, CompletedState]  # full dotted id -> state (nested pipelines too)
    step_durations_s: dict[str, float]
    values: dict[str, Any]  # context key -> value at the end of the run
    artifacts: list[str] = field(default_factory=list)  # relative to artifacts_dir
    error: RunErrorInfo | None = None
    dry_run: bool = False

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def elapsed_s(self) -> float:
        return self.state.duration_s


@dataclass
class RunContext:
    """Everything about one run in progress; passed to the hooks."""

    sources: dict[str, SourceSpec]
    mode: str
    changed_sources: tuple[str, ...]
    cancel: CancelToken
    cache_lost: bool
    dry_run: bool
    plan: Plan | None = None
    values: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)  # context key -> value signature
    states: dict[str, CompletedState] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    error: RunErrorInfo | None = None
    cancelled: bool = False
    force: bool = True
    anchor_wall_ns: int = 0
    anchor_perf_ns: int = 0
    wall_offset_ns: int = 0  # add to a perf_counter_ns reading to get ns since the epoch
    result: RunResult | None = None
    # Steps whose start was announced to the observers (`ProcessingRunner._announce`).
    announced: set[str] = field(default_factory=set)
    announce_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.is_cancelled = self.cancel.is_cancelled
