"""One access-log line per request, at info level on the `runwire.access` logger.

`GET /v1/sessions 200 3.1 ms` — method, path, status and duration. Never the query string
(browsers put the token there as `access_token`, RFC 6750 section 2.3), never a header, so
neither the bearer token nor anything else a client sends in them reaches the log. A streamed
response (SSE) is logged when it ends, with the stream's whole duration; a WebSocket as `WS`
with 101 once accepted (or the status of its refusal), when the connection ends. A request
whose handler raised before answering is logged with status 500.

The wrapper costs nothing when the logger is not enabled for info: the request passes
straight through (benchmarks and tests run at warning).
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]

log = logging.getLogger("runwire.access")


class AccessLog:
    """ASGI middleware writing the access line of every HTTP request and WebSocket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        method = "WS" if kind == "websocket" else str(scope.get("method", "-"))
        status: list[int] = []
        start = time.perf_counter()

        async def logged_send(message: Message) -> None:
            if not status:
                message_type = message["type"]
                if message_type == "http.response.start":
                    status.append(int(message["status"]))
                elif message_type == "websocket.accept":
                    status.append(101)
                elif message_type == "websocket.close":
                    status.append(403)  # closed before accepting: refused
                elif message_type == "websocket.http.response.start":
                    status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000
            log.info(
                "%s %s %s %.1f ms",
                method,
                _path(scope),
                status[0] if status else 500,
                elapsed_ms,
            )


def _path(scope: Scope) -> str:
    # The decoded path only; control characters escaped so a crafted URL cannot forge lines.
    path = str(scope.get("path", ""))
    return path.encode("unicode_escape").decode("ascii") if not path.isprintable() else path
