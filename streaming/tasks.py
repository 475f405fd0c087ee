"""`TaskSupervisor`: the owner of a component's background tasks.

The service runtime's tasks and the Redis backend's are not nested in one `async with` (the
scheduler starts with the app's lifespan and stops in `drain`, a run's task is awaited by
whoever needs its end, a relay starts and stops with its node), so they are owned by a
supervisor instead of an anyio task group, with the same guarantees:

- every task is held (never garbage-collected mid-flight) and named;
- a task that fails is never silent: unless its owner said it awaits the task and reports the
  failure itself (`handled=True`), the failure is logged with its traceback and counted
  (`failures`);
- `aclose()` cancels whatever is still running (or lets it finish) and waits for it, so no
  task outlives its owner's shutdown unnoticed (one still going after the wait is named in
  the log).

This is the one module of `service/` and `streaming/` that may call `create_task`
(`tests/test_architecture.py` fails on any other); elsewhere use an anyio task group or a
supervisor's `spawn`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSupervisor"]

log = logging.getLogger("streaming.tasks")

T = TypeVar("T")


class TaskSupervisor:
    """Background tasks of one owner (`name` is used in log lines). Loop thread only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: dict[asyncio.Task[Any], bool] = {}  # task -> its owner handles failures
        self.failures = 0  # unhandled failures since start
        self.closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str, handled: bool = False
    ) -> asyncio.Task[T]:
        """Run `coro` as a task owned here. `handled=True`: the caller awaits the task (or
        watches it with a done callback) and reports its failure; otherwise a failure is
        logged here. Raises RuntimeError after `aclose()` (the coroutine is closed)."""
        if self.closed:
            coro.close()
            raise RuntimeError(f"{self.name}: closed, cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = handled
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        handled = self._tasks.pop(task, True)
        if handled or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failures += 1
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=exc)

    async def aclose(self, timeout: float = 5.0, *, cancel: bool = True) -> None:
        """Refuse new tasks and end the running ones: cancel them (`cancel=False`: let them
        finish on their own) and wait up to `timeout` seconds. A task still running then (one
        shielded from cancellation, e.g. waiting on a worker thread) is named in the log,
        cancelled and left behind."""
        self.closed = True
        tasks = list(self._tasks)
        if not tasks:
            return
        if cancel:
            for task in tasks:
                task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
        for task in pending:
            log.warning("%s: task %s still running at shutdown", self.name, task.get_name())
            task.cancel()
