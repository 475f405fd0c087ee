"""The runtime end to end, in-process: sessions, validation, runs, events, cancel, retry,
idempotency, coalesce, fallback, reset, errors, sinks, shutdown.

Each test drives `Runtime` directly over a real store and broker and synchronises on the events it
publishes. Long `diag.sleep` runs are always cancelled, never waited out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from runtime_harness import (
    Harness,
    create_request,
    fail_step,
    noop_step,
    pipeline_text,
    process,
    running,
    sleep_step,
)

from pipeline.rundir import read_ndjson
from service.config import Config
from service.errors import ServiceError
from service.models import (
    CreateSessionRequest,
    PipelineInput,
    SampleRequest,
    SinkInput,
    SourceInput,
)
from service.records import RunRecord
from streaming.envelope import TERMINAL_RUN_TYPES, Envelope

LONG = sleep_step(seconds=60, ticks=600)
JSON_PIPELINE = pipeline_text(
    {
        "id": "read",
        "use": "json.read",
        "params": {"source": "cfg"},
        "outputs": {"value": "cfg.value"},
    },
    {
        "id": "use",
        "use": "diag.noop",
        "inputs": {"value": "cfg.value"},
        "outputs": {"value": "out"},
    },
    sources={"cfg": {"required": True}},
)


def _json_source(tmp_path: Path, value: object = 1, name: str = "cfg.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"value": value}))
    return path


async def _finished(h: Harness, run_id: str) -> RunRecord:
    await h.recorder.wait_terminal(run_id)
    return await h.runtime.get_run(run_id)


def _problem(exc: pytest.ExceptionInfo[ServiceError], code: str) -> ServiceError:
    assert exc.value.code == code, exc.value.detail
    return exc.value


# -- sessions and validation ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_session_crud_and_events(make_config: Callable[..., Config]) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        created = await rt.create_session(
            create_request("s1", pipeline_text(noop_step()), name="first", source_profile="generic")
        )
        assert (created.state, created.pipeline.name, created.name) == ("idle", "t", "first")
        anonymous = await rt.create_session(
            CreateSessionRequest(pipeline=PipelineInput(yaml_text=pipeline_text(noop_step())))
        )
        assert anonymous.session_id.startswith("session-")
        assert {s.session_id for s in await rt.list_sessions()} == {"s1", anonymous.session_id}
        with pytest.raises(ServiceError) as exc:
            await rt.create_session(create_request("s1", pipeline_text(noop_step())))
        _problem(exc, "SESSION_EXISTS")
        await rt.delete_session("s1")
        with pytest.raises(ServiceError) as exc:
            await rt.get_session("s1")
        _problem(exc, "SESSION_NOT_FOUND")
        await h.recorder.wait_event("session.deleted")
        types = [e.type for e in h.recorder.events if e.sessionid == "s1"]
        assert types == ["session.created", "session.deleted"]
        # session events are journalled next to the session's runs
        lines = read_ndjson(h.config.runs_dir / "s1" / "events.ndjson")
        assert [msgspec.json.decode(line)["type"] for line in lines] == types


@pytest.mark.anyio
async def test_invalid_pipeline_lists_every_problem_and_creates_nothing(
    make_config: Callable[..., Config],
) -> None:
    bad = pipeline_text(
        {"id": "x", "use": "no.such.step"}, {"id": "y", "use": "diag.sleep", "params": {"bogus": 1}}
    )
    async with running(make_config()) as h:
        with pytest.raises(ServiceError) as exc:
            await h.runtime.create_session(create_request("bad", bad))
        err = _problem(exc, "PIPELINE_INVALID")
        assert err.status == 422 and err.errors is not None and len(err.errors) >= 2
        assert all(set(p) == {"path", "message"} for p in err.errors)
        assert any(p["path"].startswith("steps[0]") for p in err.errors)
        with pytest.raises(ServiceError) as exc:
            await h.runtime.create_session(
                create_request("p", pipeline_text(noop_step()), source_profile="nope")
            )
        _problem(exc, "INVALID_REQUEST")
        assert await h.runtime.list_sessions() == []


@pytest.mark.anyio
async def test_pipeline_by_path_is_confined_to_read_roots(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "p.yaml").write_text(pipeline_text(noop_step()))
    outside = tmp_path / "out.yaml"
    outside.write_text(pipeline_text(noop_step()))
    async with running(make_config(read_roots=(inside,))) as h:
        rt = h.runtime
        ok = await rt.create_session(
            CreateSessionRequest(
                session_id="a", pipeline=PipelineInput(path=str(inside / "p.yaml"))
            )
        )
        assert ok.pipeline.name == "t"
        with pytest.raises(ServiceError) as exc:
            await rt.create_session(
                CreateSessionRequest(session_id="b", pipeline=PipelineInput(path=str(outside)))
            )
        assert _problem(exc, "FORBIDDEN").status == 403
        with pytest.raises(ServiceError) as exc:
            await rt.create_session(
                CreateSessionRequest(
                    session_id="c", pipeline=PipelineInput(path=str(inside / "missing.yaml"))
                )
            )
        assert "missing.yaml" in _problem(exc, "INVALID_REQUEST").detail
        # sources are confined the same way
        (inside / "x.json").write_text("{}")
        with pytest.raises(ServiceError) as exc:
            await rt.patch_source(
                "a", SourceInput(ref="cfg", type="json", location=str(_json_source(tmp_path)))
            )
        _problem(exc, "FORBIDDEN")


@pytest.mark.anyio
async def test_sources_are_validated_before_anything_changes(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE, source_profile="saxs"))
        assert (await rt.get_session("j")).required_source_refs == ["cfg", "sample"]
        missing = tmp_path / "nope.json"
        with pytest.raises(ServiceError) as exc:
            await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(missing))])
        assert str(missing) in _problem(exc, "INVALID_REQUEST").detail
        assert (await rt.get_session("j")).sources == {}
        with pytest.raises(ServiceError) as exc:
            await rt.submit("j", process())
        err = _problem(exc, "MISSING_SOURCES")
        assert err.status == 409 and err.errors is not None
        cfg = _json_source(tmp_path)
        record = await rt.put_sources(
            "j",
            [
                SourceInput(ref="cfg", type="json", location=str(cfg)),
                SourceInput(ref="sample", type="json", location=str(cfg)),
            ],
        )
        assert record.sources["cfg"].location == str(cfg.resolve())
        changed = await h.recorder.wait_event("sources.changed")
        assert changed.data["changed"] == ["cfg", "sample"]
        record = await rt.delete_source("j", "sample")
        assert set(record.sources) == {"cfg"}
        with pytest.raises(ServiceError) as exc:
            await rt.delete_source("j", "sample")
        _problem(exc, "NOT_FOUND")
        with pytest.raises(ServiceError) as exc:
            await rt.put_sources(
                "j",
                [
                    SourceInput(ref="cfg", type="json", location=str(cfg)),
                    SourceInput(ref="cfg", type="json", location=str(cfg)),
                ],
            )
        _problem(exc, "INVALID_REQUEST")
        # a file that vanished after it was set is refused at submit, not failed later
        await rt.patch_source("j", SourceInput(ref="sample", type="json", location=str(cfg)))
        cfg.unlink()
        with pytest.raises(ServiceError) as exc:
            await rt.submit("j", process())
        _problem(exc, "INVALID_REQUEST")
        assert (await rt.get_session("j")).queued_run_ids == []


# -- runs ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_run_writes_its_directory_and_events(make_config: Callable[..., Config]) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(sleep_step(ticks=3))))
        submitted = await rt.submit("a", process(run_name="first"))
        assert (submitted.status, submitted.position) == ("queued", 0)
        run = await _finished(h, submitted.run_id)
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
        _problem(exc, "RUN_NOT_FOUND")


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
        done = await _finished(h, first.run_id)
        assert done.status == "cancelled"
        for run_id in (first.run_id, second.run_id):
            terminal = [t for t in h.recorder.of_run(run_id) if t in TERMINAL_RUN_TYPES]
            assert terminal == ["run.cancelled"]
            summary = json.loads((h.config.runs_dir / "a" / run_id / "summary.json").read_text())
            assert summary["status"] == "cancelled"
        with pytest.raises(ServiceError) as exc:
            await rt.cancel_run(first.run_id)
        _problem(exc, "RUN_NOT_CANCELLABLE")
        with pytest.raises(ServiceError) as exc:
            await rt.cancel_run("r-unknown")
        _problem(exc, "RUN_NOT_FOUND")
        session = await rt.get_session("a")
        assert (session.state, session.active_run_id, session.queued_run_ids) == ("idle", None, [])


@pytest.mark.anyio
async def test_failed_run_sets_error_state_and_retry_creates_a_new_run(
    make_config: Callable[..., Config],
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("f", pipeline_text(fail_step())))
        failed = await _finished(h, (await rt.submit("f", process(mode="full"))).run_id)
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
        retried = await _finished(h, retry.run_id)
        assert (retried.retry_of, retried.mode) == (failed.run_id, "full")
        # reset partial clears the error state, keeping the history
        reset = await rt.reset("f", "partial")
        assert reset.state == "idle"
        errors = await rt.latest_errors("f")
        assert errors.current_error is None and errors.latest_error is not None

        await rt.create_session(create_request("ok", pipeline_text(noop_step())))
        ok = await _finished(h, (await rt.submit("ok", process())).run_id)
        with pytest.raises(ServiceError) as exc:
            await rt.retry_run(ok.run_id)
        _problem(exc, "RUN_NOT_RETRYABLE")


@pytest.mark.anyio
async def test_idempotency_key_returns_the_first_run(make_config: Callable[..., Config]) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("a", pipeline_text(noop_step())))
        first = await rt.submit("a", process(), idempotency_key="k1")
        again = await rt.submit("a", process(mode="full"), idempotency_key="k1")
        other = await rt.submit("a", process(), idempotency_key="k2")
        assert again.run_id == first.run_id and other.run_id != first.run_id
        await _finished(h, first.run_id)
        await _finished(h, other.run_id)
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
        await _finished(h, active.run_id)


@pytest.mark.anyio
async def test_failed_partial_run_falls_back_to_a_full_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE))
        cfg = _json_source(tmp_path)
        await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(cfg))])
        warm = await _finished(h, (await rt.submit("j", process())).run_id)
        assert (warm.status, warm.effective_mode) == ("succeeded", "full")
        dry = await rt.dry_run("j", process())
        assert (dry.effective_mode, dry.dirty_steps, dry.can_process) == ("partial", [], True)
        cfg.write_text("not json")  # the partial run will fail on it
        dry = await rt.dry_run("j", process())
        assert dry.reasons["read"] == ["source_changed:cfg"]
        assert dry.reasons["use"] == ["upstream_dirty:read"]
        partial = await _finished(h, (await rt.submit("j", process())).run_id)
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
        fallback = await _finished(h, fallback_id)
        assert fallback.effective_mode == "full" and fallback.mode == "full"
        assert fallback.fallback_reason == "partial_failed"
        assert fallback.recovered_from_run_id == partial.run_id
        assert fallback.status == "failed"  # the input really is broken: no further fallback
        assert (await rt.get_session("j")).state == "error_full"
        assert len(await rt.list_runs("j")) == 3
        # a reset full empties the cache: the next auto run is full
        await rt.reset("j", "full")
        _json_source(tmp_path)
        assert (await rt.dry_run("j", process())).effective_mode == "full"


@pytest.mark.anyio
async def test_no_fallback_without_auto_fallback(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("j", JSON_PIPELINE, auto_fallback=False))
        cfg = _json_source(tmp_path)
        await rt.put_sources("j", [SourceInput(ref="cfg", type="json", location=str(cfg))])
        await _finished(h, (await rt.submit("j", process())).run_id)
        cfg.write_text("[")
        failed = await _finished(h, (await rt.submit("j", process())).run_id)
        assert (failed.status, failed.effective_mode) == ("failed", "partial")
        assert len(await rt.list_runs("j")) == 2
        assert (await rt.get_session("j")).state == "error_partial"


@pytest.mark.anyio
async def test_set_sample_with_process_submits_a_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    text = pipeline_text(
        {
            "id": "read",
            "use": "json.read",
            "params": {"source": "sample"},
            "outputs": {"value": "v"},
        },
        sources={"sample": {"required": True}},
    )
    async with running(make_config()) as h:
        rt = h.runtime
        await rt.create_session(create_request("s", text))
        sample = _json_source(tmp_path, name="sample.json")
        record, result = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=False)
        )
        assert result is None and record.sources["sample"].type == "json"
        record, result = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=True)
        )
        assert result is not None
        run = await _finished(h, result.run_id)
        assert run.status == "succeeded"
        second = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=True)
        )
        assert second[1] is not None
        rerun = await _finished(h, second[1].run_id)
        # the sample is marked changed even though its file looks the same
        assert (rerun.effective_mode, rerun.dirty_steps) == ("partial", ["read"])


@pytest.mark.anyio
async def test_sinks_receive_the_reduced_curve_only_inside_write_roots(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    async with running(make_config(write_roots=(out,))) as h:
        rt = h.runtime
        await rt.create_session(create_request("k", pipeline_text(noop_step())))
        record = await rt.put_sinks(
            "k",
            [
                SinkInput(ref="h5", type="hdf5", location=str(out / "curve.h5")),
                SinkInput(ref="table", type="csv", location=str(out)),
            ],
        )
        assert set(record.sinks) == {"h5", "table"}
        with pytest.raises(ServiceError) as exc:
            await rt.patch_sink(
                "k", SinkInput(ref="x", type="csv", location=str(tmp_path / "x.csv"))
            )
        _problem(exc, "FORBIDDEN")
        with pytest.raises(ServiceError) as exc:
            await rt.patch_sink("k", SinkInput(ref="x", type="csv", location=str(out / "no/x.csv")))
        _problem(exc, "INVALID_REQUEST")
        # a pipeline without an NXcanSAS artifact cannot feed a sink: the run says so
        run = await _finished(h, (await rt.submit("k", process())).run_id)
        assert run.status == "failed" and run.error is not None
        assert run.error.code == "SINK_FAILED"
        assert (await rt.delete_sink("k", "h5")).sinks.keys() == {"table"}


@pytest.mark.anyio
async def test_delete_session_cancels_its_runs_and_keeps_run_directories(
    make_config: Callable[..., Config],
) -> None:
    async with running(make_config(workers=1)) as h:
        rt = h.runtime
        await rt.create_session(create_request("d", pipeline_text(LONG)))
        active = await rt.submit("d", process())
        waiting = await rt.submit("d", process())
        await h.recorder.wait_event("run.started", active.run_id)
        await rt.delete_session("d")
        for run in (active, waiting):
            await h.recorder.wait_event("run.cancelled", run.run_id)
            summary = h.config.runs_dir / "d" / run.run_id / "summary.json"
            assert json.loads(summary.read_text())["status"] == "cancelled"
        assert await rt.list_sessions() == []
        # the id is free again
        await rt.create_session(create_request("d", pipeline_text(noop_step())))


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
    _problem(exc, "SERVICE_UNAVAILABLE")


def test_source_templates_include_saxs_and_generic() -> None:
    from service.profiles import source_templates

    templates = {t.name: t for t in source_templates()}
    assert templates["saxs"].required == ["sample"]
    assert templates["saxs"].optional == ["background", "dark"]
    assert "generic" in templates


@pytest.mark.anyio
async def test_demo_creates_or_reuses_its_session_and_feeds_samples(
    make_config: Callable[..., Config],
) -> None:
    from service.demo import DEMO_SESSION, run_demo

    config = make_config(demo_interval_s=0.0)
    async with running(config) as h:
        await run_demo(h.runtime, config, shape=(128, 128), ticks=1)
        session = await h.runtime.get_session(DEMO_SESSION)
        assert session.source_profile == "saxs"
        assert set(session.sources) == {"sample", "background", "dark"}
        first = await h.recorder.wait_event("run.finished")
        assert first.data["status"] == "succeeded"
        await run_demo(h.runtime, config, shape=(128, 128), ticks=1)  # reuses session and files
        await h.recorder.wait_for(
            lambda evs: len([e for e in evs if e.type == "run.finished"]) == 2
        )
        runs = await h.runtime.list_runs(DEMO_SESSION)
        assert [r.effective_mode for r in runs] == ["full", "partial"]
        assert [s.session_id for s in await h.runtime.list_sessions()] == [DEMO_SESSION]


def test_publisher_journals_in_seq_order_from_many_threads(tmp_path: Path) -> None:
    """Events from concurrent worker threads reach each journal in seq order, none lost."""
    import threading

    from service.publisher import EventPublisher
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
