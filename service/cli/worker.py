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
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from service.cli.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from service.cli.serve import LOG_LEVEL
from service.cli.settings import add_setting_flags, settings_from
from service.runtime.config import SETTINGS_BY_NAME, Setting

if TYPE_CHECKING:
    from service.runtime.worker import WorkerSettings

__all__ = ["WORKER_SETTINGS", "add_parsers", "build_settings", "run_worker"]


def _worker_name(raw: object) -> str:
    name = str(raw)
    if not name or any(c in name for c in " :*?[]"):
        raise ValueError(f"no spaces or any of :*?[] please, got {name!r}")
    return name


# `runwire worker`'s flags: the settings it shares with `runwire serve` (one declaration each,
# in `service.runtime.config`), then its own.
WORKER_SETTINGS: tuple[Setting, ...] = (
    # Required here (no embedded broker, no default directory): same flag, variable and check.
    replace(
        SETTINGS_BY_NAME["broker"],
        default=None,
        shown_default=None,
        help="the API node's broker, redis://HOST:PORT/DB (required)",
    ),
    replace(
        SETTINGS_BY_NAME["data_dir"],
        default=None,
        shown_default=None,
        help="the API node's data directory, shared (required)",
    ),
    SETTINGS_BY_NAME["lease_ttl"],
    Setting(
        "threads",
        1,
        flag="--threads",
        env="RUNWIRE_WORKER_THREADS",
        number=int,
        minimum=1,
        help="runs computed at once",
    ),
    Setting(
        "name",
        "",
        flag="--name",
        env="RUNWIRE_WORKER_NAME",
        parse=_worker_name,
        shown_default="HOST-PID-random",
        help="worker name, unique among workers",
    ),
    LOG_LEVEL,
)


def add_parsers(sub: Any) -> None:
    """Add `worker` to the `runwire` command tree (its flags from `WORKER_SETTINGS`)."""
    p = sub.add_parser(
        "worker",
        help="compute runs from the Redis run queue (scale-out; see `serve --runs workers`)",
        description="Take runs from the Redis run queue and compute them. Every flag also "
        "reads an environment variable.",
    )
    add_setting_flags(p, WORKER_SETTINGS)
    p.set_defaults(func=run_worker)


def build_settings(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerSettings:
    """The worker's settings; `CliError` (exit 64) for a missing or bad value."""
    from service.runtime.worker import WorkerSettings

    values = settings_from(args, env, WORKER_SETTINGS)
    if "broker" not in values:
        raise CliError("runwire worker needs --broker redis://HOST:PORT/DB", EXIT_USAGE)
    if "data_dir" not in values:
        raise CliError("runwire worker needs --data-dir (the API node's, shared)", EXIT_USAGE)
    values["data_dir"] = values["data_dir"].resolve()
    values.pop("log_level", None)
    return WorkerSettings(**values)


def run_worker(args: argparse.Namespace) -> int:
    """`runwire worker`: take runs until SIGTERM/SIGINT, finish the running ones, return 0."""
    settings = build_settings(args, os.environ)
    level = str(settings_from(args, os.environ, (LOG_LEVEL,)).get("log_level", "info")).upper()
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
