"""`runwire serve`: settings from flags and environment, uvicorn run programmatically, and an
orderly shutdown on SIGTERM/SIGINT.

Each flag has an environment variable (contract section 1); a flag wins over its variable,
which wins over the default. Flags, variables, defaults, help and checks are declared once, in
`service.runtime.config` (`SETTINGS`, one per `Config` field) plus `--log-level` here. Binding
beyond loopback without a token is refused before anything starts.

Shutdown on SIGTERM/SIGINT is `service.http.server.RunwireServer`'s (drain first, then uvicorn's
own shutdown; see that module). The process exits 0 after a signal.

Only the standard library is imported at module level: the CLI parser is built for every
`runwire` command, including client commands that must start quickly.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Mapping
from typing import Any

from service.cli.errors import EXIT_DATA_DIR_IN_USE, EXIT_USAGE, CliError
from service.cli.settings import add_setting_flags, settings_from
from service.runtime.config import SETTINGS, Config, Setting

# sysexits.h EX_UNAVAILABLE: another server already serves this data directory.

__all__ = [
    "SERVE_SETTINGS",
    "add_parsers",
    "build_config",
    "is_loopback",
    "log_config",
    "log_level",
    "run_serve",
]

LOG_LEVELS = ("debug", "info", "warning", "error")

# `serve`'s own setting: how much it logs is not something the service reads.
LOG_LEVEL = Setting("log_level", "info", flag="--log-level", env="RUNWIRE_LOG_LEVEL",
                    help="log level", choices=LOG_LEVELS)  # fmt: skip
# Every flag of `runwire serve`, in --help order: the Config settings, then serve's own.
SERVE_SETTINGS: tuple[Setting, ...] = (*SETTINGS, LOG_LEVEL)


def add_parsers(sub: Any) -> None:
    """Add `serve` to the `runwire` command tree (its flags from `SERVE_SETTINGS`)."""
    p = sub.add_parser(
        "serve",
        help="run the service (HTTP API, WebSocket and SSE events)",
        description="Run the runwire service. Every flag also reads an environment variable.",
    )
    add_setting_flags(p, SERVE_SETTINGS)
    p.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from outside


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """The `Config` for these flags and environment; raises `CliError` (exit 64) for bad
    values and for a non-loopback host without a token."""
    config = Config(**settings_from(args, env, SETTINGS))
    if config.runs == "workers" and config.broker is None:
        raise CliError("--runs workers needs --broker redis://HOST:PORT/DB", EXIT_USAGE)
    if config.role == "stream" and (config.broker is None or config.api_url is None):
        raise CliError("--role stream needs --broker redis://... and --api-url URL", EXIT_USAGE)
    if not is_loopback(config.host) and not config.token:
        raise CliError(
            f"refusing to bind {config.host}: a non-loopback address needs a token "
            "(--token or RUNWIRE_TOKEN)",
            EXIT_USAGE,
        )
    return config


def log_level(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """`--log-level`, else `RUNWIRE_LOG_LEVEL`, else `info`; `CliError` (exit 64) for a level
    the flag's choices would have refused."""
    level: str = settings_from(args, env, (LOG_LEVEL,)).get("log_level", LOG_LEVEL.default)
    return level


def log_config(level: str) -> dict[str, Any]:
    """One plain format on stderr for uvicorn's loggers and ours; access log at the same level."""
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": "plain",
        "stream": "ext://sys.stderr",
    }
    # A failing disk repeats one error per event: logged once, then counted (service.http.logcollapse).
    handler["filters"] = ["collapse_repeats"]
    ours = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {"stderr": handler},
        "filters": {"collapse_repeats": {"()": "service.http.logcollapse.RepeatFilter"}},
        "loggers": {
            name: dict(ours)
            for name in ("uvicorn", "uvicorn.access", "runwire", "service", "streaming", "pipeline")
        },
    }


def _check_bind(config: Config) -> None:
    """Try the address once before serving, so that a port in use or an unknown host name is
    one clear line and exit 1, not a log record and uvicorn's own exit status. (The socket is
    closed again at once; uvicorn binds its own.)"""
    import socket

    where = f"{config.host}:{config.port}"
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        raise CliError(f"cannot bind {where}: {exc.strerror or exc}") from None


def _check_data_dir(config: Config) -> None:
    """Open the store once before serving, so that an unusable data directory is one clear
    line and exit 1 rather than a traceback from the server's startup."""
    from service.contract.errors import is_storage_full
    from service.storage.store import SessionStore, StoreError, probe_disk

    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Recovery writes at start: a full disk is reported now, in one line, not as a
        # traceback from the server's startup.
        probe_disk(config.data_dir)
        SessionStore(config.store_path).close()
    except (StoreError, OSError) as exc:
        if is_storage_full(exc):
            raise CliError(
                f"cannot start: the disk of data directory {config.data_dir} is full "
                "(free some space and start again)"
            ) from None
        raise CliError(f"cannot start: {exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    """`runwire serve`: run until SIGTERM/SIGINT, then shut down in order and return 0."""
    config = build_config(args, os.environ)
    level = log_level(args, os.environ)
    _check_bind(config)
    if config.role == "stream":  # no lock, no store: it only reads the shared journals
        return _run_stream_node(config, level)
    # The lock comes before anything reads or writes the data directory (store, recovery,
    # demo): a second server must leave the first one's runs alone. Held until we return.
    with _lock_data_dir(config):
        _check_data_dir(config)
        from service.http.server import serve

        serve(config, log_config=log_config(level), log_level=level)
    logging.shutdown()  # flush every handler before the process exits
    return 0


def _run_stream_node(config: Config, level: str) -> int:
    """`runwire serve --role stream`: check Redis once (one clear line when it cannot serve
    yet), then serve until SIGTERM/SIGINT."""
    import asyncio

    from service.cli.errors import EXIT_UNAVAILABLE
    from streaming.backends import RedisKeys, open_relay
    from streaming.backends.redis_relay import RelayUnavailable

    async def probe() -> None:
        assert config.broker is not None
        broker, relay = await open_relay(
            config.broker, keys=RedisKeys(config.redis_prefix), wait_s=10.0
        )
        await relay.aclose()
        await broker.aclose()

    try:
        asyncio.run(probe())
    except RelayUnavailable as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    from service.http.server import serve

    serve(config, log_config=log_config(level), log_level=level)
    logging.shutdown()
    return 0


def _lock_data_dir(config: Config) -> Any:
    """The data directory's exclusive lock (see `service.storage.datalock`), taken now: exit 69 with
    one line naming the directory and the holder's pid when another server has it."""
    from service.storage.datalock import DataDirLock, DataDirLocked

    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return DataDirLock(config.data_dir).acquire()
    except DataDirLocked as exc:
        raise CliError(str(exc), EXIT_DATA_DIR_IN_USE) from None
    except OSError as exc:
        raise CliError(f"cannot start: cannot lock {config.data_dir}: {exc}") from None
