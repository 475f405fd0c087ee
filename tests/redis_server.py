"""A real `redis-server` (Debian's package) on a free loopback port with its own directory.

Tests that need Redis take the `redis_server` fixture (tests/conftest.py). Without
`redis-server` on the machine they skip, saying so, on a developer's machine; under CI
(`RUNWIRE_REQUIRE_REDIS=1`, set by `.ci/run`, which installs the package) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from processes import free_port

READY_LINE = "Ready to accept connections"


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """`redis-server` as a child process. `start()` returns once the server logs that it
    accepts connections; `kill()` is SIGKILL, `stop()` a clean SHUTDOWN by SIGTERM; `start()`
    again reuses the port and the directory (and so the append-only file)."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        exe = redis_server_path()
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",  # "nothing acknowledged lost" even on SIGKILL
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        ready = threading.Event()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.proc = proc

        def pump() -> None:
            assert proc.stdout is not None
            with proc.stdout:
                for line in proc.stdout:
                    self.log.append(line.rstrip())
                    if READY_LINE in line:
                        ready.set()
            ready.set()  # EOF: the process ended; start() checks for that

        self._pump = threading.Thread(target=pump, name="redis-log", daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or proc.poll() is not None:
            self.kill()
            raise RuntimeError("redis-server did not start:\n" + "\n".join(self.log[-20:]))

    def kill(self) -> None:
        """SIGKILL, as a crash: no final write beyond what the append-only file holds."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._join_pump()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._join_pump()

    def _join_pump(self) -> None:
        """The log reader ends at EOF and closes the pipe (no unclosed-file warning)."""
        if self._pump is not None:
            self._pump.join(timeout=30)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
