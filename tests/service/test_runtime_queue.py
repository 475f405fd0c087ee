"""The runtime in-process, runs side: run directories and events, cancel, retry, idempotency,
coalesce, partial-to-full fallback, shutdown, and the event publisher's journals.

Each test drives `Runtime` directly over a real store and broker and synchronises on the events it
publishes (helpers in `runtime_harness`). Long `diag.sleep` runs are always cancelled, never
waited out. Sessions and their sources are in `test_runtime_sessions.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import msgspec
import pytest
from runtime_harness import (
    JSON_PIPELINE,
    LONG,
    WAIT_S,
    Harness,
    create_request,
    expect_problem,
    fail_step,
    json_source,
    noop_step,
    pipeline_text,
    process,
    running,
    sleep_step,
    wait_finished,
)

from pipeline.rundir import read_ndjson
from service.contract.errors import ServiceError
from service.contract.models import (
    SourceInput,
)
from service.contract.records import RunRecord
from service.runtime.config import Config
from service.runtime.run_inputs import as_run_sources
from streaming.envelope import TERMINAL_RUN_TYPES, Envelope

T = TypeVar("T")

# -- runs ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_run_writes_its_directory_and_events(make_config: Callable[..., Config]) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(sleep_step(ticks=3))))
        submitted = await rt.submit("a", process(run_name="first"))
        assert (submitted.status, submitted.position) == ("queued", 0)
        run = await wait_finished(h, submitted.run_id)
        assert (run.status, run.effective_mode, run.run_name) == ("succeeded", "full", "first")
        assert run.dirty_steps == ["s"] and run.step_states["s"].status == "succeeded"
        assert run.elapsed_s is not None and run.finished_utc is not None
        types = h.recorder.of_run(run.run_id)
        assert types[:3] == ["run.queued", "run.started", "step.started"]
        assert types.count("step.progress") == 3
        assert types[-2:] == ["step.finished", "run.finished"]
        finished = await h.recorder.wait_event("run.finished", run.run_id)
        assert finished.data["status"] == "succeeded"
        assert finished.data["dirty_steps"] == ["s"] and "elapsed_s" in finished.data
        # the run directory: request, summary (= the record), events in seq order, manifest
        run_dir = h.config.runs_dir / "a" / run.run_id
        summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunRecord)
        assert summary == run
        assert json.loads((run_dir / "run-request.json").read_text())["run_name"] == "first"
        journal = [Envelope(**json.loads(line)) for line in read_ndjson(run_dir / "events.ndjson")]
        assert [e.type for e in journal] == types
        assert [e.seq for e in journal] == sorted(e.seq for e in journal)
        assert (run_dir / "manifest.json").is_file()
        await h.recorder.wait_for(
            lambda evs: [e for e in evs if e.type == "session.state_changed"][1:]
        )
        states = [
            (e.data["from"], e.data["to"])
            for e in h.recorder.events
            if e.type == "session.state_changed"
        ]
        assert states == [("idle", "running_full"), ("running_full", "idle")]
        runs = await rt.list_runs("a")
        assert [r.run_id for r in runs] == [run.run_id]
        with pytest.raises(ServiceError) as exc:
            await rt.get_run("r-nope")
        expect_problem(exc, "RUN_NOT_FOUND")


@pytest.mark.anyio
async def test_cancel_queued_and_running_runs(make_config: Callable[..., Config]) -> None:
    async with running(make_config(workers=1)) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(LONG)))
        first = await rt.submit("a", process())
        second = await rt.submit("a", process())
        await h.recorder.wait_event("step.progress", first.run_id)
        queued = await rt.cancel_run(second.run_id)
        assert queued.status == "cancelled"  # at once
        cancelling = await rt.cancel_run(first.run_id)
        assert cancelling.status == "cancelling"
        assert (await rt.cancel_run(first.run_id)).status in ("cancelling", "cancelled")
        done = await wait_finished(h, first.run_id)
        assert done.status == "cancelled"
        for run_id in (first.run_id, second.run_id):
            terminal = [t for t in h.recorder.of_run(run_id) if t in TERMINAL_RUN_TYPES]
            assert terminal == ["run.cancelled"]
            summary = json.loads((h.config.runs_dir / "a" / run_id / "summary.json").read_text())
            assert summary["status"] == "cancelled"
        with pytest.raises(ServiceError) as exc:
            await rt.cancel_run(first.run_id)
        expect_problem(exc, "RUN_NOT_CANCELLABLE")
        with pytest.raises(ServiceError) as exc:
            await rt.cancel_run("r-unknown")
        expect_problem(exc, "RUN_NOT_FOUND")
        session = await rt.get_session("a")
        assert (session.state, session.active_run_id, session.queued_run_ids) == ("idle", None, [])


@pytest.mark.anyio
async def test_failed_run_sets_error_state_and_retry_creates_a_new_run(
    make_config: Callable[..., Config],
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("f", pipeline_text(fail_step())))
        failed = await wait_finished(h, (await rt.submit("f", process(mode="full"))).run_id)
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.failed_step == "f" and "boom" in failed.error.message
        assert (await rt.get_session("f")).state == "error_full"
        errors = await rt.latest_errors("f")
        assert errors.current_error == failed.error
        assert (
            errors.latest_failed_run is not None
            and errors.latest_failed_run.run_id == failed.run_id
        )
        retry = await rt.retry_run(failed.run_id)
        assert retry.run_id != failed.run_id
        retried = await wait_finished(h, retry.run_id)
        assert (retried.retry_of, retried.mode) == (failed.run_id, "full")
        # reset partial clears the error state, keeping the history
        reset = await rt.reset("f", "partial")
        assert reset.state == "idle"
        errors = await rt.latest_errors("f")
        assert errors.current_error is None and errors.latest_error is not None

        await rt.create_session(create_request("ok", pipeline_text(noop_step())))
        ok = await wait_finished(h, (await rt.submit("ok", process())).run_id)
        with pytest.raises(ServiceError) as exc:
            await rt.retry_run(ok.run_id)
        expect_problem(exc, "RUN_NOT_RETRYABLE")


@pytest.mark.anyio
async def test_idempotency_key_returns_the_first_run(make_config: Callable[..., Config]) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(noop_step())))
        first = await rt.submit("a", process(), idempotency_key="k1")
        again = await rt.submit("a", process(mode="full"), idempotency_key="k1")
        other = await rt.submit("a", process(), idempotency_key="k2")
        assert again.run_id == first.run_id and other.run_id != first.run_id
        await wait_finished(h, first.run_id)
        await wait_finished(h, other.run_id)
        late = await rt.submit("a", process(), idempotency_key="k1")
        assert (late.run_id, late.status) == (first.run_id, "succeeded")
        assert len(await rt.list_runs("a")) == 2


@pytest.mark.anyio
async def test_coalesce_merges_into_the_waiting_run(make_config: Callable[..., Config]) -> None:
    async with running(make_config(workers=1)) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(LONG)))
        active = await rt.submit("a", process())
        await h.recorder.wait_event("run.started", active.run_id)
        # nothing waiting yet: coalesce against a running run queues a new one
        waiting = await rt.submit("a", process(coalesce=True))
        assert waiting.run_id != active.run_id
        merged = await rt.submit("a", process(coalesce=True, mode="full"))
        assert (merged.run_id, merged.status) == (waiting.run_id, "queued")
        assert (await rt.get_run(waiting.run_id)).mode == "full"  # escalated
        assert (await rt.get_session("a")).queued_run_ids == [waiting.run_id]
        plain = await rt.submit("a", process())  # without coalesce: a run of its own
        assert plain.run_id != waiting.run_id
        for run in (active, waiting, plain):
            await rt.cancel_run(run.run_id)
        await wait_finished(h, active.run_id)


async def _hold_before_start(h: Harness, sid: str) -> str:
    """Queue a run of `sid` and return its id with the session's lock held by the caller, once a
    worker has taken the run but before its start is announced (still `queued`, planning).

    Deterministic: `announce_start` needs the lock, and asyncio locks wake waiters in order.
    """
    sched = h.runtime.scheduler
    entry = sched.sessions[sid]
    await entry.lock.acquire()
    sources = as_run_sources(entry.record.sources)
    run_id = (await sched.enqueue(entry, mode="auto", sources=sources)).run_id
    # Loop steps, not time: the dispatcher takes the run off the queue and creates its task, whose
    # first step (the next one) queues it on the lock, ahead of our own `acquire` below.
    with anyio.fail_after(WAIT_S):
        while run_id in sched.queue.waiting_for(sid):  # noqa: ASYNC110 - counts loop steps
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    entry.lock.release()
    await entry.lock.acquire()  # the run's start section ran in between
    live = sched.live[run_id]
    assert live.started_utc is not None and live.record.status == "queued"
    return run_id


async def _then_release(h: Harness, sid: str, call: Awaitable[T]) -> T:
    """Start `call` while the lock is held (it queues first), release the lock, await it."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)  # one loop step: `call` is now waiting for the lock
    h.runtime.scheduler.sessions[sid].lock.release()
    return await task


