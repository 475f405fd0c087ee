"""Real processes for the run-side scale-out tests: `runwire serve --runs workers` and
`runwire worker`s on one `redis-server` (the `redis_server` fixture), and small helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from processes import wait_and_close
from sstore_server import (
    ServeProcess,
    SseFollower,
    serve_command,
    wait_run_final,
)

__all__ = [
    "LEASE_TTL",
    "ServeProcess",
    "SseFollower",
    "WorkerProcess",
    "api_node",
    "poll",
    "terminal_events",
    "wait_final",
]

LEASE_TTL = 4.0  # short, so that a killed worker is noticed within seconds; long enough that
# a heartbeat thread starved by a loaded machine (CI on 2 cores) never loses a lease
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


def api_node(data_dir: Path, broker: str) -> ServeProcess:
    return ServeProcess(
        data_dir,
        extra_args=("--broker", broker, "--runs", "workers", "--lease-ttl", str(LEASE_TTL)),
    )


class WorkerProcess:
    """`runwire worker` as a child process; `start()` returns once it takes runs (its log)."""

    def __init__(self, data_dir: Path, broker: str, name: str, *, threads: int = 1) -> None:
        self.data_dir = data_dir
        self.broker = broker
        self.name = name
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        ready = threading.Event()
        argv = [*serve_command(), "worker", "--broker", self.broker, "--data-dir",
                str(self.data_dir), "--name", self.name, "--threads", str(self.threads),
                "--lease-ttl", str(LEASE_TTL)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.proc = proc

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log.append(line)
                if "taking runs from" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or proc.poll() is not None:
            self.kill()
            raise AssertionError("runwire worker did not start:\n" + "\n".join(self.log[-30:]))
        return self

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def terminate(self) -> int:
        """SIGTERM: finish the running runs, give the leases back, exit 0."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout: float = 60.0) -> int:
        return wait_and_close(self.proc, timeout)


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Ask `check()` over HTTP until it returns something truthy (each answer is a fresh server
    state, not a timing guess); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # pacing between HTTP polls of a real server


def wait_final(client: httpx.Client, run_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """The run once it has ended (its SSE stream ends after its terminal event)."""
    run = wait_run_final(client, run_id, timeout)
    assert run["status"] in FINAL, run
    return run


def terminal_events(events: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """run id -> the types of its terminal events, from an SSE follower's record."""
    out: dict[str, list[str]] = {}
    for _id, kind, data in events:
        if kind in ("run.finished", "run.cancelled", "run.interrupted"):
            envelope = json.loads(data)
            run_id = envelope.get("runid") or envelope.get("subject") or ""
            out.setdefault(run_id, []).append(kind)
    return out
