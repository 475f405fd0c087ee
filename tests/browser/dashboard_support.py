"""Harness for the browser tests, the screenshot script and the dashboard benchmark: a real
`runwire serve` on a fixed loopback port (kept across restarts, as a browser tab would see it)
and headless Chromium from the system (Debian's `chromium`) driven by Playwright.

Importable as `from dashboard_support import ...` (tests/browser is on sys.path in its tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

# The screenshot script and the dashboard bench run outside pytest: tests/ on the path for
# the shared process helpers (tests/conftest.py does it under pytest).
sys.path.insert(0, str(Path(__file__).parents[1]))
from processes import free_port, runwire_command

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: the machine is shared and slow; waits are on conditions, never fixed sleeps.
WAIT_MS = 60_000


def chromium_path() -> str | None:
    """Debian's chromium (Playwright's own browser download is not available here)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class DashboardServer:
    """`runwire serve` as a child process on one port for its whole life, restarts included.

    `start()` returns once uvicorn says it listens (read from its log). The token, if any, is
    passed in the environment (never on the command line, where `ps` would show it).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        token: str | None = None,
        demo: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.token = token
        self.demo = demo
        self.extra_args = extra_args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        argv = [
            *runwire_command(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        argv += ["--shutdown-grace", "2", *self.extra_args]
        if self.demo:
            argv.append("--demo")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
        if self.token is not None:
            env["RUNWIRE_TOKEN"] = self.token
        listening = threading.Event()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        self._drainer = threading.Thread(
            target=self._drain, args=(self.proc, listening), daemon=True
        )
        self._drainer.start()
        if not listening.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise AssertionError("runwire serve did not start:\n" + "\n".join(self.log[-40:]))

    def _drain(self, proc: subprocess.Popen[bytes], listening: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()

    def kill(self) -> None:
        """SIGKILL: a crash in the middle of whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.wait()

    def wait(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        if self._drainer is not None:
            self._drainer.join(timeout)  # it ends at the pipe's EOF, after the process is gone
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url + "/v1", timeout=30.0, headers=headers)

    def disk_events(self) -> list[dict[str, Any]]:
        """Every event the server wrote to its run directories' `events.ndjson`, by seq."""
        import json

        events = []
        for path in (self.data_dir / "runs").rglob("events.ndjson"):
            for line in path.read_bytes().splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line (crash): not an event
        return sorted(events, key=lambda e: e["seq"])


def wait_until(page: Any, predicate: str, arg: Any = None, *, timeout_ms: int = WAIT_MS) -> Any:
    """Wait for a JS arrow function `predicate` (a function literal: the page's CSP forbids
    Playwright evaluating a plain string) to return something truthy."""
    return page.wait_for_function(predicate, arg=arg, timeout=timeout_ms)


def launch(playwright: Any) -> Any:
    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium: install Debian's `chromium` package")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


def record_console(page: Any) -> Callable[[], list[str]]:
    """Collect page errors and console errors; returns a getter."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    return lambda: list(errors)
