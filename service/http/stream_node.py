"""`runwire serve --role stream`: a node serving SSE and WebSocket subscriptions only.

Its broker is a `streaming.backends.RelayBroker` fed from Redis (`RedisRelay`), so envelopes,
ids, order, resume and `stream.gap` are the API node's. Routes: the event routes of
`service.http.routes.events` (SSE and WebSocket, same paths), `/v1/health`, `/v1/readiness`,
`/v1/metrics`, `/v1/asyncapi.json`. Any other request is 421 `MISDIRECTED_REQUEST` whose
`detail` names the API node (`--api-url`): the request is fine, this node is the wrong one.

Sessions and runs named in a path are looked up on the API node (404 as there); while the API
node cannot be reached the subscription is accepted anyway (events keep flowing from Redis).
WebSocket control ops are forwarded to the API node over HTTP with the client's token; an
error there is the same error reply, an unreachable API node is `BROKER_UNAVAILABLE`.

No data-directory lock, no store: the node only reads the journals on the shared data
directory (resumes reaching past Redis).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from service.contract.errors import ServiceError
from service.contract.models import Readiness
from service.http.api_node import ApiNode
from service.http.backend import backend_figures, broker_ok
from service.http.codec import json_response
from service.http.metrics import CONTENT_TYPE, render_gauges
from service.http.middleware import middleware_stack
from service.http.openapi import API_PREFIX
from service.http.problems import exception_handlers
from service.http.routes import events as routes_events
from service.http.routes.status import asyncapi, health
from service.http.state import ServiceState, install_state, service_state
from service.runtime.config import Config
from service.storage.history import RunDirectoryHistory
from streaming.backends import RedisHistory, RedisKeys, open_relay

__all__ = ["create_stream_app"]

log = logging.getLogger("runwire.stream")

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# --- routes -------------------------------------------------------------------------------


async def stream_readiness(request: Request) -> Response:
    """Ready while Redis answers and the node is not shutting down. Run figures are the API
    node's to report: here they are zero; `subscriber_count` is this node's."""
    state = service_state(request.app)
    ready = broker_ok(state) and not state.draining
    report: dict[str, Any] = {
        "status": "ok" if ready else "unavailable",
        "ready": ready,
        "metrics": {
            "session_count": 0, "active_run_count": 0, "queued_run_count": 0,
            "queue_capacity": 0, "error_session_count": 0, "error_session_ids": [],
            "subscriber_count": state.broker.subscriber_count, "last_updated_utc": None,
        },
    }  # fmt: skip
    return json_response(msgspec.convert(report, Readiness), 200 if ready else 503)


async def stream_metrics(request: Request) -> Response:
    """This node's gauges: subscribers, relay lag, Redis up."""
    return Response(render_gauges(await backend_figures(service_state(request.app))),
                    media_type=CONTENT_TYPE)  # fmt: skip


async def misdirected(request: Request) -> Response:
    api_url = service_state(request.app).config.api_url
    raise ServiceError(
        "MISDIRECTED_REQUEST",
        f"this is a stream node (events only): send {request.method} {request.url.path} "
        f"to the API node at {api_url}",
    )


def create_stream_app(config: Config) -> Starlette:
    """The stream node's ASGI app (see the module docstring)."""
    if config.broker is None or not config.api_url:
        raise ValueError("a stream node needs a Redis broker URL and the API node's URL")
    from streaming.security import HostPolicy

    v1: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/readiness", stream_readiness, methods=["GET"]),
        Route("/metrics", stream_metrics, methods=["GET"]),
        Route("/asyncapi.json", asyncapi, methods=["GET"]),
        *routes_events.table.routes,
        Route("/{path:path}", misdirected, methods=_METHODS),
    ]
    host_policy = HostPolicy(config.host, config.allowed_hosts)
    app = Starlette(
        routes=[Mount(API_PREFIX, routes=v1), Route("/{path:path}", misdirected, methods=_METHODS)],
        middleware=middleware_stack(config, host_policy),
        exception_handlers=exception_handlers(),
        lifespan=_lifespan,
    )
    install_state(app, ServiceState(config, host_policy=host_policy))
    return app


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state = service_state(app)
    config = state.config
    state.draining = False
    state.drained = anyio.Event()
    assert config.broker is not None and config.api_url is not None
    keys = RedisKeys(config.redis_prefix)
    history = RedisHistory(config.broker, RunDirectoryHistory(config.runs_dir), keys=keys)
    broker, relay = await open_relay(
        config.broker, keys=keys, history=history, replay_size=config.replay_size,
        subscriber_queue_size=config.subscriber_queue_size,
    )  # fmt: skip
    relay.start()
    state.broker, state.relay = broker, relay
    state.api = api = ApiNode(config.api_url, config.token)
    log.info("stream node: relaying events from %s; control ops go to %s",
             config.broker, config.api_url)  # fmt: skip
    try:
        yield
    finally:
        # `service.http.app.drain` (run on SIGTERM by the server) has usually done this.
        await broker.aclose()  # WebSockets close with 1001, SSE streams end
        await relay.aclose()
        await api.aclose()
        await anyio.to_thread.run_sync(history.close)
