"""One shape each: `runwire run` and the service give the same dry-run object, the same Run
object (`summary.json` / `GET /v1/runs/{id}`) and the same `run.*` event data, because both go
through `service.runtime.conversions`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, fail_step, finished_run, pipeline_yaml, run_events, sleep_step

from pipeline.rundir import read_ndjson
from service.cli import main

pytestmark = pytest.mark.anyio

# Only a local run says these (the service keeps them elsewhere: session, HTTP status).
LOCAL_ONLY = {"pipeline", "exit_code", "cancelled_by"}
VARIES = {"run_id", "session_id", "mode", "queued_utc", "started_utc", "finished_utc",
          "elapsed_s", "step_durations_s"}  # fmt: skip


def local_run(tmp_path: Path, yaml_text: str, *extra: str) -> tuple[int, Path]:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml_text)
    out = tmp_path / "runs"
    status = main(["run", str(pipeline), "--out", str(out), *extra])
    (run_dir,) = list(out.iterdir()) if out.exists() else [out]
    return status, run_dir


def durationless(run: dict[str, Any]) -> dict[str, Any]:
    """`run` without what differs between any two runs (ids, times, durations)."""
    out = {k: v for k, v in run.items() if k not in VARIES}
    if "step_states" in out:
        out["step_states"] = {
            step: {k: v for k, v in state.items() if k != "duration_s"}
            for step, state in out["step_states"].items()
        }
    return out


@pytest.mark.parametrize(
    "steps", [[sleep_step("a"), sleep_step("b")], [sleep_step("a"), fail_step("boom")]]
)
async def test_a_local_run_and_a_service_run_give_the_same_run_object_and_events(
    api: Api, tmp_path: Path, steps: list[dict[str, Any]]
) -> None:
    yaml_text = pipeline_yaml(*steps)
    _, run_dir = local_run(tmp_path, yaml_text)
    local = json.loads((run_dir / "summary.json").read_text())
    local_events = {
        e["type"]: e["data"] for e in map(json.loads, read_ndjson(run_dir / "events.ndjson"))
    }

    body = {"session_id": "same", "pipeline": {"yaml_text": yaml_text}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    response = await api.client.post("/v1/sessions/same/process", json={"mode": "full"})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    events = {e["type"]: e["data"] for e in await run_events(api.app, run_id)}
    served = await finished_run(api, run_id)

    assert set(local) - LOCAL_ONLY == set(served)  # the Run object, plus the local extras
    assert durationless({k: v for k, v in local.items() if k not in LOCAL_ONLY}) == durationless(
        served
    )
    for kind in ("run.started", "run.finished"):
        assert durationless(local_events[kind]) == durationless(events[kind]), kind
    assert local["exit_code"] == (0 if served["status"] == "succeeded" else 2)


async def test_a_local_dry_run_prints_the_services_dry_run_object(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml_text = pipeline_yaml(sleep_step("a"), sleep_step("b"))
    status, _ = local_run(tmp_path, yaml_text, "--dry-run")
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    body = {"session_id": "dry", "pipeline": {"yaml_text": yaml_text}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    answer = await api.client.post("/v1/sessions/dry/process/dry-run", json={"mode": "full"})
    assert answer.status_code == 200, answer.text
    assert printed == answer.json()
