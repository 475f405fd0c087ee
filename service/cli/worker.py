"""`runwire worker`: compute runs taken from the Redis run queue (contract section 12).

`runwire worker --broker URL --data-dir DIR [--lease-ttl S] [--threads N] [--name ID]`, each
flag with an environment variable (a flag wins over its variable, which wins over the
default). Many workers may run on one machine and on many machines sharing the data directory;
the API node is `runwire serve --broker URL --runs workers` (docs/scale-out.md).

SIGTERM/SIGINT: stop taking runs, let the running ones finish, give the leases back, exit 0.
Only the standard library is imported at module level (the parser is built for every command).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from service.runtime.worker import WorkerSettings

__all__ = ["add_parsers", "build_settings", "run_worker"]

ENV_VARS = {
    "broker": "RUNWIRE_BROKER",
    "data_dir": "RUNWIRE_DATA_DIR",
    "lease_ttl": "RUNWIRE_LEASE_TTL",
    "threads": "RUNWIRE_WORKER_THREADS",
    "name": "RUNWIRE_WORKER_NAME",
    "log_level": "RUNWIRE_LOG_LEVEL",
}


def add_parsers(sub: Any) -> None:
    """Add `worker` to the `runwire` command tree."""
    p = sub.add_parser(
        "worker",
        help="compute runs from the Redis run queue (scale-out; see `serve --runs workers`)",
        description="Take runs from the Redis run queue and compute them. Every flag also "
        "reads an environment variable.",
    )
    p.add_argument("--broker", help="redis://HOST:PORT/DB, the API node's (RUNWIRE_BROKER)")
    p.add_argument("--data-dir", help="the API node's data directory, shared (RUNWIRE_DATA_DIR)")
    p.add_argument("--lease-ttl", type=float, help="seconds a session's lease and this worker's "
                   "heartbeat live unrenewed (RUNWIRE_LEASE_TTL, default 10)")  # fmt: skip
    p.add_argument("--threads", type=int,
                   help="runs computed at once (RUNWIRE_WORKER_THREADS, default 1)")  # fmt: skip
    p.add_argument("--name", help="worker name, unique among workers (RUNWIRE_WORKER_NAME, "
                   "default HOST-PID-random)")  # fmt: skip
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log level (RUNWIRE_LOG_LEVEL, default info)")  # fmt: skip
    p.set_defaults(func=run_worker)


def _setting(args: argparse.Namespace, env: Mapping[str, str], dest: str) -> Any:
    value = getattr(args, dest, None)
    if value is not None:
        return value
    return env.get(ENV_VARS[dest]) or None


def build_settings(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerSettings:
    """The worker's settings; `CliError` (exit 64) for a missing or bad value."""
    from service.cli.serve import broker_url
    from service.runtime.worker import WorkerSettings

    broker = _setting(args, env, "broker")
    if broker is None:
        raise CliError("runwire worker needs --broker redis://HOST:PORT/DB", EXIT_USAGE)
    data_dir = _setting(args, env, "data_dir")
    if data_dir is None:
        raise CliError("runwire worker needs --data-dir (the API node's, shared)", EXIT_USAGE)
    values: dict[str, Any] = {"broker": broker_url(str(broker)),
                              "data_dir": Path(data_dir).expanduser().resolve()}  # fmt: skip
    for dest, kind, minimum in (("lease_ttl", float, 0.5), ("threads", int, 1)):
        raw = _setting(args, env, dest)
        if raw is None:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise CliError(f"{ENV_VARS[dest]}: expected a number, got {raw!r}", EXIT_USAGE) from None
        if value < minimum:
            flag = "--" + dest.replace("_", "-")
            raise CliError(f"{flag} must be at least {minimum}, got {value}", EXIT_USAGE)
        values[dest] = value
    if (name := _setting(args, env, "name")) is not None:
        name = str(name)
        if not name or any(c in name for c in " :*?[]"):
            raise CliError(f"--name: no spaces or any of :*?[] please, got {name!r}", EXIT_USAGE)
        values["name"] = name
    return WorkerSettings(**values)


def run_worker(args: argparse.Namespace) -> int:
    """`runwire worker`: take runs until SIGTERM/SIGINT, finish the running ones, return 0."""
    settings = build_settings(args, os.environ)
    level = str(_setting(args, os.environ, "log_level") or "info").upper()
    if not (settings.data_dir / "runs").is_dir():
        raise CliError(f"{settings.data_dir} is not a runwire data directory (no runs/): "
                       "give the API node's --data-dir", EXIT_USAGE)  # fmt: skip
    import redis

    import pipeline.steps  # noqa: F401  (registers the built-in steps)
    from service.runtime.worker import Worker

    worker = Worker(settings)
    try:
        worker.redis.ping()
    except redis.RedisError as exc:
        raise CliError(f"cannot reach {settings.broker}: {exc}", EXIT_UNAVAILABLE) from None

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("service.runtime.worker").info("signal %d: finishing runs", signum)
        worker.stop()

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    logging.shutdown()
    return 0
