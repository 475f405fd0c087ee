"""What `runwire serve` logs (a real server process): one access line per request at info,
never the token, and the shutdown grace announced when a signal arrives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sstore_server import free_port, serve_command

TOKEN = "s3cret-token-never-logged"

SLEEP = """
name: sleeper
steps:
  - id: nap
    use: diag.sleep
    params: {seconds: 120, ticks: 1200}
"""


class ServerLog:
    """The server's stderr, line by line, with a wait on a condition over it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                assert left > 0, "log never showed it:\n" + "\n".join(self.lines[-40:])
                self.cond.wait(left)

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


def has(pattern: str) -> Callable[[list[str]], bool]:
    compiled = re.compile(pattern)
    return lambda lines: any(compiled.search(line) for line in lines)


def test_access_lines_without_secrets_and_the_shutdown_grace_in_the_log(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        *serve_command(),
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        str(port),
        "--shutdown-grace",
        "1",
        "--token",
        TOKEN,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        log = ServerLog(proc)
        log.wait_for(has("Uvicorn running on"))
        url = f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            assert client.get("/sessions").status_code == 401
            assert client.get("/sessions", headers=auth).status_code == 200
            # A browser's way of sending the token: in the query string.
            assert client.get("/sessions", params={"access_token": TOKEN}).status_code == 200
            assert client.get("/sessions/nobody", headers=auth).status_code == 404
            body = {"session_id": "s", "pipeline": {"yaml_text": SLEEP}}
            assert client.post("/sessions", json=body, headers=auth).status_code == 201
            answer = client.post("/sessions/s/process", json={}, headers=auth)
            assert answer.status_code == 202
            run_id = answer.json()["run_id"]
            # Wait until the run is running (its first progress tick on the run's stream).
            with client.stream(
                "GET", f"/runs/{run_id}/events", params={"since": "0"}, headers=auth
            ) as stream:
                for line in stream.iter_lines():
                    if line == "event: step.progress":
                        break

        access = r"INFO runwire\.access: "
        ms = r" \d+\.\d ms$"
        log.wait_for(has(access + "GET /v1/sessions/nobody 404" + ms))
        for expected in (
            "GET /v1/health 200",
            "GET /v1/sessions 401",
            "GET /v1/sessions 200",
            "POST /v1/sessions 201",
            "POST /v1/sessions/s/process 202",
        ):
            assert has(access + re.escape(expected) + ms)(log.lines), expected
        # The SSE stream is logged when it ends (the client left it): one line, its duration.
        log.wait_for(has(access + re.escape(f"GET /v1/runs/{run_id}/events 200") + ms))
        assert sum("GET /v1/sessions 200" in line for line in log.lines) == 2

        proc.send_signal(signal.SIGTERM)
        log.wait_for(has(r"shutting down: waiting up to 1 s for 1 running run \(then cancelled\)"))
        assert proc.wait(60) == 0
        text = log.text()
        assert TOKEN not in text and "access_token" not in text
        assert "Authorization" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
