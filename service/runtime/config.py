"""Service settings: every `runwire serve` flag has an environment variable (contract section 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Config:
    """What `service.http.app.create_app` serves with; `runwire serve` builds it from flags and
    environment (`service.cli.serve.build_config`), tests call it directly."""

    data_dir: Path = Path("./runwire-data")  # RUNWIRE_DATA_DIR
    host: str = "127.0.0.1"  # RUNWIRE_HOST
    port: int = 8000  # RUNWIRE_PORT
    workers: int = 2  # RUNWIRE_WORKERS: worker threads running pipelines
    queue_size: int = 64  # RUNWIRE_QUEUE_SIZE: runs waiting across all sessions
    replay_size: int = 1000  # RUNWIRE_REPLAY_SIZE: events kept in memory per session
    token: str | None = None  # RUNWIRE_TOKEN
    allowed_origins: tuple[str, ...] = ()  # RUNWIRE_ALLOWED_ORIGINS (comma-separated)
    allowed_hosts: tuple[str, ...] = ()  # RUNWIRE_ALLOWED_HOSTS: extra Host names on loopback
    shutdown_grace: float = 10.0  # RUNWIRE_SHUTDOWN_GRACE
    read_roots: tuple[Path, ...] = ()  # RUNWIRE_READ_ROOT (os.pathsep-separated); empty: anywhere
    write_roots: tuple[Path, ...] = ()  # RUNWIRE_WRITE_ROOT
    demo: bool = False
    demo_interval_s: float = 3.0
    subscriber_queue_size: int = 1024  # events buffered per subscriber before it is cut off
    max_body_bytes: int = 1 << 20
    # RUNWIRE_CACHE_MEMORY: bytes the sessions' incremental caches may hold together (LRU
    # eviction past it); None: a quarter of physical memory (service.runtime.memory).
    cache_memory: int | None = None
    # Pipeline packages (docs/packages.md): they run arbitrary code, so off unless asked for.
    allow_packages: bool = False  # RUNWIRE_ALLOW_PACKAGES
    allow_package_network: bool = False  # RUNWIRE_ALLOW_PACKAGE_NETWORK: pip may use the index
    wheelhouse: Path | None = None  # RUNWIRE_WHEELHOUSE: offline requirements for packages
    max_package_upload_bytes: int = 64 << 20  # body limit of POST /v1/packages only
    # RUNWIRE_BROKER: None is the embedded in-memory broker; "redis://HOST:PORT/DB" puts events
    # and the run queue on Redis/Valkey Streams (contract section 12, docs/scale-out.md).
    broker: str | None = None
    # RUNWIRE_ROLE: "api" (everything, the default) or "stream" (SSE and WebSocket only, fed
    # from Redis; docs/scale-out.md). RUNWIRE_API_URL: where a stream node forwards control ops.
    role: str = "api"
    api_url: str | None = None
    redis_prefix: str = "runwire:"  # RUNWIRE_REDIS_PREFIX: prefix of every key runwire keeps

    @property
    def store_path(self) -> Path:
        return self.data_dir / "runwire.sqlite3"

    @property
    def packages_dir(self) -> Path:
        return self.data_dir / "packages"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"
