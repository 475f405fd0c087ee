"""Session endpoints in-process: create/list/show/delete, sources, sinks, sample, process,
dry-run, reset and errors/latest, with the contract's status codes and shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_support import (
    Api,
    assert_problem,
    fail_step,
    finished_run,
    pipeline_yaml,
    run_events,
    session_body,
    sleep_step,
)

pytestmark = pytest.mark.anyio

SESSION_KEYS = {
    "session_id", "name", "state", "active_run_id", "queued_run_ids", "sources", "sinks",
    "source_profile", "required_source_refs", "pipeline", "last_run", "created_utc",
    "updated_utc",
}  # fmt: skip


async def create(api: Api, sid: str = "s1", *steps: dict[str, Any]) -> dict[str, Any]:
    r = await api.client.post("/v1/sessions", json=session_body(sid, *steps))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def json_source(tmp_path: Path, name: str = "a.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"value": 1}))
    return str(path)


async def test_create_returns_201_with_location_and_session_object(api: Api) -> None:
    r = await api.client.post("/v1/sessions", json={**session_body("beam-1"), "name": "Beamline 1"})
    assert r.status_code == 201
    assert r.headers["location"] == "/v1/sessions/beam-1"
    body = r.json()
    assert body.keys() >= SESSION_KEYS
    assert body["session_id"] == "beam-1"
    assert body["name"] == "Beamline 1"
    assert body["state"] == "idle"
    assert body["pipeline"] == {"name": "t", "version": "0.0.0"}
    assert body["sources"] == {} and body["sinks"] == {}


async def test_create_without_id_picks_one(api: Api) -> None:
    r = await api.client.post("/v1/sessions", json={"pipeline": {"yaml_text": pipeline_yaml()}})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert (await api.client.get(f"/v1/sessions/{sid}")).status_code == 200


async def test_duplicate_session_is_409(api: Api) -> None:
    await create(api, "dup")
    r = await api.client.post("/v1/sessions", json=session_body("dup"))
    assert_problem(r, 409, "SESSION_EXISTS")


@pytest.mark.parametrize("sid", ["-bad", "a" * 65, "has space", "ü"])
async def test_invalid_session_id_is_422_naming_the_field(api: Api, sid: str) -> None:
    r = await api.client.post("/v1/sessions", json=session_body(sid))
    problem = assert_problem(r, 422, "INVALID_REQUEST")
    assert problem["errors"][0]["path"] == "$.session_id"


async def test_invalid_pipeline_is_422_pipeline_invalid_listing_problems(api: Api) -> None:
    bad = {"id": "x", "use": "no.such.step", "params": {}}
    r = await api.client.post("/v1/sessions", json=session_body("p", bad))
    problem = assert_problem(r, 422, "PIPELINE_INVALID")
    assert problem["errors"] and all({"path", "message"} <= e.keys() for e in problem["errors"])
    assert (await api.client.get("/v1/sessions/p")).status_code == 404


async def test_pipeline_needs_exactly_one_of_text_or_path(api: Api) -> None:
    r = await api.client.post("/v1/sessions", json={"session_id": "x", "pipeline": {}})
    assert_problem(r, 422, "INVALID_REQUEST")


async def test_unknown_body_field_is_422_naming_it(api: Api) -> None:
    r = await api.client.post("/v1/sessions", json={**session_body("u"), "colour": "red"})
    problem = assert_problem(r, 422, "INVALID_REQUEST")
    assert "colour" in problem["detail"]


async def test_list_is_wrapped_and_get_delete_roundtrip(api: Api) -> None:
    await create(api, "a")
    await create(api, "b")
    r = await api.client.get("/v1/sessions")
    assert r.status_code == 200
    assert sorted(s["session_id"] for s in r.json()["sessions"]) == ["a", "b"]
    assert (await api.client.get("/v1/sessions/a")).json()["session_id"] == "a"
    r = await api.client.delete("/v1/sessions/a", headers={"content-type": "application/json"})
    assert r.status_code == 204 and r.content == b""
    assert_problem(await api.client.get("/v1/sessions/a"), 404, "SESSION_NOT_FOUND")
    assert_problem(
        await api.client.delete("/v1/sessions/a", headers={"content-type": "application/json"}),
        404,
        "SESSION_NOT_FOUND",
    )


async def test_source_templates_are_wrapped_with_saxs_and_generic(api: Api) -> None:
    r = await api.client.get("/v1/source-templates")
    templates = {t["name"]: t for t in r.json()["templates"]}
    assert {"saxs", "generic"} <= templates.keys()
    assert templates["saxs"]["required"] == ["sample"]


async def test_sources_put_patch_delete(api: Api, tmp_path: Path) -> None:
    await create(api, "s")
    loc = json_source(tmp_path)
    r = await api.client.put(
        "/v1/sessions/s/sources",
        json={"sources": [{"ref": "calib", "type": "json", "location": loc}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["sources"] == {"calib": {"type": "json", "location": loc, "options": {}}}
    other = json_source(tmp_path, "b.json")
    r = await api.client.post(
        "/v1/sessions/s/sources/patch",
        json={"ref": "extra", "type": "json", "location": other, "options": {"k": 1}},
    )
    assert r.status_code == 200
    assert set(r.json()["sources"]) == {"calib", "extra"}
    assert (
        await api.client.delete(
            "/v1/sessions/s/sources/calib", headers={"content-type": "application/json"}
        )
    ).status_code == 204
    sources = (await api.client.get("/v1/sessions/s")).json()["sources"]
    assert set(sources) == {"extra"}


async def test_source_with_bad_type_is_422(api: Api, tmp_path: Path) -> None:
    await create(api, "s")
    r = await api.client.put(
        "/v1/sessions/s/sources",
        json={"sources": [{"ref": "a", "type": "tiff", "location": json_source(tmp_path)}]},
    )
    problem = assert_problem(r, 422, "INVALID_REQUEST")
    assert problem["errors"][0]["path"] == "$.sources[0].type"


async def test_sinks_put_patch_delete(api: Api, tmp_path: Path) -> None:
    await create(api, "s")
    out = str(tmp_path / "out.csv")
    r = await api.client.put(
        "/v1/sessions/s/sinks", json={"sinks": [{"ref": "curve", "type": "csv", "location": out}]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["sinks"]["curve"]["type"] == "csv"
    r = await api.client.post(
        "/v1/sessions/s/sinks/patch",
        json={"ref": "nx", "type": "hdf5", "location": str(tmp_path / "out.h5")},
    )
    assert set(r.json()["sinks"]) == {"curve", "nx"}
    assert (
        await api.client.delete(
            "/v1/sessions/s/sinks/nx", headers={"content-type": "application/json"}
        )
    ).status_code == 204
    assert set((await api.client.get("/v1/sessions/s")).json()["sinks"]) == {"curve"}


async def test_sample_sets_source_and_with_process_submits(api: Api, tmp_path: Path) -> None:
    await create(api, "s")
    loc = json_source(tmp_path, "sample.json")
    r = await api.client.post("/v1/sessions/s/sample", json={"location": loc, "type": "json"})
    assert r.status_code == 200, r.text
    assert r.json()["sources"]["sample"]["location"] == loc
    r = await api.client.post(
        "/v1/sessions/s/sample", json={"location": loc, "type": "json", "process": True}
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert r.headers["location"] == f"/v1/runs/{run_id}"
    assert (await finished_run(api, run_id))["status"] == "succeeded"


async def test_process_is_202_with_location_and_run_finishes(api: Api) -> None:
    await create(api, "s")
    r = await api.client.post("/v1/sessions/s/process", json={"run_name": "first"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and isinstance(body["position"], int)
    assert r.headers["location"] == f"/v1/runs/{body['run_id']}"
    run = await finished_run(api, body["run_id"])
    assert run["status"] == "succeeded"
    assert run["run_name"] == "first"


async def test_process_with_empty_body_uses_defaults(api: Api) -> None:
    await create(api, "s")
    r = await api.client.post("/v1/sessions/s/process", json={})
    assert r.status_code == 202
    assert (await finished_run(api, r.json()["run_id"]))["mode"] == "auto"


async def test_idempotency_key_returns_the_first_run(api: Api) -> None:
    await create(api, "s")
    headers = {"Idempotency-Key": "k-1"}
    first = await api.client.post("/v1/sessions/s/process", json={}, headers=headers)
    again = await api.client.post("/v1/sessions/s/process", json={}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    await finished_run(api, first.json()["run_id"])


async def test_overlong_idempotency_key_is_422(api: Api) -> None:
    await create(api, "s")
    r = await api.client.post(
        "/v1/sessions/s/process", json={}, headers={"Idempotency-Key": "k" * 201}
    )
    assert_problem(r, 422, "INVALID_REQUEST")


async def test_process_missing_required_source_is_409(api: Api) -> None:
    text = "name: t\nsources: {sample: {required: true}}\nsteps:\n" + (
        "  - {id: nap, use: diag.sleep, params: {seconds: 0, ticks: 1}}\n"
    )
    r = await api.client.post(
        "/v1/sessions", json={"session_id": "m", "pipeline": {"yaml_text": text}}
    )
    assert r.status_code == 201, r.text
    assert_problem(await api.client.post("/v1/sessions/m/process", json={}), 409, "MISSING_SOURCES")


async def test_process_bad_mode_is_422(api: Api) -> None:
    await create(api, "s")
    r = await api.client.post("/v1/sessions/s/process", json={"mode": "sideways"})
    assert assert_problem(r, 422, "INVALID_REQUEST")["errors"][0]["path"] == "$.mode"


async def test_process_unknown_session_is_404(api: Api) -> None:
    assert_problem(
        await api.client.post("/v1/sessions/nope/process", json={}), 404, "SESSION_NOT_FOUND"
    )


async def test_dry_run_reports_plan_without_running(api: Api) -> None:
    await create(api, "s")
    r = await api.client.post("/v1/sessions/s/process/dry-run", json={"mode": "auto"})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert set(plan) == {
        "effective_mode", "dirty_steps", "skipped_steps", "reasons",
        "missing_required_sources", "warnings", "can_process",
    }  # fmt: skip
    assert plan["dirty_steps"] == ["nap"]
    assert plan["reasons"]["nap"] == ["never_run"]
    assert plan["can_process"] is True
    assert (await api.client.get("/v1/sessions/s/runs")).json()["runs"] == []


async def test_failed_run_shows_in_errors_latest_and_reset_clears_state(api: Api) -> None:
    await create(api, "f", fail_step())
    r = await api.client.post("/v1/sessions/f/process", json={})
    run = await finished_run(api, r.json()["run_id"])
    assert run["status"] == "failed"
    errors = (await api.client.get("/v1/sessions/f/errors/latest")).json()
    assert set(errors) == {
        "session_id", "state", "active_run_id", "updated_utc", "current_error",
        "latest_error", "latest_failed_run",
    }  # fmt: skip
    assert errors["state"].startswith("error_")
    assert errors["latest_failed_run"]["run_id"] == run["run_id"]
    r = await api.client.post("/v1/sessions/f/reset", json={"mode": "partial"})
    assert r.status_code == 200
    assert r.json()["state"] == "idle"
    assert_problem(
        await api.client.post("/v1/sessions/f/reset", json={"mode": "half"}), 422, "INVALID_REQUEST"
    )


async def test_delete_session_cancels_its_runs(api: Api) -> None:
    await create(api, "d", sleep_step(seconds=30, ticks=300))
    r = await api.client.post("/v1/sessions/d/process", json={})
    run_id = r.json()["run_id"]
    assert (
        await api.client.delete("/v1/sessions/d", headers={"content-type": "application/json"})
    ).status_code == 204
    events = await run_events(api.app, run_id)
    assert events[-1]["type"] == "run.cancelled"
    # The run stays on disk, as a retained run.
    r = await api.client.get(f"/v1/retained-runs/{run_id}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"


async def test_deleting_unknown_source_or_sink_is_404(api: Api) -> None:
    await create(api, "s")
    assert_problem(
        await api.client.delete(
            "/v1/sessions/s/sources/nope", headers={"content-type": "application/json"}
        ),
        404,
        "NOT_FOUND",
    )
    assert_problem(
        await api.client.delete(
            "/v1/sessions/s/sinks/nope", headers={"content-type": "application/json"}
        ),
        404,
        "NOT_FOUND",
    )


async def test_unreadable_source_is_422_before_anything_is_queued(api: Api, tmp_path: Path) -> None:
    await create(api, "s")
    r = await api.client.post(
        "/v1/sessions/s/sample", json={"location": str(tmp_path / "missing.h5"), "process": True}
    )
    assert_problem(r, 422, "INVALID_REQUEST")
    assert (await api.client.get("/v1/sessions/s/runs")).json()["runs"] == []


async def test_locations_outside_the_roots_are_403(make_api: Any, tmp_path: Path) -> None:
    inside = tmp_path / "in"
    inside.mkdir()
    async with make_api(read_roots=(inside,), write_roots=(tmp_path / "out",)) as api:
        await create(api, "s")
        outside = json_source(tmp_path, "outside.json")
        r = await api.client.post(
            "/v1/sessions/s/sources/patch", json={"ref": "a", "type": "json", "location": outside}
        )
        assert_problem(r, 403, "FORBIDDEN")
        r = await api.client.post(
            "/v1/sessions/s/sinks/patch",
            json={"ref": "c", "type": "csv", "location": str(tmp_path / "x.csv")},
        )
        assert_problem(r, 403, "FORBIDDEN")
        r = await api.client.post(
            "/v1/sessions", json={"session_id": "p", "pipeline": {"path": str(tmp_path / "p.yaml")}}
        )
        assert_problem(r, 403, "FORBIDDEN")
        r = await api.client.post(
            "/v1/sessions/s/sources/patch",
            json={"ref": "a", "type": "json", "location": json_source(inside)},
        )
        assert r.status_code == 200
