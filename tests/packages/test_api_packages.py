"""Pipeline packages through the HTTP API (in-process ASGI): install with requirements
vendored offline, a session on the package's pipeline, a real run whose step imports the
vendored module, the manifest naming package and vendored versions, hooks, and refusals."""

from __future__ import annotations

import base64
import io
import json
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from package_builders import running_api, write_package
from starlette.applications import Starlette

from pipeline.packages.activation import active_packages
from pipeline.step import REGISTRY
from service.http.state import service_state
from service.runtime.config import Config

pytestmark = pytest.mark.anyio


def _config(tmp_path: Path, **overrides: Any) -> Config:
    base = Config(data_dir=tmp_path / "data", workers=1, shutdown_grace=2.0, allow_packages=True)
    return replace(base, **overrides)


async def _finished(app: Starlette, client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(60):
        subscription = await service_state(app).broker.subscribe(run_id=run_id)
        try:
            while await subscription.get_batch():
                pass
        finally:
            subscription.close()
    run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
    return run


def _journal(config: Config) -> list[dict[str, Any]]:
    path = config.runs_dir / "_packages" / "events.ndjson"
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


async def _run(app: Starlette, client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.post(f"/v1/sessions/{sid}/process", json={})
    assert r.status_code == 202, r.text
    return await _finished(app, client, r.json()["run_id"])


async def test_a_package_with_a_vendored_wheel_runs_through_the_api(
    wheelhouse: Path, tmp_path: Path
) -> None:
    pkg = write_package(tmp_path / "src", "tiny-pkg", requirements=["rwtiny==2.0"])
    config = _config(tmp_path, wheelhouse=wheelhouse)
    async with running_api(config) as (app, client):
        r = await client.post("/v1/packages", json={"path": str(pkg)})
        assert r.status_code == 201, r.text
        assert r.json()["vendored"][0] | {"top_level": None} == {
            "name": "rwtiny",
            "version": "2.0",
            "top_level": None,
        }
        assert [e["type"] for e in _journal(config)] == ["package.installing", "package.installed"]
        listed = (await client.get("/v1/packages")).json()["packages"]
        assert [(p["name"], p["version"], p["status"]) for p in listed] == [
            ("tiny-pkg", "1.0.0", "installed")
        ]
        shown = (await client.get("/v1/packages/tiny-pkg")).json()
        assert "rwtiny" in shown["pip_log"] and shown["versions"] == ["1.0.0"]

        r = await client.post(
            "/v1/sessions", json={"session_id": "s1", "pipeline": {"package": "tiny-pkg"}}
        )
        assert r.status_code == 201, r.text
        run = await _run(app, client, "s1")
        assert run["status"] == "succeeded", run
        assert sys.modules["rwtiny"].VERSION == "2.0"  # imported from the package's vendor/
        manifest = json.loads(
            (config.runs_dir / "s1" / run["run_id"] / "manifest.json").read_text()
        )
        assert manifest["packages"] == [
            {"name": "tiny-pkg", "version": "1.0.0", "vendored": {"rwtiny": "2.0"}}
        ]
        steps = {s["name"]: s for s in (await client.get("/v1/steps")).json()["steps"]}
        assert "tiny-pkg.version" in steps
        after = (
            (config.packages_dir / "tiny-pkg" / "1.0.0" / "after_run.jsonl")
            .read_text()
            .splitlines()
        )
        assert json.loads(after[-1]) == {
            "session_id": "s1",
            "run_id": run["run_id"],
            "status": "succeeded",
            "error": None,
        }

        assert (
            await client.delete("/v1/sessions/s1", headers={"content-type": "application/json"})
        ).status_code == 204
        assert active_packages() == [] and "tiny-pkg.version" not in REGISTRY


async def test_on_after_run_receives_a_failed_runs_error(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "fails", fail_step=True)
    config = _config(tmp_path)
    async with running_api(config) as (app, client):
        assert (await client.post("/v1/packages", json={"path": str(pkg)})).status_code == 201
        r = await client.post(
            "/v1/sessions", json={"session_id": "f", "pipeline": {"package": "fails"}}
        )
        assert r.status_code == 201, r.text
        run = await _run(app, client, "f")
        assert run["status"] == "failed"
    (line,) = (config.packages_dir / "fails" / "1.0.0" / "after_run.jsonl").read_text().splitlines()
    summary = json.loads(line)
    assert summary["status"] == "failed" and summary["run_id"] == run["run_id"]
    assert summary["error"]["code"] == "STEP_EXCEPTION"
    assert (
        "failing on purpose" in summary["error"]["message"]
        and summary["error"]["failed_step"] == "v"
    )


async def test_an_on_activate_that_raises_is_409_and_creates_nothing(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path / "src", "refuses", on_activate="raise RuntimeError('no detector here')"
    )
    config = _config(tmp_path)
    async with running_api(config) as (_, client):
        assert (await client.post("/v1/packages", json={"path": str(pkg)})).status_code == 201
        r = await client.post(
            "/v1/sessions", json={"session_id": "x", "pipeline": {"package": "refuses"}}
        )
        assert r.status_code == 409 and r.json()["code"] == "PACKAGE_ACTIVATION_FAILED"
        assert "on_activate raised RuntimeError: no detector here" in r.json()["detail"]
        assert (await client.get("/v1/sessions/x")).status_code == 404
    assert active_packages() == [] and "refuses.version" not in REGISTRY
    assert "refuses_steps" not in sys.modules
    assert not (config.packages_dir / "sessions.json").exists()


async def test_packages_are_refused_without_allow_packages(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "nope")
    async with running_api(_config(tmp_path, allow_packages=False)) as (_, client):
        r = await client.post("/v1/packages", json={"path": str(pkg)})
        assert r.status_code == 403 and "run arbitrary code" in r.json()["detail"]
        r = await client.post("/v1/sessions", json={"pipeline": {"package": "nope"}})
        assert r.status_code == 403


async def test_an_uploaded_hostile_zip_is_422_and_leaves_nothing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/runwire-package.yaml", "name: x\nversion: '1'\npipelines: [p.yaml]\n")
        zf.writestr("../../escape.py", "print('pwned')")
    config = _config(tmp_path)
    async with running_api(config) as (_, client):
        r = await client.post(
            "/v1/packages", json={"zip_base64": base64.b64encode(buf.getvalue()).decode()}
        )
        assert r.status_code == 422 and r.json()["code"] == "PACKAGE_INSTALL_FAILED"
        assert "escapes the package folder" in r.json()["detail"]
        assert _journal(config)[-1]["type"] == "package.install_failed"
    leftovers = [
        p for p in config.packages_dir.rglob("*") if p.name not in (".staging", ".uploads")
    ]
    assert leftovers == [] and not (tmp_path / "escape.py").exists()


async def test_an_uploaded_zip_larger_than_1_mib_is_accepted_up_to_its_own_limit(
    tmp_path: Path,
) -> None:
    pkg = write_package(tmp_path / "src", "big")
    (pkg / "data.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB, poorly compressible as stored
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in pkg.iterdir():
            zf.write(p, f"big/{p.name}")
    body = {"zip_base64": base64.b64encode(buf.getvalue()).decode()}
    async with running_api(_config(tmp_path)) as (_, client):
        r = await client.post("/v1/packages", json=body)
        assert r.status_code == 201, r.text
    async with running_api(_config(tmp_path, max_package_upload_bytes=1 << 20)) as (_, client):
        r = await client.post("/v1/packages", json=body)
        assert r.status_code == 413


async def test_a_session_on_a_package_is_reactivated_after_a_restart(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "again")
    config = _config(tmp_path)
    async with running_api(config) as (_, client):
        assert (await client.post("/v1/packages", json={"path": str(pkg)})).status_code == 201
        r = await client.post(
            "/v1/sessions", json={"session_id": "r", "pipeline": {"package": "again"}}
        )
        assert r.status_code == 201, r.text
    # A new process starts with nothing active: drop what this one activated.
    for active in active_packages():
        from pipeline.packages.activation import deactivate

        active.users.clear()
        deactivate(active.name)
    assert "again.version" not in REGISTRY
    async with running_api(config) as (app, client):
        assert (await client.get("/v1/sessions/r")).status_code == 200
        run = await _run(app, client, "r")
        assert run["status"] == "succeeded", run


async def test_with_a_token_only_an_authenticated_client_may_install(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "guarded")
    config = _config(tmp_path, token="s3cret")
    async with running_api(config) as (_, client):
        r = await client.post("/v1/packages", json={"path": str(pkg)})
        assert r.status_code == 401
        assert not (config.packages_dir / "guarded").exists()
        r = await client.post(
            "/v1/packages", json={"path": str(pkg)}, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 201, r.text


async def test_an_unknown_package_or_pipeline_is_a_clear_error(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "known")
    async with running_api(_config(tmp_path)) as (_, client):
        r = await client.post("/v1/sessions", json={"pipeline": {"package": "unknown"}})
        assert r.status_code == 404 and r.json()["detail"] == "package unknown is not installed"
        assert (await client.post("/v1/packages", json={"path": str(pkg)})).status_code == 201
        r = await client.post(
            "/v1/sessions", json={"pipeline": {"package": "known", "file": "other.yaml"}}
        )
        assert (
            r.status_code == 422
            and "has no pipeline 'other.yaml' (it has: pipe.yaml)" in r.json()["detail"]
        )
        assert (await client.get("/v1/packages/unknown")).status_code == 404
    assert active_packages() == []