@pytest.mark.anyio
async def test_cancel_a_run_taken_by_a_worker_before_it_starts(
    make_config: Callable[..., Config],
) -> None:
    # Regression: such a run answered `queued` (a cancel that seemed not to happen).
    async with running(make_config()) as h:
        await h.runtime.create_session(create_request("a", pipeline_text(LONG)))
        run_id = await _hold_before_start(h, "a")
        answer = await _then_release(h, "a", h.runtime.cancel_run(run_id))
        assert answer.status == "cancelling"
        done = await wait_finished(h, run_id)
        assert done.status == "cancelled"
        assert [t for t in h.recorder.of_run(run_id) if t.startswith("run.")] == [
            "run.queued",
            "run.started",
            "run.cancelled",
        ]


@pytest.mark.anyio
async def test_delete_session_cancels_a_run_taken_by_a_worker_before_it_starts(
    make_config: Callable[..., Config],
) -> None:
    # Regression: delete cancelled waiting runs and the announced active run only; this one ran
    # on (60 s here) for a session that no longer existed.
    async with running(make_config()) as h:
        await h.runtime.create_session(create_request("a", pipeline_text(LONG)))
        run_id = await _hold_before_start(h, "a")
        await _then_release(h, "a", h.runtime.delete_session("a"))
        terminal = await h.recorder.wait_terminal(run_id)
        assert terminal.type == "run.cancelled"


