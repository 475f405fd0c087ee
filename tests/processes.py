"""What every test that starts a real process needs: a free loopback port and the `runwire`
command of this environment. (tests/ is on `sys.path` through tests/conftest.py.)"""

from __future__ import annotations

import socket
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
