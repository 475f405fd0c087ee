"""Restart recovery (contract section 7): what a crash leaves in the store is repaired at start.

Phase 1 runs a real runtime (so sessions, a finished run and an idempotency key are stored the
normal way); then the store is edited the way a crash mid-run leaves it (a run `running`, others
`queued`); phase 2 starts a new runtime on the same data directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from runtime_harness import (
    create_request,
    noop_step,
    pipeline_text,
    process,
    running,
    wait_finished,
)

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from pipeline.rundir import read_ndjson
from service.contract.models import SampleRequest
from service.contract.records import RunRecord, RunStatus, SessionState
from service.runtime.config import Config
from service.storage.store import SessionStore
from streaming.envelope import utc_now


def _crash_leftovers(config: Config) -> tuple[str, str, str]:
    """Edit the store as a crash would leave it; returns (running, queued a, queued b) ids."""
    store = SessionStore(config.store_path)
    try:
        sessions = {record.session_id: (record, text) for record, text in store.load_sessions()}
        record_a, text_a = sessions["a"]
        record_b, text_b = sessions["b"]
        now = utc_now()
        running = RunRecord(
            run_id="r-crash-running", session_id="a", status=RunStatus.RUNNING,
            queued_utc=now, started_utc=now, effective_mode="partial",
        )  # fmt: skip
        queued_a = RunRecord(run_id="r-crash-queued-a", session_id="a", queued_utc=now)
        queued_b = RunRecord(run_id="r-crash-queued-b", session_id="b", queued_utc=now)
        with store.transaction():
            store.save_run(running, {"mode": "auto"})
            store.save_run(queued_a, {"mode": "auto", "changed_sources": []})
            store.save_run(queued_b, {"mode": "auto"})
            record_a.state = SessionState.RUNNING_PARTIAL
            record_a.active_run_id = running.run_id
            record_a.queued_run_ids = [queued_a.run_id]
            record_b.queued_run_ids = [queued_b.run_id]
            store.save_session(record_a, text_a)
            store.save_session(record_b, text_b)
    finally:
        store.close()
    return running.run_id, queued_a.run_id, queued_b.run_id


@pytest.mark.anyio
async def test_restart_interrupts_running_requeues_queued_and_marks_cache_lost(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(workers=1)
    async with running(config) as h:
        for sid in ("a", "b"):
            await h.runtime.create_session(create_request(sid, pipeline_text(noop_step())))
        first = await h.runtime.submit("a", process(), idempotency_key="key-1")
        await h.recorder.wait_event("run.finished", first.run_id)
        seq_before = max(e.seq for e in h.recorder.events)

    crashed, queued_a, queued_b = _crash_leftovers(config)

    async with running(config) as h:
        rt = h.runtime
        interrupted = await h.recorder.wait_event("run.interrupted", crashed)
        assert interrupted.seq > seq_before  # seq continues across the restart
        run = await rt.get_run(crashed)
        assert run.status == "interrupted" and run.finished_utc is not None
        summary = json.loads((config.runs_dir / "a" / crashed / "summary.json").read_text())
        assert summary["status"] == "interrupted"
        # a manifest too, so retained runs do not call it an old "no-manifest" layout
        manifest = json.loads((config.runs_dir / "a" / crashed / "manifest.json").read_text())
        assert manifest["artifacts"] == []
        journal = read_ndjson(config.runs_dir / "a" / crashed / "events.ndjson")
        assert msgspec.json.decode(journal[-1])["type"] == "run.interrupted"

        # queued runs run again, in their original order; the first run of a session that ran
        # before the restart is full because its cache is gone
        for run_id in (queued_a, queued_b):
            await h.recorder.wait_terminal(run_id)
        started = [e.runid for e in h.recorder.events if e.type == "run.started"]
        assert started == [queued_a, queued_b]
        # a queued run whose directory the crash prevented is completed from the store
        request = json.loads((config.runs_dir / "a" / queued_a / "run-request.json").read_text())
        assert request["run_id"] == queued_a
        after_a = await rt.get_run(queued_a)
        assert (after_a.status, after_a.effective_mode) == ("succeeded", "full")
        assert after_a.fallback_reason == "cache_lost"
        assert after_a.dirty_steps == ["n"]
        after_b = await rt.get_run(queued_b)
        assert after_b.status == "succeeded"
        # b never ran before the restart: nothing was lost, its first run is simply full
        assert (after_b.effective_mode, after_b.fallback_reason) == ("full", None)

        # the session came back and is idle; the idempotency key survived
        session = await rt.get_session("a")
        assert (session.state, session.active_run_id, session.queued_run_ids) == ("idle", None, [])
        again = await rt.submit("a", process(), idempotency_key="key-1")
        assert again.run_id == first.run_id
        # the next run after the cache_lost one is an ordinary incremental run
        nxt = await rt.submit("a", process())
        await h.recorder.wait_event("run.finished", nxt.run_id)
        assert (await rt.get_run(nxt.run_id)).fallback_reason is None


@pytest.mark.anyio
async def test_restart_interrupts_cancelling_runs_and_skips_unloadable_sessions(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    async with running(config) as h:
        await h.runtime.create_session(create_request("c", pipeline_text(noop_step())))
        await h.runtime.create_session(create_request("gone", pipeline_text(noop_step())))
    store = SessionStore(config.store_path)
    try:
        sessions = {record.session_id: (record, text) for record, text in store.load_sessions()}
        record, text = sessions["c"]
        now = utc_now()
        stuck = RunRecord(
            run_id="r-stuck", session_id="c", status=RunStatus.CANCELLING, queued_utc=now,
            started_utc=now, effective_mode="full",
        )  # fmt: skip
        record.state = SessionState.RUNNING_FULL
        record.active_run_id = stuck.run_id
        with store.transaction():
            store.save_run(stuck)
            store.save_session(record, text)
            # a pipeline that no longer loads (say, a step plugin was removed)
            gone, _ = sessions["gone"]
            store.save_session(gone, "name: x\nsteps:\n  - {id: a, use: plugin.removed}\n")
    finally:
        store.close()

    async with running(config) as h:
        rt = h.runtime
        await h.recorder.wait_event("run.interrupted", "r-stuck")
        assert (await rt.get_run("r-stuck")).status == "interrupted"
        session = await rt.get_session("c")
        assert (session.state, session.active_run_id) == ("idle", None)
        assert session.last_run is not None and session.last_run.run_id == "r-stuck"
        changed = await h.recorder.wait_event("session.state_changed")
        assert (changed.data["from"], changed.data["to"]) == ("running_full", "idle")
        assert [s.session_id for s in await rt.list_sessions()] == ["c"]
        assert rt.readiness()["ready"]


@pytest.mark.anyio
async def test_restart_closes_run_directories_that_no_stored_run_owns(
    make_config: Callable[..., Config],
) -> None:
    # A directory left by an interrupted submit whose store row never committed: without a
    # summary it would be listed as `queued` forever by the retained-runs endpoints.
    config = make_config(workers=1)
    orphan = config.runs_dir / "a" / "r-orphan"
    orphan.mkdir(parents=True)
    (orphan / "run-request.json").write_text(json.dumps({"run_name": "lost", "mode": "auto"}))
    (orphan / ".summary.json.123.tmp").write_text("{")

    async with running(config) as h:
        assert await h.runtime.list_sessions() == []

    summary = json.loads((orphan / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["run_name"] == "lost"
    assert not list(orphan.glob(".*.tmp"))


@pytest.mark.anyio
async def test_restart_publishes_a_terminal_event_lost_after_the_final_commit(
    make_config: Callable[..., Config],
) -> None:
    # The final status is committed before run.finished is written: a kill in between (seen
    # in the crash tests under load) left a succeeded run with no terminal event at all.
    config = make_config(workers=1)
    async with running(config) as h:
        await h.runtime.create_session(create_request("a", pipeline_text(noop_step())))
        run_id = (await h.runtime.submit("a", process())).run_id
        await h.recorder.wait_event("run.finished", run_id)
    journal = config.runs_dir / "a" / run_id / "events.ndjson"
    lines = read_ndjson(journal)
    assert msgspec.json.decode(lines[-1])["type"] == "run.finished"
    # as the kill leaves it: everything but the terminal event, and a torn start of it
    journal.write_bytes(b"".join(line + b"\n" for line in lines[:-1]) + b'{"specversion":"1.')

    async with running(config) as h:
        event = await h.recorder.wait_event("run.finished", run_id)
        assert event.data["status"] == "succeeded"
    types = [msgspec.json.decode(line)["type"] for line in read_ndjson(journal)]
    assert [
        t for t in types if t.startswith("run.") and t not in ("run.queued", "run.started")
    ] == ["run.finished"]

    async with running(config) as h:  # a third start finds the run ended: nothing is added
        pass
    assert len(read_ndjson(journal)) == len(types)


@pytest.mark.anyio
async def test_start_prunes_idempotency_keys_older_than_their_lifetime(
    make_config: Callable[..., Config],
) -> None:
    import sqlite3

    config = make_config(workers=1)
    async with running(config) as h:
        await h.runtime.create_session(create_request("a", pipeline_text(noop_step())))
        old = await h.runtime.submit("a", process(), idempotency_key="old")
        fresh = await h.runtime.submit("a", process(), idempotency_key="fresh")
        await h.recorder.wait_event("run.finished", fresh.run_id)
    with sqlite3.connect(config.store_path) as conn:  # as if submitted eight days ago
        conn.execute(
            "UPDATE idempotency SET created_utc = '2000-01-01T00:00:00Z' WHERE key = 'old'"
        )
    conn.close()

    async with running(config) as h:
        again = await h.runtime.submit("a", process(), idempotency_key="fresh")
        assert again.run_id == fresh.run_id  # still within its lifetime
        reused = await h.runtime.submit("a", process(), idempotency_key="old")
        assert reused.run_id != old.run_id  # expired: a new run


@pytest.mark.anyio
async def test_restart_rewrites_final_files_a_power_loss_took_from_the_store(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    # A run's manifest.json and summary.json are not fsynced (the store's final commit is their
    # durable copy): after a power loss either may be missing or empty. The next start writes
    # them again, equal to what the run wrote.
    frames = write_demo_data(tmp_path / "frames", count=2, shape=(48, 48))
    config = make_config(workers=1)
    async with running(config) as h:
        await h.runtime.create_session(create_request("a", example_text("saxs")))
        run_ids = []
        for frame in frames[:2]:
            body = SampleRequest(location=str(frame), process=True)
            _, submitted = await h.runtime.set_sample("a", body)
            assert submitted is not None
            run_ids.append(submitted.run_id)
        for run_id in run_ids:
            assert (await wait_finished(h, run_id)).status == "succeeded"
    dirs = [config.runs_dir / "a" / run_id for run_id in run_ids]
    written = [
        ((d / "summary.json").read_bytes(), (d / "manifest.json").read_bytes()) for d in dirs
    ]
    assert json.loads(written[0][1])["artifacts"], "the saxs run writes its reduced curve"
    # first run: both files lost (the summary gone, the manifest empty); second: the manifest
    (dirs[0] / "summary.json").unlink()
    (dirs[0] / "manifest.json").write_bytes(b"")
    (dirs[1] / "manifest.json").unlink()

    async with running(config) as h:
        for run_id in run_ids:
            assert (await h.runtime.get_run(run_id)).status == "succeeded"
    for d, (summary, manifest) in zip(dirs, written, strict=True):
        assert json.loads((d / "manifest.json").read_bytes()) == json.loads(manifest)
        assert json.loads((d / "summary.json").read_bytes()) == json.loads(summary)