@pytest.mark.anyio
async def test_reset_full_waits_for_a_run_taken_by_a_worker_before_it_starts(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    # Regression: reset cleared the cache under the worker planning with it; the run then
    # refilled it, and the next auto run was partial instead of full.
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE))
        cfg = json_source(tmp_path)
        await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(cfg))])
        await wait_finished(h, (await rt.submit("j", process())).run_id)
        assert (await rt.dry_run("j", process())).effective_mode == "partial"
        run_id = await _hold_before_start(h, "j")
        await _then_release(h, "j", rt.reset("j", "full"))
        assert (await wait_finished(h, run_id)).status == "succeeded"
        assert (await rt.dry_run("j", process())).effective_mode == "full"


@pytest.mark.anyio
async def test_failed_partial_run_falls_back_to_a_full_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE))
        cfg = json_source(tmp_path)
        await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(cfg))])
        warm = await wait_finished(h, (await rt.submit("j", process())).run_id)
        assert (warm.status, warm.effective_mode) == ("succeeded", "full")
        dry = await rt.dry_run("j", process())
        assert (dry.effective_mode, dry.dirty_steps, dry.can_process) == ("partial", [], True)
        cfg.write_text("not json")  # the partial run will fail on it
        dry = await rt.dry_run("j", process())
        assert dry.reasons["read"] == ["source_changed:cfg"]
        assert dry.reasons["use"] == ["upstream_dirty:read"]
        partial = await wait_finished(h, (await rt.submit("j", process())).run_id)
        assert (partial.status, partial.effective_mode) == ("failed", "partial")
        fallback_id = await h.recorder.wait_for(
            lambda evs: next(
                (
                    e.runid
                    for e in evs
                    if e.type == "run.queued" and e.data.get("recovered_from_run_id")
                ),
                None,
            )
        )
        fallback = await wait_finished(h, fallback_id)
        assert fallback.effective_mode == "full" and fallback.mode == "full"
        assert fallback.fallback_reason == "partial_failed"
        assert fallback.recovered_from_run_id == partial.run_id
        assert fallback.status == "failed"  # the input really is broken: no further fallback
        assert (await rt.get_session("j")).state == "error_full"
        assert len(await rt.list_runs("j")) == 3
        # a reset full empties the cache: the next auto run is full
        await rt.reset("j", "full")
        json_source(tmp_path)
        assert (await rt.dry_run("j", process())).effective_mode == "full"


