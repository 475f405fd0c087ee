"""Read-only views of the runtime: dry-run plans, latest errors, readiness.

Split from `service.runtime.facade` so the facade stays about changing things; nothing here changes
state. Planning reads source files (signatures), so it runs in a worker thread.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from pipeline.planning import plan_run
from service.contract.models import DryRunResult, LatestErrors, ProcessRequest
from service.contract.records import RunStatus
from service.runtime.conversions import dry_run_result
from service.runtime.memory import CACHE_EVICTED
from service.runtime.scheduler import Scheduler, SessionEntry
from service.runtime.transitions import is_error

__all__ = ["dry_run", "latest_errors", "readiness"]


async def dry_run(entry: SessionEntry, req: ProcessRequest) -> DryRunResult:
    """What a run would do now: effective mode, dirty steps with reasons; runs nothing."""
    sources = entry.source_specs()
    evicted = entry.cache_evicted and not entry.cache_lost
    plan = await anyio.to_thread.run_sync(
        lambda: plan_run(
            entry.spec,
            sources,
            entry.cache,
            mode=req.mode,
            changed_sources=tuple(req.changed_sources),
            cache_lost=entry.cache_lost or evicted,
        )
    )
    if evicted:
        # The planner knows one reason for a cache that is gone; the service knows which.
        plan.reasons = {
            step: [CACHE_EVICTED if r == "cache_lost" else r for r in why]
            for step, why in plan.reasons.items()
        }
    unset = [ref for ref in entry.record.required_source_refs if ref not in entry.record.sources]
    return dry_run_result(plan, also_missing=unset)


async def latest_errors(sched: Scheduler, entry: SessionEntry) -> LatestErrors:
    """`current_error` while the session is in an error state; the latest failure regardless."""
    sid = entry.record.session_id
    failed = await sched.io(sched.store.list_runs, sid, [RunStatus.FAILED.value])
    latest = failed[-1] if failed else None
    record = entry.record
    current = record.last_run.error if is_error(record.state) and record.last_run else None
    return LatestErrors(
        session_id=sid,
        state=record.state,
        active_run_id=record.active_run_id,
        updated_utc=record.updated_utc,
        current_error=current,
        latest_error=latest.error if latest is not None else None,
        latest_failed_run=latest,
    )


def readiness(sched: Scheduler, subscriber_count: int) -> dict[str, Any]:
    """Readiness and queue figures (contract `GET /readiness`).

    `unavailable` (not ready) while shutting down or after a store failure; `degraded` (still
    ready) while some session is in an error state; else `ok`.
    """
    sessions = [e for e in sched.sessions.values() if not e.deleted]
    errors = sorted(e.record.session_id for e in sessions if is_error(e.record.state))
    ready = sched.accepting and sched.durable.store_ok
    status = "unavailable" if not ready else ("degraded" if errors else "ok")
    return {
        "status": status,
        "ready": ready,
        "metrics": {
            "session_count": len(sessions),
            "active_run_count": sched.queue.active_count,
            "queued_run_count": len(sched.queue),
            "queue_capacity": sched.queue.capacity,
            "error_session_count": len(errors),
            "error_session_ids": errors,
            "subscriber_count": subscriber_count,
            "last_updated_utc": sched.durable.last_updated_utc,
            # For /metrics only: `GET /readiness` answers the contract's keys (`Readiness`).
            "cache_bytes": sched.cache_bytes,
            "cache_budget_bytes": sched.cache_budget,
            "cache_evictions": sched.cache_evictions,
            "task_failures": sched.tasks.failures
            + (sched.remote.task_failures if sched.remote is not None else 0),
        },
    }
