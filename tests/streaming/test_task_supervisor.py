"""`TaskSupervisor`: a background task's failure is seen, and no task outlives its owner."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streaming.tasks import TaskSupervisor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the runtime's tasks are asyncio tasks


async def fail() -> None:
    raise ValueError("disk on fire")


async def test_an_unawaited_failure_is_logged_with_its_task_name_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSupervisor("scheduler")
    with caplog.at_level(logging.ERROR, logger="streaming.tasks"):
        task = tasks.spawn(fail(), name="runwire-dispatcher")
        await asyncio.wait([task], timeout=30)
    assert tasks.failures == 1 and len(tasks) == 0
    [record] = caplog.records
    assert "runwire-dispatcher failed" in record.getMessage()
    assert record.exc_info is not None and "disk on fire" in str(record.exc_info[1])


async def test_a_handled_task_leaves_its_failure_to_the_owner_who_awaits_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSupervisor("scheduler")
    task = tasks.spawn(fail(), name="run-dir-x", handled=True)
    with pytest.raises(ValueError, match="disk on fire"):
        await task
    assert tasks.failures == 0 and caplog.records == []


async def test_aclose_cancels_and_waits_for_every_task_then_refuses_new_ones() -> None:
    tasks = TaskSupervisor("scheduler")
    started, ended = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    task = tasks.spawn(forever(), name="runwire-dispatcher")
    await asyncio.wait_for(started.wait(), timeout=30)
    await tasks.aclose(timeout=30)
    assert task.cancelled() and ended.is_set() and len(tasks) == 0
    coro = forever()
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(coro, name="late")
    assert coro.cr_frame is None  # closed, not left un-awaited


async def test_aclose_without_cancel_lets_a_task_finish_its_work() -> None:
    tasks = TaskSupervisor("server")
    release = asyncio.Event()
    done: list[str] = []

    async def drain() -> None:
        await release.wait()
        done.append("drained")

    tasks.spawn(drain(), name="runwire-drain")
    asyncio.get_running_loop().call_soon(release.set)
    await tasks.aclose(timeout=30, cancel=False)
    assert done == ["drained"]
