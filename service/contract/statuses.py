"""Session states and run statuses (contract section 4), spelled once.

Standard library only: the store, the runtime, the HTTP API and the CLI (whose client
commands import nothing heavy at module level) all take them from here.
"""

from __future__ import annotations

import enum

__all__ = ["FINAL_RUN_STATUSES", "RETRYABLE_RUN_STATUSES", "RunStatus", "SessionState"]


class SessionState(enum.StrEnum):
    IDLE = "idle"
    RUNNING_PARTIAL = "running_partial"
    RUNNING_FULL = "running_full"
    ERROR_PARTIAL = "error_partial"
    ERROR_FULL = "error_full"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


FINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED}
)
RETRYABLE_RUN_STATUSES = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED})
