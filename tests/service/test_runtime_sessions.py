"""The runtime in-process, sessions side: creating, validating and deleting sessions, their
sources, sinks and sample shortcut, source profiles and the demo session.

Each test drives `Runtime` directly over a real store and broker and synchronises on the events it
publishes (helpers in `runtime_harness`). Runs queue and execute in `test_runtime_queue.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from runtime_harness import (
    JSON_PIPELINE,
    LONG,
    create_request,
    expect_problem,
    json_source,
    noop_step,
    pipeline_text,
    process,
    running,
    wait_finished,
)

from pipeline.rundir import read_ndjson
from service.contract.errors import ServiceError
from service.contract.models import (
    CreateSessionRequest,
    PipelineInput,
    SampleRequest,
    SinkInput,
    SourceInput,
)
from service.runtime.config import Config

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
        expect_problem(exc, "SESSION_EXISTS")
        await rt.delete_session("s1")
        with pytest.raises(ServiceError) as exc:
            await rt.get_session("s1")
        expect_problem(exc, "SESSION_NOT_FOUND")
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
        err = expect_problem(exc, "PIPELINE_INVALID")
        assert err.status == 422 and err.errors is not None and len(err.errors) >= 2
        assert all(set(p) == {"path", "message"} for p in err.errors)
        assert any(p["path"].startswith("steps[0]") for p in err.errors)
        with pytest.raises(ServiceError) as exc:
            await h.runtime.create_session(
                create_request("p", pipeline_text(noop_step()), source_profile="nope")
            )
        expect_problem(exc, "INVALID_REQUEST")
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
        assert expect_problem(exc, "FORBIDDEN").status == 403
        with pytest.raises(ServiceError) as exc:
            await rt.create_session(
                CreateSessionRequest(
                    session_id="c", pipeline=PipelineInput(path=str(inside / "missing.yaml"))
                )
            )
        assert "missing.yaml" in expect_problem(exc, "INVALID_REQUEST").detail
        # sources are confined the same way
        (inside / "x.json").write_text("{}")
        with pytest.raises(ServiceError) as exc:
            await rt.patch_source(
                "a", SourceInput(ref="cfg", type="json", location=str(json_source(tmp_path)))
            )
        expect_problem(exc, "FORBIDDEN")


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
        assert str(missing) in expect_problem(exc, "INVALID_REQUEST").detail
        assert (await rt.get_session("j")).sources == {}
        with pytest.raises(ServiceError) as exc:
            await rt.submit("j", process())
        err = expect_problem(exc, "MISSING_SOURCES")
        assert err.status == 409 and err.errors is not None
        cfg = json_source(tmp_path)
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
        expect_problem(exc, "NOT_FOUND")
        with pytest.raises(ServiceError) as exc:
            await rt.put_sources(
                "j",
                [
                    SourceInput(ref="cfg", type="json", location=str(cfg)),
                    SourceInput(ref="cfg", type="json", location=str(cfg)),
                ],
            )
        expect_problem(exc, "INVALID_REQUEST")
        # a file that vanished after it was set is refused at submit, not failed later
        await rt.patch_source("j", SourceInput(ref="sample", type="json", location=str(cfg)))
        cfg.unlink()
        with pytest.raises(ServiceError) as exc:
            await rt.submit("j", process())
        expect_problem(exc, "INVALID_REQUEST")
        assert (await rt.get_session("j")).queued_run_ids == []


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
        sample = json_source(tmp_path, name="sample.json")
        record, result = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=False)
        )
        assert result is None and record.sources["sample"].type == "json"
        record, result = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=True)
        )
        assert result is not None
        run = await wait_finished(h, result.run_id)
        assert run.status == "succeeded"
        second = await rt.set_sample(
            "s", SampleRequest(location=str(sample), type="json", process=True)
        )
        assert second[1] is not None
        rerun = await wait_finished(h, second[1].run_id)
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
        expect_problem(exc, "FORBIDDEN")
        with pytest.raises(ServiceError) as exc:
            await rt.patch_sink("k", SinkInput(ref="x", type="csv", location=str(out / "no/x.csv")))
        expect_problem(exc, "INVALID_REQUEST")
        # a pipeline without an NXcanSAS artifact cannot feed a sink: the run says so
        run = await wait_finished(h, (await rt.submit("k", process())).run_id)
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


def test_source_templates_include_saxs_and_generic() -> None:
    from service.runtime.profiles import source_templates

    templates = {t.name: t for t in source_templates()}
    assert templates["saxs"].required == ["sample"]
    assert templates["saxs"].optional == ["background", "dark"]
    assert "generic" in templates


@pytest.mark.anyio
async def test_demo_creates_or_reuses_its_session_and_feeds_samples(
    make_config: Callable[..., Config],
) -> None:
    from service.runtime.demo import DEMO_SESSION, run_demo

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
        assert [r.effective_mode for r in runs] == ["partial", "full"]  # newest first
        assert [s.session_id for s in await h.runtime.list_sessions()] == [DEMO_SESSION]