@pytest.mark.anyio
async def test_no_fallback_without_auto_fallback(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE, auto_fallback=False))
        cfg = json_source(tmp_path)
        await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(cfg))])
        await wait_finished(h, (await rt.submit("j", process())).run_id)
        cfg.write_text("[")
        failed = await wait_finished(h, (await rt.submit("j", process())).run_id)
        assert (failed.status, failed.effective_mode) == ("failed", "partial")
        assert len(await rt.list_runs("j")) == 2
        assert (await rt.get_session("j")).state == "error_partial"


@pytest.mark.anyio
async def test_shutdown_cancels_runs_still_going_after_the_grace(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    async with running(config, grace=0.0) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(LONG)))
        run = await rt.submit("a", process())
        await h.recorder.wait_event("step.progress", run.run_id)
        ready = await rt.refresh_readiness()
        assert ready["ready"] and ready["status"] == "ok"
    assert not rt.accepting
    assert rt.readiness()["status"] == "unavailable"
    summary = json.loads((config.runs_dir / "a" / run.run_id / "summary.json").read_text())
    assert summary["status"] == "cancelled"
    with pytest.raises(ServiceError) as exc:
        await rt.submit("a", process())
    expect_problem(exc, "SERVICE_UNAVAILABLE")


def test_publisher_journals_in_seq_order_from_many_threads(tmp_path: Path) -> None:
    """Events from concurrent worker threads reach each journal in seq order, none lost."""
    import threading

    from service.storage.publisher import EventPublisher
    from streaming.envelope import Event

    published: list[Event] = []

    class Sink:
        def __init__(self) -> None:
            self.seq = 0
            self.lock = threading.Lock()

        def stamp(self, type: str, session_id: str, data: dict, run_id: str | None = None) -> Event:
            with self.lock:
                self.seq += 1
                seq = self.seq
            return Event.create(
                epoch="1", seq=seq, type=type, session_id=session_id, data=data, run_id=run_id
            )

        def publish(self, event: Event) -> None:
            published.append(event)

    publisher = EventPublisher(Sink(), tmp_path, max_open=1)
    for run in ("r1", "r2"):
        publisher.open_run("s", run)

    def work(run_id: str) -> None:
        for i in range(200):
            publisher.emit("step.progress", "s", {"step": "x", "fraction": i / 200}, run_id)

    threads = [threading.Thread(target=work, args=(r,)) for r in ("r1", "r2", "r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    publisher.emit("session.updated", "s", {})
    publisher.emit("run.cancelled", "s", {"status": "cancelled"}, "r3")  # not open: one line
    for run in ("r1", "r2"):
        publisher.close_run(run)
    publisher.close()
    assert [e.seq for e in published] == list(range(1, 803))  # published in seq order
    for run in ("r1", "r2"):
        seqs = [
            json.loads(line)["seq"] for line in read_ndjson(tmp_path / "s" / run / "events.ndjson")
        ]
        assert len(seqs) == 400 and seqs == sorted(seqs)
    assert len(read_ndjson(tmp_path / "s" / "events.ndjson")) == 1
    assert len(read_ndjson(tmp_path / "s" / "r3" / "events.ndjson")) == 1
