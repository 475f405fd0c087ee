"""A run that ends while the data directory's disk is full (contract sections 4 and 5).

Its outcome cannot be committed (the summary, the manifest and the store row all need space).
It must neither stay `running` forever nor claim a success whose files may be incomplete: it
ends `failed` with error code `STORAGE_FULL`, and its one terminal event is published once the
commit has gone through. The commit is retried with a capped back-off until space is freed,
without a restart. While it waits the session's lock is released, so other requests (a
cancel, a submit of another session...) are answered, with 507 while the disk stays full.

If the service stops first, nothing is published: the store still says `running`, and the
next start ends the run `interrupted` with its one terminal event (service.runtime.recovery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.contract.errors import is_storage_full
from service.contract.records import RunError, RunRecord, RunStatus
from service.runtime.live import SessionEntry
from service.runtime.transitions import error_state
from service.storage.io_thread import snapshot


class Stoppable(Protocol):
    """What the retries need of the scheduler: whether it is shutting down."""

    stopping: bool


__all__ = ["STORAGE_FULL_RUN_ERROR", "RunOutcomeNotRecorded", "commit_outcome", "retry_while_full"]

log = logging.getLogger("service.runtime.diskfull")

# Back-off between attempts to commit while the disk is full: quick at first (space is often
# freed by deleting one file), then at most every few seconds (each attempt is one small write).
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 5.0

STORAGE_FULL_RUN_ERROR = RunError(
    code="STORAGE_FULL",
    message="the data directory's disk was full: the run's outcome and files could not be written",
    exception_type="OSError",
)


class RunOutcomeNotRecorded(Exception):
    """The service stopped before the disk had room for the run's outcome; the next start
    ends the run `interrupted`."""


async def retry_while_full(sched: Stoppable, call: Callable[[], Awaitable[None]]) -> None:
    """Await `call()` until it no longer fails for want of space (other errors propagate).
    Raises `RunOutcomeNotRecorded` if the service starts stopping meanwhile."""
    delay = FIRST_RETRY_S
    while True:
        try:
            await call()
            return
        except Exception as exc:
            if not is_storage_full(exc):
                raise
        if sched.stopping:
            raise RunOutcomeNotRecorded("the service stopped while the disk was full")
        # A retry back-off, not a synchronisation: nothing signals "space freed".
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_S)


async def commit_outcome(
    sched: Stoppable,
    entry: SessionEntry,
    record: RunRecord,
    commit: Callable[[], Awaitable[None]],
) -> None:
    """Commit a finished run with `commit()` (its record, session, summary and terminal event,
    rebuilt from `record` on each call); on a full disk, turn it into a `STORAGE_FULL` failure
    and commit that once there is space. Called with `entry.lock` held; `record` is updated in
    place, so the terminal event tells what was committed."""
    try:
        await commit()
        return
    except Exception as exc:
        if not is_storage_full(exc):
            raise
    log.error(
        "run %s of session %s: the disk is full; it ends failed once its outcome can be written",
        record.run_id,
        record.session_id,
    )
    record.status = RunStatus.FAILED
    record.error = STORAGE_FULL_RUN_ERROR
    record.artifacts = []  # whatever reached artifacts/ may be incomplete: claim none
    if not entry.deleted:
        entry.record.state = error_state(record.effective_mode or "full")
        entry.record.last_run = snapshot(record)

    entry.lock.release()
    try:
        await retry_while_full(sched, commit)
    finally:
        await entry.lock.acquire()
    log.info("run %s: outcome recorded after the disk had room again", record.run_id)
