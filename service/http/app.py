"""The Starlette application: routes under `/v1`, middleware, and the ordered lifespan.

Lifespan order (closed in reverse): data directory, `SessionStore` (opened in a worker thread:
SQLite never runs on the event loop), `Broker` (epoch and seq continued from the store, replay
from the run directories), `RetainedRuns`, `Runtime` (started), the demo instrument when
`config.demo`. They are held by the app's one typed `service.http.state.ServiceState`
(`service_state(app)`), set once here.

Shutdown is `drain(app)`: stop the demo, stop accepting runs and let running ones finish (or
cancel them after `config.shutdown_grace`), then close the broker, which ends every SSE stream
and closes every WebSocket with 1001. It runs once; `runwire serve` calls it as soon as a
signal arrives (the server would otherwise wait for long-lived streams before the lifespan's
own shutdown), and the lifespan calls it again harmlessly.

Middleware: `service.http.middleware.middleware_stack`, shared with the stream node (errors,
Host check, CORS, bearer token, body limits; 415 for any state-changing request that is not
`application/json`: CSRF). Package uploads get their own larger body limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from service.http.backend import start_event_writer  # contract section 12: events on Redis
from service.http.metrics import ServiceMetrics
from service.http.middleware import middleware_stack
from service.http.openapi import API_PREFIX, Operation, route_paths
from service.http.problems import exception_handlers
from service.http.routes import events as routes_events
from service.http.routes import retained as routes_retained
from service.http.routes import runs as routes_runs
from service.http.routes import sessions as routes_sessions
from service.http.routes import status as routes_status
from service.http.routes.curve import table as curve_table  # dashboard: I(q) of a run
from service.http.routes.packages import table as packages_table  # steps, pipeline packages
from service.http.routes.pipeline import table as pipeline_table  # dashboard: step tree, examples
from service.http.routes.ui import routes as ui_routes  # dashboard: / and /ui/
from service.http.routes.workers import table as workers_table  # runwire worker processes
from service.http.state import ServiceState, install_state, service_state
from service.runtime.config import Config
from service.runtime.demo import run_demo
from service.runtime.facade import Runtime
from service.runtime.packages import PackageRuntime, restore_activations  # pipeline packages
from service.storage.history import RunDirectoryHistory
from service.storage.retained import RetainedRuns
from service.storage.store import SessionStore
from streaming.broker import Broker
from streaming.security import HostPolicy

__all__ = ["create_app", "drain", "service_state"]

log = logging.getLogger("runwire.app")

_TABLES = (
    routes_status.table,
    routes_sessions.table,
    routes_runs.table,
    routes_events.table,
    routes_retained.table,
    curve_table,
    pipeline_table,
    packages_table,
    workers_table,
)


def _operations() -> list[Operation]:
    return [op for table in _TABLES for op in table.operations]


def create_app(config: Config) -> Starlette:
    """The runwire ASGI app for `config` (resources open in its lifespan, see module doc)."""
    if config.role == "stream":  # SSE and WebSocket only, fed from Redis (scale-out.md)
        from service.http.stream_node import create_stream_app

        return create_stream_app(config)
    routes: list[BaseRoute] = [r for table in _TABLES for r in table.routes]
    host_policy = HostPolicy(config.host, config.allowed_hosts)
    app = Starlette(
        routes=[Mount(API_PREFIX, routes=routes), *ui_routes()],
        middleware=middleware_stack(
            config,
            host_policy,
            route_limits={f"{API_PREFIX}/packages": config.max_package_upload_bytes},
        ),
        exception_handlers=exception_handlers(),
        lifespan=_lifespan,
    )
    install_state(
        app,
        ServiceState(
            config,
            host_policy=host_policy,
            operations=_operations(),
            websocket_paths=[p for m, p in route_paths(routes) if m == "WS"],
        ),
    )
    return app


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state = service_state(app)
    config = state.config
    state.draining = False
    state.drained = anyio.Event()
    async with AsyncExitStack() as stack:
        await anyio.to_thread.run_sync(partial(config.runs_dir.mkdir, parents=True, exist_ok=True))
        store = await anyio.to_thread.run_sync(SessionStore, config.store_path)
        stack.push_async_callback(anyio.to_thread.run_sync, store.close)
        state.store = store
        state.start_seq = await anyio.to_thread.run_sync(store.seq_floor)
        broker = Broker(
            epoch=store.epoch,
            start_seq=state.start_seq,
            replay_size=config.replay_size,
            subscriber_queue_size=config.subscriber_queue_size,
            history=RunDirectoryHistory(config.runs_dir),
            reserve_seq=store.reserve_seq,
        )
        await broker.start()
        if config.broker is not None:  # every released event also goes to Redis Streams
            writer = start_event_writer(
                config, broker, state.start_seq, RunDirectoryHistory(config.runs_dir)
            )
            stack.push_async_callback(writer.aclose)  # after the broker's close (LIFO)
            state.event_writer = writer
        stack.push_async_callback(broker.aclose)
        state.broker = broker
        state.retained = RetainedRuns(config.runs_dir)
        runtime = Runtime(config, store, broker)
        # Packages of sessions that used one, before recovery validates their pipelines.
        await anyio.to_thread.run_sync(restore_activations, config)
        runtime.packages = state.packages = PackageRuntime(config, runtime.scheduler.emit)
        await runtime.start()
        state.runtime = runtime
        state.metrics = ServiceMetrics(store.run_figures_after)
        # drain() on the way out: stop the demo, finish or cancel runs, close the streams.
        stack.push_async_callback(drain, app)
        async with anyio.create_task_group() as tg:
            if config.demo:
                await tg.start(_run_demo, app)
            try:
                yield
            finally:
                _stop_demo(app)


async def _run_demo(app: Starlette, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    # A scope of its own: cancelling the task group's scope would also cancel the lifespan's
    # host task, which waits inside it for the server's shutdown message.
    state = service_state(app)
    with anyio.CancelScope() as scope:
        state.demo_scope = scope
        task_status.started()
        try:
            await run_demo(state.runtime, state.config)
        except Exception:
            # The demo is a convenience: its failure must not take the service down with it.
            log.exception("the demo instrument stopped")


def _stop_demo(app: Starlette) -> None:
    scope = service_state(app).demo_scope
    if scope is not None:
        scope.cancel()


async def drain(app: Starlette) -> None:
    """Stop accepting runs, finish or cancel the running ones, close every stream. Idempotent.

    Safe to call from a signal-triggered task while requests are still being served; the
    second caller waits for the first to finish.
    """
    state = service_state(app)
    if state.draining:
        if state.drained is not None:
            await state.drained.wait()
        return
    state.draining = True
    try:
        _stop_demo(app)  # the simulated instrument stops feeding samples first
        if state.is_open("runtime"):
            await state.runtime.shutdown(state.config.shutdown_grace)
        if state.is_open("broker"):
            await state.broker.aclose()  # WebSockets close with 1001, SSE streams end
    finally:
        if state.drained is not None:
            state.drained.set()
