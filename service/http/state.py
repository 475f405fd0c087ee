"""`ServiceState`: everything the app holds, typed, in one object set once by `create_app`.

Routes and middleware reach it through one accessor, `service_state(app)` (a `Request`'s or
`WebSocket`'s `.app`, or an ASGI scope's `scope["app"]`): no other code reads or writes
Starlette's untyped `app.state`.

What the lifespan opens (`store`, `broker`, `runtime`, `packages`, `metrics`) is absent before
it runs and after a failed start: reading one then raises `ServiceNotStarted` (a bug, answered
500 like any other), and `is_open(name)` asks without raising, for the shutdown path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    import anyio
    from starlette.applications import Starlette

    from service.http.api_node import ApiNode
    from service.http.metrics import ServiceMetrics
    from service.http.openapi import Operation
    from service.runtime.config import Config
    from service.runtime.facade import Runtime
    from service.runtime.packages import PackageRuntime
    from service.storage.retained import RetainedRuns
    from service.storage.store import SessionStore
    from streaming.backends import RedisEventWriter, RedisRelay
    from streaming.broker import Broker
    from streaming.security import HostPolicy

__all__ = ["ServiceNotStarted", "ServiceState", "install_state", "service_state"]

T = TypeVar("T")


class ServiceNotStarted(RuntimeError):
    """A resource the lifespan opens was read before it opened (or after it failed to)."""


class _Opened(Generic[T]):
    """A resource set by the lifespan: reading it unset raises `ServiceNotStarted`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    @overload
    def __get__(self, obj: None, owner: type) -> _Opened[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> T | _Opened[T]:
        if obj is None:
            return self
        value: T | None = obj.__dict__.get(self.slot)
        if value is None:
            raise ServiceNotStarted(f"the service's {self.name} is not open (lifespan not run)")
        return value

    def __set__(self, obj: object, value: T | None) -> None:
        obj.__dict__[self.slot] = value


class ServiceState:
    """The app's state (see the module docstring). `create_app` makes it from the `Config`;
    a test app without a lifespan may make its own and `install_state` it."""

    # Opened by the lifespan, in this order (closed in reverse).
    store: _Opened[SessionStore] = _Opened()
    broker: _Opened[Broker] = _Opened()
    runtime: _Opened[Runtime] = _Opened()
    packages: _Opened[PackageRuntime] = _Opened()
    metrics: _Opened[ServiceMetrics] = _Opened()

    def __init__(
        self,
        config: Config,
        *,
        host_policy: HostPolicy | None = None,
        operations: list[Operation] | None = None,
        websocket_paths: list[str] | None = None,
    ) -> None:
        self.config = config
        self.host_policy = host_policy
        self.operations = operations or []  # for /openapi.json
        self.websocket_paths = websocket_paths or []
        self.openapi: dict[str, Any] | None = None  # the document, built on first request
        # Shutdown (service.http.app.drain): set once; the second caller waits on `drained`.
        self.draining = False
        self.drained: anyio.Event | None = None
        self.demo_scope: anyio.CancelScope | None = None  # the demo's, to stop it first
        self.start_seq = 1  # the first seq of this process (for /metrics)
        # Retained runs: routes build it from `config.runs_dir` on first use when None.
        self.retained: RetainedRuns | None = None
        # Scale-out (docs/scale-out.md). An API node with a Redis --broker: the writer copying
        # every released event to Redis. A stream node (no store, runtime or packages): the
        # relay feeding its broker from Redis, and the API node its lookups and control ops go to.
        self.event_writer: RedisEventWriter | None = None
        self.relay: RedisRelay | None = None
        self.api: ApiNode | None = None

    def is_open(self, name: str) -> bool:
        """Whether the lifespan has opened resource `name` (`"runtime"`, `"broker"`, ...)."""
        return self.__dict__.get("_" + name) is not None


def install_state(app: Starlette, state: ServiceState) -> ServiceState:
    """Give `app` its state: the one write to Starlette's `app.state`."""
    app.state.service = state
    return state


def service_state(app: Starlette) -> ServiceState:
    """The app's `ServiceState`: the one read of Starlette's `app.state`."""
    state: ServiceState = app.state.service
    return state
