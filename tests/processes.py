"""What every test that starts a real process needs: a free loopback port, the `runwire`
command of this environment, and a wait that closes the process's stderr pipe. (tests/ is on
`sys.path` through tests/conftest.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def runwire_command() -> list[str]:
    """The `runwire` console script of this environment (or `python -m service.cli`)."""
    script = Path(sys.executable).parent / "runwire"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "service.cli"]


def wait_and_close(proc: subprocess.Popen[bytes] | None, timeout: float) -> int:
    """Wait for `proc` to exit (its return code; 0 if it was never started), then close its
    stderr pipe whatever happened."""
    if proc is None:
        return 0
    try:
        return proc.wait(timeout)
    finally:
        if proc.stderr is not None:
            proc.stderr.close()
