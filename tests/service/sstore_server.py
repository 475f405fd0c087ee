"""A real `runwire serve` subprocess and an SSE follower, for the restart and crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from processes import free_port, runwire_command, wait_and_close

DIAG_PIPELINE = """\
name: crashy
steps:
  - id: burst
    use: diag.emit
    params: {count: 15, payload_bytes: 64}
  - id: wait
    use: diag.sleep
    params: {seconds: 0.25, ticks: 5}
  - id: tail
    use: diag.emit
    params: {count: 5, payload_bytes: 16}
"""


serve_command = runwire_command  # the name the tests here import


class ServeProcess:
    """`runwire serve --data-dir D --port P` as a child process; `start()` returns once uvicorn
    says it is listening (read from its log, no polling)."""

    def __init__(
        self, data_dir: Path, *, shutdown_grace: float = 5.0, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.shutdown_grace = shutdown_grace
        self.extra_args = extra_args  # more `runwire serve` flags (--allow-packages, ...)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self._listening = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        self._listening = threading.Event()
        argv = [
            *serve_command(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--shutdown-grace",
            str(self.shutdown_grace),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        threading.Thread(target=self._drain, args=(self.proc, self._listening), daemon=True).start()
        if not self._listening.wait(timeout):
            self.kill()
            raise AssertionError("runwire serve did not start:\n" + "\n".join(self.log[-40:]))
        if self.proc.poll() is not None:
            raise AssertionError("runwire serve exited:\n" + "\n".join(self.log[-40:]))

    def _drain(self, proc: subprocess.Popen[bytes], listening: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()  # exited: let start() report it

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        return wait_and_close(self.proc, timeout)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/v1", timeout=30.0)


class SseFollower:
    """Follows `GET /v1/events?since=...` in a thread, recording `(id, type, data line)`."""

    def __init__(self, url: str, since: str = "0") -> None:
        self.url = url
        self.since = since
        self.events: list[tuple[str, str, str]] = []
        self.cond = threading.Condition()
        self.ended = False
        self.error: BaseException | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=60.0))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SseFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with self._client.stream(
                "GET",
                f"{self.url}/v1/events",
                params={"since": self.since},
                headers={"Accept": "text/event-stream"},
            ) as response:
                response.raise_for_status()
                frame: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "data" in frame and frame.get("event") != "stream.gap":
                            self._add((frame.get("id", ""), frame.get("event", ""), frame["data"]))
                        frame = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        frame[field] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, OSError) as exc:  # the server died: expected in crash tests
            self.error = exc
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def _add(self, event: tuple[str, str, str]) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[list[tuple[str, str, str]]], bool],
        timeout: float,
        *,
        recheck: float | None = None,
    ) -> bool:
        """Wait until `predicate(events)` holds (or the stream ended, or `timeout`). It is
        evaluated when an event arrives, and also every `recheck` seconds when it depends on
        more than the events (server state read over HTTP)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    return predicate(self.events)
                self.cond.wait(left if recheck is None else min(left, recheck))
            return True

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=30)

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self.cond:
            return list(self.events)


def seq_of(event_id: str) -> int:
    return int(event_id.rpartition("-")[2])


def all_retained(client: httpx.Client) -> list[dict[str, Any]]:
    """Every retained run, following `next_before` pages."""
    runs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        body = client.get("/retained-runs", params=params).raise_for_status().json()
        runs += body["runs"]
        if not body.get("next_before"):
            return runs
        params["before"] = body["next_before"]


def run_dirs_on_disk(data_dir: Path) -> set[str]:
    runs = data_dir / "runs"
    if not runs.exists():
        return set()
    return {p.name for s in runs.iterdir() if s.is_dir() for p in s.iterdir() if p.is_dir()}


def data_json(event: tuple[str, str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event[2])
    return parsed


def wait_run_final(client: httpx.Client, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Follow the run's SSE stream (it ends after the run's terminal event); return the run."""
    with client.stream(
        "GET",
        f"/runs/{run_id}/events",
        params={"since": "0"},
        headers={"Accept": "text/event-stream"},
        timeout=httpx.Timeout(timeout),
    ) as response:
        response.raise_for_status()
        for _ in response.iter_lines():
            pass
    run: dict[str, Any] = client.get(f"/runs/{run_id}").raise_for_status().json()
    return run
