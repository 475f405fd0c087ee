"""One server per data directory (contract section 1): a second `runwire serve` on a directory
a live server holds exits 69 with one line naming the directory and the holder's pid, and
touches nothing: the first server's running run is not interrupted, its queued run not started
a second time, and each ends with exactly one terminal event."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sstore_server import ServeProcess, SseFollower, free_port, serve_command

from service.storage.datalock import DataDirLock, DataDirLocked
from streaming.envelope import TERMINAL_RUN_TYPES

pytestmark = pytest.mark.slow

SLOW_PIPELINE = """\
name: slow
steps:
  - id: wait
    use: diag.sleep
    params: {seconds: 60, ticks: 120}
"""


def _terminal_types(data_dir: Path, session_id: str, run_id: str) -> list[str]:
    log = data_dir / "runs" / session_id / run_id / "events.ndjson"
    types = [json.loads(line)["type"] for line in log.read_text().splitlines() if line.strip()]
    return [t for t in types if t in TERMINAL_RUN_TYPES]


def test_second_server_on_one_data_directory_exits_69_and_touches_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = ServeProcess(data_dir)
    first.start()
    follower = None
    try:
        assert first.proc is not None
        assert (data_dir / "runwire.lock").read_text().strip() == str(first.proc.pid)
        with first.client() as c:
            created = c.post(
                "/sessions", json={"session_id": "s1", "pipeline": {"yaml_text": SLOW_PIPELINE}}
            )
            assert created.status_code == 201, created.text
            follower = SseFollower(first.url).start()
            running = c.post("/sessions/s1/process", json={"mode": "full"}).json()["run_id"]
            queued = c.post("/sessions/s1/process", json={"mode": "full"}).json()["run_id"]
            assert follower.wait_for(
                lambda evs: any(e[1] == "run.started" for e in evs), timeout=60
            )
            second = subprocess.run(
                [
                    *serve_command(),
                    "serve",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(free_port()),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 69
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert str(data_dir) in lines[0] and f"pid {first.proc.pid}" in lines[0]
            # Nothing touched: the lock still names the first server, the running run is still
            # running (not `interrupted`) and the queued one still waits (not run twice).
            assert (data_dir / "runwire.lock").read_text().strip() == str(first.proc.pid)
            assert c.get(f"/runs/{running}").json()["status"] == "running"
            assert c.get(f"/runs/{queued}").json()["status"] == "queued"

            # The first server still owns its runs: it cancels them, each with one terminal event.
            for run_id in (queued, running):
                assert c.post(f"/runs/{run_id}/cancel", json={}).status_code == 202

            def both_final(_: object) -> bool:
                return all(
                    c.get(f"/runs/{r}").json()["status"] == "cancelled" for r in (running, queued)
                )

            assert follower.wait_for(both_final, timeout=120, recheck=0.5)
        for run_id in (running, queued):
            assert _terminal_types(data_dir, "s1", run_id) == ["run.cancelled"]
    finally:
        if follower is not None:
            first.kill()
            follower.close()
        first.kill()


def test_lock_is_released_by_the_kernel_when_the_holder_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServeProcess(data_dir)
    server.start()
    try:
        with pytest.raises(DataDirLocked) as info:
            DataDirLock(data_dir).acquire()
        assert server.proc is not None and info.value.pid == server.proc.pid
    finally:
        server.kill()  # SIGKILL: no clean-up code runs
    with DataDirLock(data_dir) as lock:
        assert lock.held
