"""Restart with a real `runwire serve` process: SIGTERM, start again on the same data directory,
and everything is there — sessions with their sources, runs, idempotency keys, the event history
and the retained runs of a session that was deleted."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import h5py
import pytest
from sstore_server import (
    DIAG_PIPELINE,
    ServeProcess,
    all_retained,
    free_port,
    run_dirs_on_disk,
    seq_of,
    serve_command,
    wait_run_final,
)

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

pytestmark = pytest.mark.slow


def test_everything_is_there_after_sigterm_and_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    frames = write_demo_data(tmp_path / "frames", count=1, shape=(48, 48))
    sample = next(p for p in frames if p.name.startswith("sample_"))
    sources = {"sources": [{"ref": "sample", "type": "hdf5", "location": str(sample)}]}
    server = ServeProcess(data_dir)
    server.start()
    try:
        with server.client() as c:
            c.post(
                "/sessions", json={"session_id": "keep", "pipeline": {"yaml_text": DIAG_PIPELINE}}
            ).raise_for_status()
            c.post(
                "/sessions",
                json={"session_id": "gone", "pipeline": {"yaml_text": example_text("saxs")}},
            ).raise_for_status()
            c.put("/sessions/gone/sources", json=sources).raise_for_status()
            kept = c.post("/sessions/keep/process", json={}, headers={"Idempotency-Key": "k-1"})
            assert kept.status_code == 202
            kept_run = kept.json()["run_id"]
            gone_run = c.post("/sessions/gone/process", json={}).raise_for_status().json()["run_id"]
            assert wait_run_final(c, kept_run)["status"] == "succeeded"
            assert wait_run_final(c, gone_run)["status"] == "succeeded"
            assert (
                c.delete("/sessions/gone", headers={"content-type": "application/json"}).status_code
                == 204
            )
            before_sessions = c.get("/sessions/keep").json()
            before_run = c.get(f"/runs/{kept_run}").json()
            before_retained = all_retained(c)
    finally:
        status = server.terminate()
    assert status == 0, "\n".join(server.log[-30:])
    old_seqs = [
        json.loads(line)["seq"]
        for log in data_dir.joinpath("runs").rglob("events.ndjson")
        for line in log.read_text().splitlines()
    ]

    server.start()
    try:
        with server.client() as c:
            assert [s["session_id"] for s in c.get("/sessions").json()["sessions"]] == ["keep"]
            again = c.get("/sessions/keep").json()
            assert again["sources"] == before_sessions["sources"]
            assert again["pipeline"] == before_sessions["pipeline"]
            assert c.get(f"/runs/{kept_run}").json() == before_run
            # The same Idempotency-Key after the restart still returns the first run.
            repeat = c.post("/sessions/keep/process", json={}, headers={"Idempotency-Key": "k-1"})
            assert repeat.json()["run_id"] == kept_run

            # The deleted session's run: still listed, its summary, manifest and artifact.
            retained = all_retained(c)
            assert retained == before_retained
            assert {r["run_id"] for r in retained} == run_dirs_on_disk(data_dir)
            summary = c.get(f"/retained-runs/{gone_run}").json()
            assert summary["session_id"] == "gone"
            assert summary["status"] == "succeeded"
            manifest = c.get(f"/retained-runs/{gone_run}/artifact-manifest").json()
            paths = [a["path"] for a in manifest["artifacts"]]
            assert "reduced.h5" in paths
            artifact = c.get(f"/retained-runs/{gone_run}/artifacts/reduced.h5")
            assert artifact.status_code == 200
            with h5py.File(io.BytesIO(artifact.content), "r") as f:
                assert f["/sasentry01/sasdata01/I"].shape[0] > 0
            reports = c.get(f"/retained-runs/{gone_run}/reports").json()
            events = c.get(reports["events"]["url"].removeprefix("/v1")).text.splitlines()
            assert json.loads(events[-1])["type"] == "run.finished"

            # New events continue above every seq handed out before the restart.
            new_run = c.post("/sessions/keep/process", json={}).raise_for_status().json()["run_id"]
            assert wait_run_final(c, new_run)["status"] == "succeeded"
            new_log = data_dir / "runs" / "keep" / new_run / "events.ndjson"
            new_seqs = [json.loads(line)["seq"] for line in new_log.read_text().splitlines()]
            assert min(new_seqs) > max(old_seqs)
            first_id = json.loads(new_log.read_text().splitlines()[0])["id"]
            assert seq_of(first_id) == min(new_seqs)
    finally:
        assert server.terminate() == 0


def test_corrupt_store_stops_the_start_with_path_and_reason(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = data_dir / "runwire.sqlite3"
    garbage = b"this is not a database" * 500
    store.write_bytes(garbage)
    proc = subprocess.run(
        [*serve_command(), "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert str(store) in proc.stderr
    assert "not a database" in proc.stderr
    assert store.read_bytes() == garbage  # never replaced
