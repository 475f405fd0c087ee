"""The dashboard's server side: `/` and `/ui/` (static files, CSP, caching, no token needed for
the page itself), the I(q) curve of a run, a session's step tree and the bundled examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from api_support import Api, assert_problem, finished_run, session_body, sleep_step

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

pytestmark = pytest.mark.anyio


async def test_root_redirects_to_the_dashboard(api: Api) -> None:
    r = await api.client.get("/", follow_redirects=False)
    assert r.status_code in (307, 308)
    assert r.headers["location"] == "/ui/"


async def test_dashboard_page_has_a_strict_csp_and_revalidates(api: Api) -> None:
    r = await api.client.get("/ui/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="js/main.js">' in r.text
    assert "<script>" not in r.text  # no inline script: the CSP would refuse it
    assert "http://" not in r.text and "https://" not in r.text  # nothing from the network


async def test_assets_are_cached_and_served_with_their_types(api: Api) -> None:
    js = await api.client.get("/ui/js/main.js")
    assert js.status_code == 200
    assert js.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert "max-age=" in js.headers["cache-control"]
    assert js.headers["etag"]
    again = await api.client.get("/ui/js/main.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    uplot = await api.client.get("/ui/vendor/uplot/uPlot.esm.js")
    assert uplot.status_code == 200 and "export" in uplot.text
    lic = await api.client.get("/ui/vendor/uplot/LICENSE")
    assert "MIT" in lic.text
    assert_problem(await api.client.get("/ui/no-such-file.js"), 404, "NOT_FOUND")


async def test_page_is_public_but_the_api_still_needs_the_token(make_api: Any) -> None:
    async with make_api(token="s3cret") as api:
        assert (await api.client.get("/ui/")).status_code == 200
        assert (await api.client.get("/ui/js/api.js")).status_code == 200
        assert (await api.client.get("/", follow_redirects=False)).status_code == 307
        assert_problem(await api.client.get("/v1/sessions"), 401, "UNAUTHORIZED")
        assert_problem(await api.client.get("/v1/examples"), 401, "UNAUTHORIZED")


async def test_examples_list_the_bundled_pipelines(api: Api) -> None:
    r = await api.client.get("/v1/examples")
    assert r.status_code == 200
    examples = {e["name"]: e["yaml_text"] for e in r.json()["examples"]}
    assert examples["saxs"] == example_text("saxs")


NESTED = {
    "name": "nested",
    "version": "2.1",
    "steps": [
        sleep_step("first"),
        {"id": "inner", "steps": [sleep_step("a"), {"id": "deeper", "steps": [sleep_step("b")]}]},
        {"id": "fan", "parallel": True, "steps": [sleep_step("x"), sleep_step("y")]},
    ],
}


async def test_session_pipeline_gives_the_step_tree_as_the_file_nests_it(api: Api) -> None:
    text = yaml.safe_dump(NESTED)
    r = await api.client.post(
        "/v1/sessions", json={"session_id": "n", "pipeline": {"yaml_text": text}}
    )
    assert r.status_code == 201, r.text
    r = await api.client.get("/v1/sessions/n/pipeline")
    assert r.status_code == 200
    body = r.json()
    assert (body["name"], body["version"], body["yaml_text"]) == ("nested", "2.1", text)
    first, inner, fan = body["tree"]
    assert first == {"id": "first", "full_id": "first", "kind": "step", "use": "diag.sleep"}
    assert inner["kind"] == "pipeline"
    assert [c["full_id"] for c in inner["children"]] == ["inner.a", "inner.deeper"]
    assert inner["children"][1]["children"][0]["full_id"] == "inner.deeper.b"
    assert fan["kind"] == "group" and fan["parallel"] is True
    assert [c["full_id"] for c in fan["children"]] == ["fan.x", "fan.y"]
    # The tree's ids are the ones a run reports its steps by.
    run = (await api.client.post("/v1/sessions/n/process", json={})).json()
    done = await finished_run(api, run["run_id"])
    assert {"inner.deeper.b", "fan.y", "first"} <= set(done["step_states"])


async def test_session_pipeline_of_an_unknown_session_is_404(api: Api) -> None:
    assert_problem(await api.client.get("/v1/sessions/nope/pipeline"), 404, "SESSION_NOT_FOUND")


async def test_curve_is_read_from_the_runs_nxcansas_file(api: Api, tmp_path: Path) -> None:
    frames = write_demo_data(tmp_path / "frames", count=1, shape=(48, 48))
    body = {"session_id": "saxs", "pipeline": {"yaml_text": example_text("saxs")}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    r = await api.client.post(
        "/v1/sessions/saxs/sample", json={"location": str(frames[0]), "process": True}
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert (await finished_run(api, run_id))["status"] == "succeeded"
    r = await api.client.get(f"/v1/retained-runs/{run_id}/curve")
    assert r.status_code == 200, r.text
    curve = r.json()
    artifact = next(api.config.runs_dir.glob(f"saxs/{run_id}/artifacts/reduced.h5"))
    with h5py.File(artifact) as f:
        q = f["sasentry01/sasdata01/Q"][()]
        i = f["sasentry01/sasdata01/I"][()]
        idev = f["sasentry01/sasdata01/Idev"][()]
    assert curve["run_id"] == run_id
    assert len(curve["q"]) == len(curve["I"]) == len(curve["Idev"]) == len(q) > 10
    finite = np.isfinite(i)
    np.testing.assert_allclose(np.array(curve["q"], dtype=float), q)
    np.testing.assert_allclose(np.array(curve["I"], dtype=float)[finite], i[finite])
    np.testing.assert_allclose(np.array(curve["Idev"], dtype=float)[finite], idev[finite])
    assert all(v is None for v, ok in zip(curve["I"], finite, strict=True) if not ok)
    assert (curve["q_unit"], curve["i_unit"]) == ("1/nm", "arbitrary")
    assert curve["title"] == "saxs reduction"


async def test_a_run_without_a_curve_is_404_not_found(api: Api) -> None:
    assert (await api.client.post("/v1/sessions", json=session_body("plain"))).status_code == 201
    run = (await api.client.post("/v1/sessions/plain/process", json={})).json()
    assert (await finished_run(api, run["run_id"]))["status"] == "succeeded"
    assert_problem(
        await api.client.get(f"/v1/retained-runs/{run['run_id']}/curve"), 404, "NOT_FOUND"
    )
    assert_problem(await api.client.get("/v1/retained-runs/r-nope/curve"), 404, "RUN_NOT_FOUND")


async def test_curve_and_tree_are_in_the_openapi_document(api: Api) -> None:
    paths = (await api.client.get("/v1/openapi.json")).json()["paths"]
    curve = paths["/v1/retained-runs/{run_id}/curve"]["get"]
    assert {"200", "404"} <= set(curve["responses"])
    assert "get" in paths["/v1/sessions/{sid}/pipeline"]
    assert "get" in paths["/v1/examples"]
