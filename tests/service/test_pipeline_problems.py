"""Every problem of a pipeline file is listed, through the real interfaces: `runwire run` (exit
64, each path printed) and `POST /v1/sessions` (422 `PIPELINE_INVALID`, each in `errors`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from api_support import Api, assert_problem

# steps[3] is `integrate.azimuthal`, whose inputs `frame` and `bins` are both required and both
# left out; steps[4] has two bad params. Each must be its own problem at its own path.
TWO_MISSING = """\
name: two-missing
steps:
  - {id: a, use: diag.sleep, params: {seconds: 0}}
  - {id: b, use: diag.sleep, params: {seconds: 0}}
  - {id: c, use: diag.sleep, params: {seconds: 0}}
  - {id: d, use: integrate.azimuthal, outputs: {curve: reduced.curve}}
  - {id: e, use: diag.sleep, params: {seconds: soon, ticks: many}}
"""
EXPECTED = {
    "steps[3].inputs.frame",
    "steps[3].inputs.bins",
    "steps[4].params.seconds",
    "steps[4].params.ticks",
}


def test_runwire_run_exits_64_listing_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TWO_MISSING)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
         "run", str(path), "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 64, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: invalid pipeline") and "Traceback" not in err
    for where in EXPECTED:
        assert f"{where}:" in err, (where, err)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.anyio
async def test_create_session_422_lists_every_problem(api: Api) -> None:
    body = {"session_id": "two", "pipeline": {"yaml_text": TWO_MISSING}}
    r = await api.client.post("/v1/sessions", json=body)
    problem = assert_problem(r, 422, "PIPELINE_INVALID")
    paths = [e["path"] for e in problem["errors"]]
    assert set(paths) == EXPECTED and len(paths) == len(EXPECTED)
    messages = {e["path"]: e["message"] for e in problem["errors"]}
    assert "missing input 'frame'" in messages["steps[3].inputs.frame"]
    assert "missing input 'bins'" in messages["steps[3].inputs.bins"]
    assert (await api.client.get("/v1/sessions/two")).status_code == 404
