"""`runwire serve`: settings from flags and environment, uvicorn run programmatically, and an
orderly shutdown on SIGTERM/SIGINT.

Each flag has an environment variable (contract section 1); a flag wins over its variable,
which wins over the default in `service.runtime.config.Config`. Binding beyond loopback without a
token is refused before anything starts.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.errors import EXIT_DATA_DIR_IN_USE, EXIT_USAGE, CliError

# sysexits.h EX_UNAVAILABLE: another server already serves this data directory.

if TYPE_CHECKING:
    from service.runtime.config import Config

__all__ = ["add_parsers", "build_config", "is_loopback", "log_config", "log_level", "run_serve"]

_MAX_PORT = 65535
LOG_LEVELS = ("debug", "info", "warning", "error")

# flag dest -> environment variable
ENV_VARS = {
    "data_dir": "RUNWIRE_DATA_DIR",
    "host": "RUNWIRE_HOST",
    "port": "RUNWIRE_PORT",
    "workers": "RUNWIRE_WORKERS",
    "queue_size": "RUNWIRE_QUEUE_SIZE",
    "replay_size": "RUNWIRE_REPLAY_SIZE",
    "token": "RUNWIRE_TOKEN",
    "allowed_origins": "RUNWIRE_ALLOWED_ORIGINS",
    "allowed_hosts": "RUNWIRE_ALLOWED_HOSTS",
    "shutdown_grace": "RUNWIRE_SHUTDOWN_GRACE",
    "read_root": "RUNWIRE_READ_ROOT",
    "write_root": "RUNWIRE_WRITE_ROOT",
    "demo": "RUNWIRE_DEMO",
    "log_level": "RUNWIRE_LOG_LEVEL",
    "cache_memory": "RUNWIRE_CACHE_MEMORY",
    "allow_packages": "RUNWIRE_ALLOW_PACKAGES",
    "allow_package_network": "RUNWIRE_ALLOW_PACKAGE_NETWORK",
    "wheelhouse": "RUNWIRE_WHEELHOUSE",
    "broker": "RUNWIRE_BROKER",
    "role": "RUNWIRE_ROLE",
    "api_url": "RUNWIRE_API_URL",
    "redis_prefix": "RUNWIRE_REDIS_PREFIX",
}


def add_parsers(sub: Any) -> None:
    """Add `serve` to the `runwire` command tree."""
    p = sub.add_parser(
        "serve",
        help="run the service (HTTP API, WebSocket and SSE events)",
        description="Run the runwire service. Every flag also reads an environment variable.",
    )
    p.add_argument("--data-dir", help="data directory (RUNWIRE_DATA_DIR, default ./runwire-data)")
    p.add_argument("--host", help="address to bind (RUNWIRE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (RUNWIRE_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker threads (RUNWIRE_WORKERS, default 2)")
    p.add_argument(
        "--queue-size",
        type=int,
        help="runs waiting across sessions (RUNWIRE_QUEUE_SIZE, default 64)",
    )
    p.add_argument(
        "--replay-size",
        type=int,
        help="events kept in memory per session (RUNWIRE_REPLAY_SIZE, default 1000)",
    )
    p.add_argument(
        "--token",
        help="bearer token required by every endpoint but /v1/health (RUNWIRE_TOKEN); "
        "needed to bind a non-loopback --host",
    )
    p.add_argument(
        "--allowed-origins",
        help="comma-separated origins allowed for WebSocket/SSE (RUNWIRE_ALLOWED_ORIGINS)",
    )
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host names a loopback-bound server answers besides its address "
        "and localhost; others get 421 (RUNWIRE_ALLOWED_HOSTS)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        help="seconds running runs may take to finish on shutdown (RUNWIRE_SHUTDOWN_GRACE, 10)",
    )
    p.add_argument(
        "--read-root",
        action="append",
        help="confine source locations to this directory (repeatable; RUNWIRE_READ_ROOT, "
        "os.pathsep-separated)",
    )
    p.add_argument(
        "--write-root",
        action="append",
        help="confine sink locations to this directory (repeatable; RUNWIRE_WRITE_ROOT)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="run session `demo` fed by a simulated instrument (RUNWIRE_DEMO=1)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log level (RUNWIRE_LOG_LEVEL, default info)",
    )
    p.add_argument(
        "--cache-memory",
        help="bytes the sessions' incremental caches may hold, e.g. 512M or 2G; least recently "
        "used sessions are evicted past it (RUNWIRE_CACHE_MEMORY, default a quarter of RAM)",
    )
    # Pipeline packages (docs/packages.md): they run arbitrary code.
    p.add_argument("--allow-packages", action="store_true", default=None,
                   help="accept pipeline packages: they RUN ARBITRARY CODE (RUNWIRE_ALLOW_PACKAGES=1)")  # fmt: skip
    p.add_argument("--allow-package-network", action="store_true", default=None,
                   help="let pip fetch requirements from the index for packages that say "
                   "network: true (RUNWIRE_ALLOW_PACKAGE_NETWORK=1)")  # fmt: skip
    p.add_argument("--wheelhouse", help="directory of wheels package requirements are installed "
                   "from, offline (RUNWIRE_WHEELHOUSE)")  # fmt: skip
    p.add_argument("--broker", help="event bus and run queue: redis://HOST:PORT/DB for Redis "
                   "or Valkey Streams; default the embedded in-memory broker (RUNWIRE_BROKER)")  # fmt: skip
    # Scale-out (contract section 12, docs/scale-out.md).
    p.add_argument("--role", choices=ROLES, help="api: the whole service (default); stream: "
                   "SSE and WebSocket only, fed from --broker (RUNWIRE_ROLE)")  # fmt: skip
    p.add_argument("--api-url", help="a stream node's API node, e.g. http://10.0.0.5:8000, "
                   "where WebSocket control ops are forwarded (RUNWIRE_API_URL)")  # fmt: skip
    p.add_argument("--redis-prefix", help="prefix of every Redis key runwire uses "
                   "(RUNWIRE_REDIS_PREFIX, default runwire:)")  # fmt: skip
    p.set_defaults(func=run_serve)


def _setting(args: argparse.Namespace, env: Mapping[str, str], dest: str) -> Any:
    value = getattr(args, dest, None)
    if value is not None:
        return value
    return env.get(ENV_VARS[dest]) or None


def _number(kind: type[int] | type[float], dest: str, raw: Any, minimum: float) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise CliError(f"{ENV_VARS[dest]}: expected a number, got {raw!r}", EXIT_USAGE) from None
    if value < minimum:
        flag = "--" + dest.replace("_", "-")
        raise CliError(f"{flag} must be at least {minimum}, got {value}", EXIT_USAGE)
    return value


def _paths(raw: Any) -> tuple[Path, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(os.pathsep)
    return tuple(Path(item).expanduser().resolve() for item in items if item)


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
    from service.runtime.config import Config

    defaults = Config()
    values: dict[str, Any] = {}
    if (raw := _setting(args, env, "data_dir")) is not None:
        values["data_dir"] = Path(raw).expanduser()
    if (raw := _setting(args, env, "host")) is not None:
        values["host"] = str(raw)
    for dest, kind, minimum in (
        ("port", int, 0),
        ("workers", int, 1),
        ("queue_size", int, 1),
        ("replay_size", int, 1),
        ("shutdown_grace", float, 0),
    ):
        if (raw := _setting(args, env, dest)) is not None:
            values[dest] = _number(kind, dest, raw, minimum)
    if values.get("port", 0) > _MAX_PORT:
        raise CliError(f"--port must be at most {_MAX_PORT}, got {values['port']}", EXIT_USAGE)
    if (raw := _setting(args, env, "token")) is not None:
        values["token"] = str(raw)
    if (raw := _setting(args, env, "allowed_origins")) is not None:
        values["allowed_origins"] = tuple(o.strip() for o in str(raw).split(",") if o.strip())
    if (raw := _setting(args, env, "allowed_hosts")) is not None:
        values["allowed_hosts"] = tuple(h.strip() for h in str(raw).split(",") if h.strip())
    if (raw := _setting(args, env, "read_root")) is not None:
        values["read_roots"] = _paths(raw)
    if (raw := _setting(args, env, "write_root")) is not None:
        values["write_roots"] = _paths(raw)
    if (raw := _setting(args, env, "cache_memory")) is not None:
        from service.runtime.memory import parse_byte_size

        try:
            values["cache_memory"] = parse_byte_size(str(raw))
        except ValueError as exc:
            raise CliError(f"--cache-memory: {exc}", EXIT_USAGE) from None
    demo = _setting(args, env, "demo")
    values["demo"] = demo is True or str(demo).lower() in ("1", "true", "yes", "on")
    for flag in ("allow_packages", "allow_package_network"):  # pipeline packages
        raw = _setting(args, env, flag)
        values[flag] = raw is True or str(raw).lower() in ("1", "true", "yes", "on")
    if (raw := _setting(args, env, "wheelhouse")) is not None:
        values["wheelhouse"] = Path(raw).expanduser().resolve()
    if (raw := _setting(args, env, "broker")) is not None:
        values["broker"] = broker_url(str(raw))
    values.update(_scale_out(args, env))
    config = Config(**{**defaults.__dict__, **values})
    if not is_loopback(config.host) and not config.token:
        raise CliError(
            f"refusing to bind {config.host}: a non-loopback address needs a token "
            "(--token or RUNWIRE_TOKEN)",
            EXIT_USAGE,
        )
    return config


ROLES = ("api", "stream")


def _scale_out(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """`--role`, `--api-url`, `--redis-prefix`; a stream node needs `--broker` and `--api-url`."""
    from urllib.parse import urlsplit

    values: dict[str, Any] = {}
    role = str(_setting(args, env, "role") or "api")
    if role not in ROLES:
        raise CliError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}", EXIT_USAGE)
    values["role"] = role
    if (raw := _setting(args, env, "redis_prefix")) is not None:
        values["redis_prefix"] = str(raw)
    if (raw := _setting(args, env, "api_url")) is not None:
        parts = urlsplit(str(raw).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"--api-url: expected http://HOST:PORT, got {raw!r}", EXIT_USAGE)
        values["api_url"] = str(raw).strip().rstrip("/")
    if role == "stream" and (_setting(args, env, "broker") is None or "api_url" not in values):
        raise CliError("--role stream needs --broker redis://... and --api-url URL", EXIT_USAGE)
    return values


def broker_url(raw: str) -> str:
    """A `--broker` value checked for shape (`redis://` or `rediss://`, optional `/DB`);
    `CliError` (exit 64) otherwise. Whether Redis answers is checked at start-up."""
    from urllib.parse import urlsplit

    parts = urlsplit(raw.strip())
    db = parts.path.lstrip("/")
    try:
        _ = parts.port  # raises ValueError for a port that is not a number
        port_ok = True
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or not port_ok
        or (db and not db.isdigit())
    ):
        raise CliError(
            f"--broker: expected redis://HOST:PORT/DB (or rediss://), got {raw!r}", EXIT_USAGE
        )
    return raw.strip()


def log_level(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """`--log-level`, else `RUNWIRE_LOG_LEVEL`, else `info`; `CliError` (exit 64) for a level
    the flag's choices would have refused."""
    level = str(_setting(args, env, "log_level") or "info").lower()
    if level not in LOG_LEVELS:
        raise CliError(
            f"{ENV_VARS['log_level']}: expected one of {', '.join(LOG_LEVELS)}, got {level!r}",
            EXIT_USAGE,
        )
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
