"""The run queue: bounded, FIFO, one active run per session, no head-of-line blocking.

The pure `RunQueue` is tested directly; the same rules are then checked end to end through the
runtime with `diag.sleep` runs (synchronised on events; long sleeps are cancelled, never waited
out).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runtime_harness import LONG, Harness, create_request, pipeline_text, process, running

from service.contract.errors import ServiceError
from service.runtime.config import Config
from service.runtime.run_queue import QueueFull, RunQueue

# -- the pure queue ------------------------------------------------------------------------------


def test_fifo_skips_busy_sessions_without_blocking_others() -> None:
    q = RunQueue(capacity=10)
    q.push("a1", "a")
    q.push("a2", "a")
    q.push("b1", "b")
    first = q.next_runnable()
    assert first is not None and first.run_id == "a1"
    # a is busy: its second run waits, b's run behind it goes first
    second = q.next_runnable()
    assert second is not None and second.run_id == "b1"
    assert q.next_runnable() is None
    q.finish("a")
    third = q.next_runnable()
    assert third is not None and third.run_id == "a2"


def test_capacity_counts_waiting_runs_only() -> None:
    q = RunQueue(capacity=2)
    q.push("a1", "a")
    q.push("b1", "b")
    with pytest.raises(QueueFull):
        q.push("c1", "c")
    assert q.next_runnable() is not None  # a1 starts: a slot frees up
    assert q.push("c1", "c") == 1
    q.push("x", "x", force=True)  # accepted-earlier work (recovery, fallback) is never refused
    assert len(q) == 3


def test_held_runs_keep_their_place_but_do_not_start() -> None:
    q = RunQueue(capacity=5)
    q.push("a1", "a", ready=False)
    q.push("b1", "b")
    item = q.next_runnable()
    assert item is not None and item.run_id == "b1"
    assert q.position("a1") == 0
    q.release("a1")
    item = q.next_runnable()
    assert item is not None and item.run_id == "a1"


def test_front_remove_and_position() -> None:
    q = RunQueue(capacity=5)
    q.push("a1", "a")
    q.push("b1", "b")
    assert q.push("f", "c", front=True) == 0
    assert [i.run_id for i in q] == ["f", "a1", "b1"]
    assert q.remove("a1") and not q.remove("a1")
    assert q.position("b1") == 1
    assert q.waiting_for("b") == ["b1"]
    with pytest.raises(ValueError):
        q.push("b1", "b")
    with pytest.raises(KeyError):
        q.release("nope")
    with pytest.raises(ValueError):
        RunQueue(0)


# -- through the runtime -----------------------------------------------------------------------


async def _sessions(h: Harness, *sids: str, step: dict[str, object] = LONG) -> None:
    for sid in sids:
        await h.runtime.create_session(create_request(sid, pipeline_text(step)))


@pytest.mark.anyio
async def test_sessions_run_in_parallel_and_a_busy_session_blocks_nobody(
    make_config: Callable[..., Config],
) -> None:
    async with running(make_config(workers=2)) as h:
        await _sessions(h, "a", "b")
        rt = h.runtime
        a1 = await rt.submit("a", process())
        a2 = await rt.submit("a", process())
        b1 = await rt.submit("b", process())  # queued behind a2, which cannot start yet
        await h.recorder.wait_event("run.started", a1.run_id)
        await h.recorder.wait_event("run.started", b1.run_id)
        # a1 and b1 run at the same time; a's second run waits for a1
        assert (await rt.get_run(a1.run_id)).status == "running"
        assert (await rt.get_run(b1.run_id)).status == "running"
        assert (await rt.get_run(a2.run_id)).status == "queued"
        session = await rt.get_session("a")
        assert session.active_run_id == a1.run_id
        assert session.queued_run_ids == [a2.run_id]
        assert rt.readiness()["metrics"]["active_run_count"] == 2
        await rt.cancel_run(a1.run_id)
        await h.recorder.wait_event("run.started", a2.run_id)
        for run in (a2, b1):
            await rt.cancel_run(run.run_id)
            await h.recorder.wait_event("run.cancelled", run.run_id)


@pytest.mark.anyio
async def test_runs_start_in_submission_order(make_config: Callable[..., Config]) -> None:
    async with running(make_config(workers=1)) as h:
        await _sessions(h, "a", "b", "c")
        rt = h.runtime
        first = await rt.submit("a", process())
        await h.recorder.wait_event("run.started", first.run_id)
        later = [await rt.submit(sid, process()) for sid in ("c", "b")]
        assert [r.position for r in later] == [0, 1]
        await rt.cancel_run(first.run_id)
        await h.recorder.wait_event("run.started", later[0].run_id)
        await rt.cancel_run(later[0].run_id)
        await h.recorder.wait_event("run.started", later[1].run_id)
        await rt.cancel_run(later[1].run_id)
        started = [e.runid for e in h.recorder.events if e.type == "run.started"]
        assert started == [first.run_id, later[0].run_id, later[1].run_id]


@pytest.mark.anyio
async def test_a_full_queue_answers_queue_full_with_retry_after(
    make_config: Callable[..., Config],
) -> None:
    async with running(make_config(workers=1, queue_size=2)) as h:
        await _sessions(h, "a")
        rt = h.runtime
        active = await rt.submit("a", process())
        await h.recorder.wait_event("run.started", active.run_id)
        waiting = [await rt.submit("a", process()) for _ in range(2)]
        with pytest.raises(ServiceError) as info:
            await rt.submit("a", process())
        assert info.value.code == "QUEUE_FULL" and info.value.status == 429
        assert int(info.value.headers["Retry-After"]) >= 1
        metrics = rt.readiness()["metrics"]
        assert (metrics["queued_run_count"], metrics["queue_capacity"]) == (2, 2)
        # the refused submit left nothing behind
        assert (await rt.get_session("a")).queued_run_ids == [w.run_id for w in waiting]
        await rt.cancel_run(waiting[0].run_id)  # frees a slot at once
        extra = await rt.submit("a", process())
        for run in (active, waiting[1], extra):
            await rt.cancel_run(run.run_id)
