"""What the runtime holds in memory for a session (`SessionEntry`) and for a queued or active
run (`LiveRun`). Split from `service.runtime.scheduler` so that the run lifecycle and disk-full
handling can name them without importing the scheduler (no import cycle).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from pipeline.cancel import CancelToken
from pipeline.incremental import IncrementalCache
from pipeline.loader import PipelineSpec
from pipeline.rundir import RunDirectory
from pipeline.step import SourceSpec
from service.contract.records import RunRecord, RunSource, SessionRecord, SessionState
from service.runtime.execution import StartGate

__all__ = ["LiveRun", "SessionEntry", "changed_sources_of"]

log = logging.getLogger("service.runtime.scheduler")


@dataclass(eq=False)
class SessionEntry:
    """A session as the runtime holds it in memory."""

    record: SessionRecord
    spec: PipelineSpec
    pipeline_text: str
    cache: IncrementalCache = field(default_factory=IncrementalCache)
    cache_lost: bool = False  # the service restarted since this session last ran
    resting: SessionState = SessionState.IDLE  # state to return to after a cancelled run
    clear_cache_after_run: bool = False  # `reset full` arrived while a run used the cache
    cache_evicted: bool = False  # the memory budget evicted the cache since the last run
    cache_bytes: int = 0  # the cache's array bytes, measured when its last run ended
    last_used: float = 0.0  # monotonic time its last run ended (LRU order for eviction)
    deleted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def source_specs(self) -> dict[str, SourceSpec]:
        """The session's sources as the runner and the planner take them (copies)."""
        return {
            ref: SourceSpec(type=s.type, location=s.location, options=dict(s.options))
            for ref, s in self.record.sources.items()
        }


def changed_sources_of(request: Any) -> tuple[str, ...]:
    """`changed_sources` of a stored run request (`SessionStore.get_run_request`), or ()."""
    if isinstance(request, dict) and isinstance(request.get("changed_sources"), list):
        return tuple(str(ref) for ref in request["changed_sources"])
    return ()


@dataclass(eq=False)
class LiveRun:
    """A queued or active run."""

    record: RunRecord
    changed_sources: tuple[str, ...]
    run_dir: RunDirectory
    sources: dict[str, RunSource]  # fixed at acceptance: what the run reads
    cancel: CancelToken = field(default_factory=CancelToken)
    started_utc: str | None = None  # taken from the queue (recorded once the run is announced)
    announced: bool = False  # run.started published
    start_task: asyncio.Task[None] | None = None  # committing and announcing the start
    gate: StartGate | None = None  # the run's step events wait in it for run.started
    dir_task: asyncio.Task[None] | None = None  # writing the run directory (see `enqueue`)

    async def dir_ready(self) -> None:
        """Wait until the run directory is written. A failure is logged, not raised: the run
        is committed, its directory is made again when it starts; only the request copy is lost."""
        if self.dir_task is None:
            return
        try:
            await self.dir_task
        except Exception:
            log.exception("run %s: cannot write its run directory", self.record.run_id)
        self.dir_task = None
