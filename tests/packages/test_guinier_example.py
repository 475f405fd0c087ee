"""The example package `examples/packages/guinier` as docs/writing-steps.md and
docs/packages.md walk through it: installed over HTTP, a session on its pipeline, the demo
instrument's frames reduced and fitted. The demo sample is a 4 nm sphere, Rg = sqrt(3/5) * 4 nm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import pytest
from package_builders import running_api

from pipeline.demodata import SPHERE_RADIUS_NM, write_demo_data
from service.http.state import service_state
from service.runtime.config import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packages" / "guinier"

pytestmark = pytest.mark.anyio


async def test_guinier_package_fits_the_demo_sphere(tmp_path: Path) -> None:
    data = tmp_path / "frames"
    await anyio.to_thread.run_sync(lambda: write_demo_data(data, count=1, shape=(256, 256)))
    (sample,) = sorted(data.glob("sample_*.h5"))
    config = Config(data_dir=tmp_path / "data", workers=1, allow_packages=True)
    async with running_api(config) as (app, client):
        r = await client.post("/v1/packages", json={"path": str(EXAMPLE)})
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/sessions", json={"session_id": "g", "pipeline": {"package": "guinier"}}
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/sessions/g/sample", json={"location": str(sample), "process": True}
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        with anyio.fail_after(120):
            subscription = await service_state(app).broker.subscribe(run_id=run_id)
            try:
                while await subscription.get_batch():
                    pass
            finally:
                subscription.close()
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "succeeded", run
        assert "guinier.json" in run["artifacts"]
    fit = json.loads((config.runs_dir / "g" / run_id / "artifacts" / "guinier.json").read_text())
    expected_rg = math.sqrt(3 / 5) * SPHERE_RADIUS_NM
    assert abs(fit["rg"] - expected_rg) < 0.05 * expected_rg, fit
    assert 0 < fit["rg_err"] < 0.1 * fit["rg"] and fit["i0"] > 0 and fit["i0_err"] > 0
    manifest = json.loads((config.runs_dir / "g" / run_id / "manifest.json").read_text())
    assert manifest["packages"] == [{"name": "guinier", "version": "0.1.0", "vendored": {}}]
