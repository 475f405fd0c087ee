"""The run queue: one bounded FIFO of waiting runs across all sessions.

Pure bookkeeping, used from the event loop only (no locks, no I/O), so it is tested without
threads. Two rules shape it:

- **Bounded.** At most `capacity` runs wait at once; `push` beyond that raises `QueueFull` and
  the caller answers 429 with `Retry-After` (overflow policy: refuse new work, never drop
  accepted work). Internal follow-ups (a partial->full fallback, runs re-queued at restart) use
  `force=True`: they were accepted earlier and must not be lost.
- **FIFO without head-of-line blocking.** At most one run per session is active. `next_runnable()`
  returns the oldest waiting run whose session is idle, so a queued run of a busy session waits
  without holding up other sessions' runs behind it.

A run can be pushed *held* (`ready=False`): it counts against the capacity and keeps its place,
but is not handed out until `release(run_id)`. The runtime holds a run while committing it to the
store, so a run never starts before the 202 that announces it is durable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["QueueFull", "QueuedRun", "RunQueue"]


class QueueFull(Exception):
    """`push` on a queue already holding `capacity` waiting runs."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"the run queue is full ({capacity} runs waiting)")
        self.capacity = capacity


@dataclass(slots=True)
class QueuedRun:
    run_id: str
    session_id: str
    ready: bool = True


class RunQueue:
    """Waiting runs in arrival order plus the active run of each session."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        # A list, not a deque: the queue is small (capacity, default 64) and we remove from the
        # middle (cancel, a session's run becoming runnable), which a deque does not do better.
        self._waiting: list[QueuedRun] = []
        self._active: dict[str, str] = {}  # session_id -> run_id

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[QueuedRun]:
        return iter(list(self._waiting))

    @property
    def full(self) -> bool:
        """True when `push` without `force` would raise `QueueFull`."""
        return len(self._waiting) >= self.capacity

    @property
    def active_count(self) -> int:
        """Sessions with an active run (= runs active)."""
        return len(self._active)

    def push(
        self,
        run_id: str,
        session_id: str,
        *,
        ready: bool = True,
        force: bool = False,
        front: bool = False,
    ) -> int:
        """Add a waiting run; returns its position (runs ahead of it). Raises `QueueFull`.

        `front=True` puts it ahead of every waiting run (a fallback run continues the work of
        the run that just ended, so it does not go to the back of the line).
        """
        if self.full and not force:
            raise QueueFull(self.capacity)
        if any(item.run_id == run_id for item in self._waiting):
            raise ValueError(f"run {run_id!r} is already queued")
        item = QueuedRun(run_id, session_id, ready)
        if front:
            self._waiting.insert(0, item)
        else:
            self._waiting.append(item)
        return self.position(run_id)

    def release(self, run_id: str) -> None:
        """Make a held run eligible to start."""
        for item in self._waiting:
            if item.run_id == run_id:
                item.ready = True
                return
        raise KeyError(run_id)

    def remove(self, run_id: str) -> bool:
        """Drop a waiting run (cancelled, or its commit failed). False if it was not waiting."""
        for index, item in enumerate(self._waiting):
            if item.run_id == run_id:
                del self._waiting[index]
                return True
        return False

    def position(self, run_id: str) -> int:
        """Number of waiting runs ahead of `run_id` (0: it is next). Raises KeyError."""
        for index, item in enumerate(self._waiting):
            if item.run_id == run_id:
                return index
        raise KeyError(run_id)

    def waiting_for(self, session_id: str) -> list[str]:
        """Ids of a session's waiting runs, oldest first."""
        return [item.run_id for item in self._waiting if item.session_id == session_id]

    def next_runnable(self) -> QueuedRun | None:
        """Pop the oldest ready run whose session has no active run, and mark it active."""
        for index, item in enumerate(self._waiting):
            if item.ready and item.session_id not in self._active:
                del self._waiting[index]
                self._active[item.session_id] = item.run_id
                return item
        return None

    def finish(self, session_id: str) -> None:
        """The session's active run ended; its next waiting run may start."""
        self._active.pop(session_id, None)
