"""A full disk under a real `runwire serve` (contract section 4, `STORAGE_FULL`).

The data directory lives on a 16 MiB tmpfs mounted for the test (root only; skipped with the
reason elsewhere) and is filled to ENOSPC with one big file. While it is full: writes answer
507 with `Retry-After`, a refused submit leaves no run directory, readiness is 503, a run that
finishes ends `failed` (not `running` forever) with exactly one terminal event once the file is
deleted, and the log holds one line per kind of error, not one traceback per event. After the
file is deleted everything works again without a restart. Start-up on a full disk is one line
and exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sstore_server import ServeProcess, SseFollower, free_port, serve_command

from streaming.envelope import TERMINAL_RUN_TYPES

pytestmark = pytest.mark.slow

TMPFS_SIZE = "16m"

LONG_PIPELINE = """\
name: long
steps:
  - id: wait
    use: diag.sleep
    params: {seconds: 3, ticks: 12}
"""

QUICK_PIPELINE = """\
name: quick
steps:
  - id: burst
    use: diag.emit
    params: {count: 3, payload_bytes: 16}
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted on a fresh directory (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a killed server's files are closed by then, but be sure never to leave it.
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write one file until the disk says ENOSPC; returns it (delete it to free the space)."""
    filler = disk / "filler.bin"
    chunk = b"\xff" * (1 << 20)
    with open(filler, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):  # the tail: the last partial MiB
            while handle.write(b"\xff" * 4096):
                pass
    return filler


def terminal_types(data_dir: Path, session_id: str, run_id: str) -> list[str]:
    log = data_dir / "runs" / session_id / run_id / "events.ndjson"
    types = [json.loads(line)["type"] for line in log.read_text().splitlines() if line.strip()]
    return [t for t in types if t in TERMINAL_RUN_TYPES]


def run_dirs(data_dir: Path, session_id: str) -> set[str]:
    folder = data_dir / "runs" / session_id
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()


def test_full_disk_gives_507_fails_the_finishing_run_once_and_recovers_without_restart(
    small_disk: Path,
) -> None:
    data_dir = small_disk / "data"
    server = ServeProcess(data_dir)
    server.start()
    follower: SseFollower | None = None
    try:
        with server.client() as c:
            for sid, text in (("long", LONG_PIPELINE), ("quick", QUICK_PIPELINE)):
                created = c.post(
                    "/sessions", json={"session_id": sid, "pipeline": {"yaml_text": text}}
                )
                assert created.status_code == 201, created.text
            follower = SseFollower(server.url).start()
            run_id = c.post("/sessions/long/process", json={"mode": "full"}).json()["run_id"]
            assert follower.wait_for(
                lambda evs: any(e[1] == "run.started" and run_id in e[2] for e in evs), timeout=60
            )
            filler = fill(small_disk)

            # Writes: 507 with Retry-After, nothing created.
            create = c.post(
                "/sessions", json={"session_id": "late", "pipeline": {"yaml_text": QUICK_PIPELINE}}
            )
            assert create.status_code == 507, create.text
            assert create.json()["code"] == "STORAGE_FULL"
            assert int(create.headers["Retry-After"]) > 0
            assert c.get("/sessions/late").status_code == 404
            before = run_dirs(data_dir, "quick")
            submit = c.post("/sessions/quick/process", json={"mode": "full"})
            assert submit.status_code == 507 and "Retry-After" in submit.headers
            assert run_dirs(data_dir, "quick") == before  # a refused submit leaves no directory
            assert c.get("/sessions/quick/runs").json()["runs"] == []

            # A cancel needs a commit too: 507, and the run is left as it was.
            cancel = c.post(f"/runs/{run_id}/cancel", json={})
            assert cancel.status_code == 507, cancel.text
            assert c.get(f"/runs/{run_id}").json()["status"] == "running"

            # Readiness: not ready while writes fail.
            ready = c.get("/readiness")
            assert ready.status_code == 503
            assert ready.json()["ready"] is False and ready.json()["status"] != "ok"

            # The long run reaches its end on the full disk: it must not end yet, nor stay
            # `running` for ever once space is back.
            def waiting_for_space(_: object) -> bool:
                return any("ends failed once" in line for line in server.log)

            assert follower.wait_for(waiting_for_space, timeout=60, recheck=0.2)
            assert not any(e[1] in TERMINAL_RUN_TYPES for e in follower.snapshot())

            filler.unlink()  # the operator frees space: no restart

            def ended(evs: list[tuple[str, str, str]]) -> bool:
                return any(e[1] in TERMINAL_RUN_TYPES and run_id in e[2] for e in evs)

            assert follower.wait_for(ended, timeout=60)
            run = c.get(f"/runs/{run_id}").json()
            assert run["status"] == "failed"
            assert run["error"]["code"] == "STORAGE_FULL"
            assert c.get("/sessions/long").json()["state"].startswith("error")

            # Everything works again.
            assert c.get("/readiness").json()["ready"] is True
            assert (
                c.post(
                    "/sessions",
                    json={"session_id": "late", "pipeline": {"yaml_text": QUICK_PIPELINE}},
                ).status_code
                == 201
            )
            again = c.post("/sessions/quick/process", json={"mode": "full"})
            assert again.status_code == 202
            again_id = again.json()["run_id"]

            def succeeded(evs: list[tuple[str, str, str]]) -> bool:
                return any(e[1] == "run.finished" and again_id in e[2] for e in evs)

            assert follower.wait_for(succeeded, timeout=60)
            assert c.get(f"/runs/{again_id}").json()["status"] == "succeeded"

        terminals = [
            e for e in follower.snapshot() if e[1] in TERMINAL_RUN_TYPES and run_id in e[2]
        ]
        assert len(terminals) == 1
        assert terminal_types(data_dir, "long", run_id) == ["run.finished"]
        summary = json.loads((data_dir / "runs" / "long" / run_id / "summary.json").read_text())
        assert summary["status"] == "failed"
        # One log line per kind of error, not one traceback per event of the run.
        journal_errors = [line for line in server.log if "cannot journal event" in line]
        assert 1 <= len(journal_errors) <= 3, journal_errors
        assert sum(line.startswith("Traceback") for line in server.log) <= 3
    finally:
        server.kill()
        if follower is not None:
            follower.close()


def test_start_on_a_full_disk_is_one_line_and_exit_1(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    server = ServeProcess(data_dir)
    server.start()  # a data directory in use before the disk filled up
    assert server.terminate() == 0
    fill(small_disk)
    started = subprocess.run(
        [*serve_command(), "serve", "--data-dir", str(data_dir), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    assert "full" in lines[0] and str(data_dir) in lines[0]
