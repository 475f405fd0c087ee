"""What keeps hostile web pages out while letting allowed ones in (contract section 8).

- `HostCheckMiddleware`: a loopback-bound server answers only its own host names (bound
  address, `localhost`, `--allowed-hosts`); anything else is 421 `MISDIRECTED_REQUEST`, for
  plain HTTP, SSE and the WebSocket handshake alike (refused with an HTTP 421 before the
  handshake completes, where the server supports denial responses). This defeats DNS
  rebinding: the attacker's name resolves to 127.0.0.1 but the browser still sends it.
- `AllowedOriginsCors`: Starlette's `CORSMiddleware`, applied only to requests whose `Origin`
  is one of `--allowed-origins` (normalised: case, default ports). Other origins bypass it and
  get no CORS header at all; their preflights fall through to the router (405).

The CSRF rule (state-changing requests must be `application/json`) lives with the other body
checks in `service.http.limits`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from service.contract.errors import ServiceError
from service.http.problems import problem_response
from streaming.security import HostPolicy, normalise_origin

__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "AllowedOriginsCors",
    "HostCheckMiddleware",
    "server_port",
]

CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
CORS_EXPOSE_HEADERS = ("Location", "Retry-After")
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_MAX_AGE_S = 600


def server_port(scope: Scope) -> int | None:
    """The port the connection arrived on (from the server, not from any header)."""
    server = scope.get("server")
    return server[1] if server and len(server) > 1 else None


class HostCheckMiddleware:
    """Refuses requests whose `Host` the policy does not know (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.policy.enforced:
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if self.policy.host_allowed(host):
            await self.app(scope, receive, send)
            return
        error = ServiceError(
            "MISDIRECTED_REQUEST",
            f"this server does not answer for host {host!r}; add the name with "
            "--allowed-hosts if it is yours",
        )
        response = problem_response(error)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008, reason="misdirected request")  # HTTP 403


class AllowedOriginsCors:
    """CORS for the allowed origins only, by Starlette's `CORSMiddleware`.

    The origin is matched here, normalised, so `https://UI.example:443` in the settings
    matches a browser's `https://ui.example`; the inner middleware then echoes the request's
    own `Origin` (never `*`, so caches keep per-origin answers apart with `Vary: Origin`).
    """

    def __init__(self, app: ASGIApp, *, allowed_origins: tuple[str, ...]) -> None:
        self.app = app
        configured = [o.strip() for o in allowed_origins if o.strip()]
        self.allow_any = "*" in configured
        self.allowed = {n for n in map(normalise_origin, configured) if n is not None}
        self.cors = CORSMiddleware(
            app,
            allow_origin_regex=".*",  # already decided above
            allow_methods=CORS_METHODS,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=CORS_MAX_AGE_S,
        )

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return False
        normalised = normalise_origin(origin)
        return normalised is not None and (self.allow_any or normalised in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allows(Headers(scope=scope).get("origin")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
