"""uvicorn, run programmatically, with a shutdown that does not wait on long-lived streams.

`RunwireServer` replaces uvicorn's signal reaction: the first SIGTERM/SIGINT starts
`service.http.app.drain` on the loop (stop accepting runs, finish or cancel running ones within the
grace period, close WebSockets with 1001, end SSE streams); when it is done, uvicorn's own
shutdown runs (listener closed, remaining connections closed, lifespan shutdown). A second
signal forces the exit. The signal is not re-raised after shutdown (uvicorn's default), so the
process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from service.http.access_log import AccessLog
from service.http.app import create_app, drain
from service.http.state import service_state
from service.runtime.config import Config
from streaming.tasks import TaskSupervisor

__all__ = ["RunwireServer", "serve", "serve_in_thread", "uvicorn_config"]

log = logging.getLogger("runwire.server")

# Messages a little above the 1 MiB contract limit reach the application, which closes with
# 1009 itself; beyond this uvicorn closes with 1009.
WS_MAX_SIZE = (1 << 20) + 4096
WS_PING_INTERVAL_S = 20.0
# After the drain, how long uvicorn waits for connections before cancelling their tasks.
GRACEFUL_CONNECTIONS_TIMEOUT_S = 5.0
# After the drain, how long we let WebSocket close handshakes finish before uvicorn closes
# connections itself (it would use 1012 instead of our 1001).
CLOSE_HANDSHAKE_WAIT_S = 2.0


def uvicorn_config(
    app: Starlette,
    config: Config,
    *,
    log_config: dict[str, Any] | None = None,
    log_level: str = "info",
) -> uvicorn.Config:
    """uvicorn settings for `app`: lifespan on, WebSocket limits and pings, our log config.

    uvicorn's own access log stays off: it prints query strings, where a browser's token
    travels (`access_token`); `service.http.access_log.AccessLog` writes one line per request
    without them, at info.
    """
    return uvicorn.Config(
        AccessLog(app),
        host=config.host,
        port=config.port,
        lifespan="on",
        ws_max_size=WS_MAX_SIZE,
        ws_per_message_deflate=False,  # frames are pre-built once per event and sent uncompressed
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_INTERVAL_S,
        timeout_graceful_shutdown=int(GRACEFUL_CONNECTIONS_TIMEOUT_S),
        log_config=log_config,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


class RunwireServer(uvicorn.Server):
    """uvicorn's server with the drain-first shutdown described in the module docstring.

    `request_exit()` does what a signal does and is safe to call from any thread.
    `started_event` is set once the app's lifespan has started and the sockets listen.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app
        self.started_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_requested = False
        self._tasks = TaskSupervisor("server")  # the drain, started by the first signal

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.started_event.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The drain ends by setting `should_exit`, so it is done or nearly: wait for it (it
        # logs its own failure). A forced exit (second signal) does not wait.
        await self._tasks.aclose(0.0 if self.force_exit else CLOSE_HANDSHAKE_WAIT_S, cancel=False)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): it would record the signal and re-raise it after shutdown,
        # turning a clean shutdown into death by signal instead of exit 0.
        self.request_exit()

    def request_exit(self) -> None:
        """First call: drain, then shut down. Second call: force the exit."""
        if self._exit_requested:
            self.should_exit = True
            self.force_exit = True
            return
        self._exit_requested = True
        loop = self._loop
        if loop is None or not self.started:
            self.should_exit = True  # not serving yet: nothing to drain
            return
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._tasks.spawn(self._drain(), name="runwire-drain")

    async def _drain(self) -> None:
        try:
            self._announce_shutdown()
            await drain(self.app)
            log.info("shutdown: runs finished or cancelled, streams closed")
            await self._wait_connections_closed(CLOSE_HANDSHAKE_WAIT_S)
        except Exception:
            log.exception("error while draining; shutting down anyway")
        finally:
            self.should_exit = True

    def _announce_shutdown(self) -> None:
        """Say what the drain is about to wait for, so an operator knows why the exit takes
        time: `shutting down: waiting up to 10 s for 2 running runs`."""
        state = service_state(self.app)
        grace = state.config.shutdown_grace
        figures = state.runtime.readiness().get("metrics", {}) if state.is_open("runtime") else {}
        running = int(figures.get("active_run_count") or 0)
        queued = int(figures.get("queued_run_count") or 0)
        kept = f"; {_runs(queued, 'queued run')} kept for the next start" if queued else ""
        if running:
            log.info(
                "shutting down: waiting up to %g s for %s (then cancelled)%s",
                grace,
                _runs(running, "running run"),
                kept,
            )
        else:
            log.info("shutting down: no run running%s", kept)

    async def _wait_connections_closed(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Poll, as uvicorn itself does: connections expose no "closed" notification.
        while self.server_state.connections and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def _runs(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def serve(
    config: Config, *, log_config: dict[str, Any] | None = None, log_level: str = "info"
) -> None:
    """Run the service in this (main) thread until SIGTERM/SIGINT."""
    app = create_app(config)
    server = RunwireServer(
        uvicorn_config(app, config, log_config=log_config, log_level=log_level), app
    )
    server.run()


@contextmanager
def serve_in_thread(
    config: Config, *, startup_timeout: float = 30.0
) -> Iterator[tuple[str, Starlette, RunwireServer]]:
    """Run the service on `config.host` and an OS-assigned port in a background thread.

    Yields `(base_url, app, server)`. On exit the server drains and stops as on SIGTERM.
    Used by the test suite's `live_server` fixture and by benchmarks.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, 0))
    port = sock.getsockname()[1]
    app = create_app(config)
    server = RunwireServer(uvicorn_config(app, config, log_level="warning"), app)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit on startup failure included
            errors.append(exc)
            server.started_event.set()

    thread = threading.Thread(target=run, name="runwire-live-server", daemon=True)
    thread.start()
    try:
        if not server.started_event.wait(startup_timeout) or errors:
            raise RuntimeError(f"server did not start: {errors!r}")
        yield f"http://{config.host}:{port}", app, server
    finally:
        server.request_exit()
        thread.join(startup_timeout + config.shutdown_grace)
        sock.close()
