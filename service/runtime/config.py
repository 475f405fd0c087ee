"""Service settings, declared once (contract section 1: every `runwire serve` flag has an
environment variable).

Each `Config` field is declared with `setting(...)`: its default, its flag, its environment
variable, its help text, how a string becomes its value and its bounds. `SETTINGS` is read off
the fields, and everything else is generated from it: `runwire serve`'s flags and `--help`
(`service.cli.settings.add_setting_flags`), the environment lookup and validation
(`resolve_settings`, here, so that any wing can use it). A new setting is one field. A command
with settings of its own (`runwire worker`) declares its own `Setting`s the same way and takes
the shared ones from `SETTINGS_BY_NAME`.

Standard library only at module level: the CLI imports this for every `runwire` command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Config",
    "Setting",
    "SettingError",
    "comma_list",
    "parse_api_url",
    "parse_broker_url",
    "parse_bytes",
    "path_list",
    "resolve_settings",
    "setting",
    "truthy",
]

# How a flag takes its value: `value` (one string), `switch` (present or not; the variable is
# 1/true/yes/on), `append` (repeatable flag; the variable is one string split by `parse`).
FlagKind = Literal["value", "switch", "append"]


class SettingError(ValueError):
    """A value a setting refuses; the message is one line naming the flag or variable."""


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from and how it is checked.

    `parse` turns the flag's or variable's text into the value (raising ValueError with a
    message fit for one CLI line); `number` (int or float) makes it a checked number instead,
    with `minimum`/`maximum`. `flag` None: not a command-line setting (set by code: tests,
    benchmarks)."""

    name: str
    default: Any
    flag: str | None = None
    env: str | None = None
    help: str = ""
    number: type[int] | type[float] | None = None
    parse: Callable[[Any], Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    kind: FlagKind = "value"
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # for --help when `default` does not read well

    def help_text(self) -> str:
        """`help` followed by where else the value comes from: `(RUNWIRE_X, default y)`."""
        where = [f"{self.env}=1" if self.kind == "switch" else self.env] if self.env else []
        shown = self.shown_default
        if shown is None and self.default not in (None, (), False):
            shown = str(self.default)
        if shown:
            where.append(f"default {shown}")
        return f"{self.help} ({', '.join(where)})" if where else self.help

    def convert(self, raw: Any) -> Any:
        """The value for `raw` (a flag's value or a variable's text); `SettingError` if bad."""
        if self.kind == "switch":
            return raw is True or str(raw).lower() in ("1", "true", "yes", "on")
        if self.number is not None:
            try:
                value = self.number(raw)
            except ValueError:
                raise SettingError(
                    f"{self.env or self.flag}: expected a number, got {raw!r}"
                ) from None
            if self.minimum is not None and value < self.minimum:
                raise SettingError(
                    f"{self.flag} must be at least {_plain(self.minimum)}, got {value}"
                )
            if self.maximum is not None and value > self.maximum:
                raise SettingError(
                    f"{self.flag} must be at most {_plain(self.maximum)}, got {value}"
                )
            return value
        if self.choices is not None:
            choice = str(raw).lower()
            if choice not in self.choices:
                raise SettingError(
                    f"{self.env or self.flag}: expected one of {', '.join(self.choices)}, "
                    f"got {choice!r}"
                )
            return choice
        if self.parse is None:
            return str(raw)
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise SettingError(f"{self.flag or self.name}: {exc}") from None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def setting(default: Any, **declared: Any) -> Any:
    """A `Config` field with its `Setting` (the field's name fills in `Setting.name`)."""
    return field(default=default, metadata={"setting": declared})


# --- parsers: text -> value, ValueError with a one-line message -------------------------------


def comma_list(raw: Any) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`."""
    return tuple(item.strip() for item in str(raw).split(",") if item.strip())


def path_list(raw: Any) -> tuple[Path, ...]:
    """A repeated flag's list, or one variable's `os.pathsep`-separated text, as resolved paths."""
    items = raw if isinstance(raw, list) else str(raw).split(os.pathsep)
    return tuple(Path(item).expanduser().resolve() for item in items if item)


def _user_path(raw: Any) -> Path:
    return Path(raw).expanduser()


def _resolved_path(raw: Any) -> Path:
    return Path(raw).expanduser().resolve()


def parse_bytes(raw: Any) -> int:
    """`512M`, `2G`, or a plain number of bytes (`service.runtime.memory.parse_byte_size`)."""
    from service.runtime.memory import parse_byte_size

    return parse_byte_size(str(raw))


def parse_broker_url(raw: Any) -> str:
    """A broker URL checked for shape (`redis://` or `rediss://`, optional `/DB`). Whether
    Redis answers is checked at start-up."""
    from urllib.parse import urlsplit

    text = str(raw).strip()
    parts = urlsplit(text)
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
        raise ValueError(f"expected redis://HOST:PORT/DB (or rediss://), got {str(raw)!r}")
    return text


def parse_api_url(raw: Any) -> str:
    """An `http(s)://HOST[:PORT]` URL, without a trailing slash."""
    from urllib.parse import urlsplit

    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT, got {str(raw)!r}")
    return text.rstrip("/")


def truthy(raw: Any) -> bool:
    return raw is True or str(raw).lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    """What `service.http.app.create_app` serves with; `runwire serve` builds it from flags and
    environment (`service.cli.serve.build_config`), tests call it directly."""

    # (RUF009: `setting` returns a `dataclasses.field`; its defaults are immutable.)
    data_dir: Path = setting(Path("./runwire-data"), flag="--data-dir", env="RUNWIRE_DATA_DIR",  # noqa: RUF009
                             help="data directory", parse=_user_path, shown_default="./runwire-data")  # fmt: skip
    host: str = setting("127.0.0.1", flag="--host", env="RUNWIRE_HOST", help="address to bind")
    port: int = setting(8000, flag="--port", env="RUNWIRE_PORT", help="port", number=int,
                        minimum=0, maximum=65535)  # fmt: skip
    workers: int = setting(2, flag="--workers", env="RUNWIRE_WORKERS",
                           help="worker threads running pipelines", number=int, minimum=1)  # fmt: skip
    queue_size: int = setting(64, flag="--queue-size", env="RUNWIRE_QUEUE_SIZE",
                              help="runs waiting across sessions", number=int, minimum=1)  # fmt: skip
    replay_size: int = setting(1000, flag="--replay-size", env="RUNWIRE_REPLAY_SIZE",
                               help="events kept in memory per session", number=int, minimum=1)  # fmt: skip
    token: str | None = setting(None, flag="--token", env="RUNWIRE_TOKEN",
                                help="bearer token required by every endpoint but /v1/health; "
                                "needed to bind a non-loopback --host")  # fmt: skip
    allowed_origins: tuple[str, ...] = setting((), flag="--allowed-origins",
                                               env="RUNWIRE_ALLOWED_ORIGINS", parse=comma_list,
                                               help="comma-separated origins allowed for "
                                               "WebSocket/SSE")  # fmt: skip
    allowed_hosts: tuple[str, ...] = setting((), flag="--allowed-hosts",
                                             env="RUNWIRE_ALLOWED_HOSTS", parse=comma_list,
                                             help="comma-separated Host names a loopback-bound "
                                             "server answers besides its address and "
                                             "localhost; others get 421")  # fmt: skip
    shutdown_grace: float = setting(10.0, flag="--shutdown-grace", env="RUNWIRE_SHUTDOWN_GRACE",
                                    help="seconds running runs may take to finish on shutdown",
                                    number=float, minimum=0, shown_default="10")  # fmt: skip
    # Empty: sources may be read anywhere; sinks written anywhere.
    read_roots: tuple[Path, ...] = setting((), flag="--read-root", env="RUNWIRE_READ_ROOT",
                                           kind="append", parse=path_list,
                                           help="confine source locations to this directory "
                                           "(repeatable; the variable is os.pathsep-separated)")  # fmt: skip
    write_roots: tuple[Path, ...] = setting((), flag="--write-root", env="RUNWIRE_WRITE_ROOT",
                                            kind="append", parse=path_list,
                                            help="confine sink locations to this directory "
                                            "(repeatable)")  # fmt: skip
    demo: bool = setting(False, flag="--demo", env="RUNWIRE_DEMO", kind="switch",
                         help="run session `demo` fed by a simulated instrument")  # fmt: skip
    demo_interval_s: float = setting(3.0, help="seconds between the demo instrument's samples")
    subscriber_queue_size: int = setting(1024, help="events buffered per subscriber before it is "
                                         "cut off")  # fmt: skip
    max_body_bytes: int = setting(1 << 20, help="largest request body (413 past it)")
    # Bytes the sessions' incremental caches may hold together (LRU eviction past it); None: a
    # quarter of physical memory (service.runtime.memory).
    cache_memory: int | None = setting(None, flag="--cache-memory", env="RUNWIRE_CACHE_MEMORY",
                                       parse=parse_bytes, shown_default="a quarter of RAM",
                                       help="bytes the sessions' incremental caches may hold, "
                                       "e.g. 512M or 2G; least recently used sessions are "
                                       "evicted past it")  # fmt: skip
    # Pipeline packages (docs/packages.md): they run arbitrary code, so off unless asked for.
    allow_packages: bool = setting(False, flag="--allow-packages", env="RUNWIRE_ALLOW_PACKAGES",
                                   kind="switch", help="accept pipeline packages: they RUN "
                                   "ARBITRARY CODE")  # fmt: skip
    allow_package_network: bool = setting(False, flag="--allow-package-network",
                                          env="RUNWIRE_ALLOW_PACKAGE_NETWORK", kind="switch",
                                          help="let pip fetch requirements from the index for "
                                          "packages that say network: true")  # fmt: skip
    wheelhouse: Path | None = setting(None, flag="--wheelhouse", env="RUNWIRE_WHEELHOUSE",  # noqa: RUF009
                                      parse=_resolved_path, help="directory of wheels package "
                                      "requirements are installed from, offline")  # fmt: skip
    max_package_upload_bytes: int = setting(64 << 20, help="body limit of POST /v1/packages only")
    # None is the embedded in-memory broker; "redis://HOST:PORT/DB" puts events and the run
    # queue on Redis/Valkey Streams (contract section 12, docs/scale-out.md).
    broker: str | None = setting(None, flag="--broker", env="RUNWIRE_BROKER",
                                 parse=parse_broker_url, shown_default="the embedded in-memory "
                                 "broker", help="event bus and run queue: redis://HOST:PORT/DB "
                                 "for Redis or Valkey Streams")  # fmt: skip
    # Where runs compute: "local" (worker threads of this process) or "workers" (`runwire worker`
    # processes through the Redis run queue; needs a redis:// broker, checked by `runwire serve`).
    runs: str = setting("local", flag="--runs", env="RUNWIRE_RUNS", choices=("local", "workers"),
                        help="where runs compute: local worker threads, or `runwire worker` "
                        "processes through the --broker's Redis run queue")  # fmt: skip
    lease_ttl: float = setting(10.0, flag="--lease-ttl", env="RUNWIRE_LEASE_TTL", number=float,
                               minimum=0.5, shown_default="10", help="seconds before a silent "
                               "worker's runs end interrupted and its sessions move on")  # fmt: skip
    # Scale-out roles (docs/scale-out.md): "api" is the whole service; "stream" serves SSE and
    # WebSocket only, fed from the --broker's Redis, and forwards control ops to --api-url.
    role: str = setting("api", flag="--role", env="RUNWIRE_ROLE", choices=("api", "stream"),
                        help="api: the whole service; stream: SSE and WebSocket only, fed from "
                        "--broker (needs --api-url)")  # fmt: skip
    api_url: str | None = setting(None, flag="--api-url", env="RUNWIRE_API_URL",
                                  parse=parse_api_url, help="a stream node's API node, e.g. "
                                  "http://10.0.0.5:8000, where WebSocket control ops are "
                                  "forwarded")  # fmt: skip
    redis_prefix: str = setting("runwire:", flag="--redis-prefix", env="RUNWIRE_REDIS_PREFIX",
                                help="prefix of every Redis key runwire uses")  # fmt: skip

    @property
    def store_path(self) -> Path:
        return self.data_dir / "runwire.sqlite3"

    @property
    def packages_dir(self) -> Path:
        return self.data_dir / "packages"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


# Every Config field, in declaration order, as its Setting.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(name=f.name, default=f.default, **f.metadata["setting"]) for f in fields(Config)
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def resolve_settings(
    settings: Iterable[Setting], flags: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    """The value of every setting that was given: its flag (`flags[name]`, None when absent)
    wins over its environment variable (empty counts as unset), which wins over the default
    (left out of the answer). Raises `SettingError` for the first bad value."""
    values: dict[str, Any] = {}
    for item in settings:
        raw = flags.get(item.name)
        if raw is None and item.env is not None:
            raw = env.get(item.env) or None
        if raw is None:
            if item.kind == "switch":
                values[item.name] = False
            continue
        values[item.name] = item.convert(raw)
    return values
