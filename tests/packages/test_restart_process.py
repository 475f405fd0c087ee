"""A session on a package survives a restart of a real `runwire serve` process: the package
is activated again before the session is recovered, and the session runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from package_builders import write_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from sstore_server import ServeProcess, SseFollower

pytestmark = pytest.mark.slow


def test_a_package_session_is_reactivated_by_a_restarted_server(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "survivor")
    server = ServeProcess(tmp_path / "data", extra_args=("--allow-packages",))
    server.start()
    try:
        with server.client() as client:
            r = client.post("/packages", json={"path": str(pkg)})
            assert r.status_code == 201, r.text
            r = client.post(
                "/sessions", json={"session_id": "s", "pipeline": {"package": "survivor"}}
            )
            assert r.status_code == 201, r.text
    finally:
        assert server.terminate() == 0
    server.start()
    follower = SseFollower(server.url).start()
    try:
        with server.client() as client:
            assert client.get("/sessions/s").status_code == 200
            r = client.post("/sessions/s/process", json={})
            assert r.status_code == 202, r.text
            run_id = r.json()["run_id"]
            assert follower.wait_for(
                lambda evs: any(
                    t == "run.finished" and json.loads(d).get("runid") == run_id for _, t, d in evs
                ),
                timeout=60,
            )
            run = client.get(f"/runs/{run_id}").json()
            assert run["status"] == "succeeded", run
            steps = {s["name"] for s in client.get("/steps").json()["steps"]}
            assert "survivor.version" in steps
    finally:
        server.terminate()
        follower.close()
    assert json.loads((tmp_path / "data" / "packages" / "sessions.json").read_text()) == {
        "s": {"name": "survivor", "version": "1.0.0"}
    }
