"""Bearer-token authentication for every HTTP, SSE and WebSocket endpoint but `/v1/health`,
and the `Origin` checks of the streaming handshakes (contract section 8).

The token comes from `Authorization: Bearer <token>`, or, for clients that cannot set headers
(a browser's `EventSource` and `WebSocket`), from the `access_token` query parameter (RFC 6750
section 2.3). It is compared with `hmac.compare_digest`, so the time taken does not reveal how
much of a guess was right.

Refusals: HTTP answers 401 `UNAUTHORIZED` (problem+json, `WWW-Authenticate: Bearer`). A
WebSocket is accepted and at once closed with 1008 (policy violation): closing before the
accept would turn into an HTTP 403 from which a browser client learns nothing.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from service.contract.errors import ServiceError
from service.http.browser import server_port
from service.http.credentials import presented_token, token_matches
from service.http.problems import problem_response
from service.http.state import service_state
from streaming.security import origin_allowed

__all__ = [
    "PUBLIC_PATHS",
    "WS_POLICY_VIOLATION",
    "AuthMiddleware",
    "check_sse_origin",
    "presented_token",
    "reject_websocket",
    "token_matches",
    "websocket_origin_ok",
]

# Open without a token: liveness probes come from load balancers that hold no secret.
PUBLIC_PATHS = frozenset({"/v1/health"})
# The dashboard's static files hold no data; the page asks for the token when the API says 401.
PUBLIC_PREFIXES = ("/ui/",)
WS_POLICY_VIOLATION = 1008


async def reject_websocket(websocket: WebSocket, reason: str) -> None:
    """Accept the handshake and close with 1008, so the client sees why it was refused."""
    await websocket.accept()
    await websocket.close(code=WS_POLICY_VIOLATION, reason=reason)


class AuthMiddleware:
    """Requires `token` on every HTTP and WebSocket request outside `PUBLIC_PATHS`.

    With `token=None` (loopback-only deployments) everything passes.
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is None
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in PUBLIC_PATHS
            or scope["path"] in ("/", "/ui")
            or scope["path"].startswith(PUBLIC_PREFIXES)
            or token_matches(self.token, presented_token(scope))
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await reject_websocket(WebSocket(scope, receive, send), "unauthorized")
            return
        error = ServiceError(
            "UNAUTHORIZED",
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="runwire"'},
        )
        await problem_response(error)(scope, receive, send)


def _origin_ok(scope: Scope, headers: Headers) -> bool:
    state = service_state(scope["app"])
    return origin_allowed(
        headers,
        state.config.allowed_origins,
        policy=state.host_policy,
        server_port=server_port(scope),
    )


def websocket_origin_ok(websocket: WebSocket) -> bool:
    """Whether a WebSocket handshake's `Origin` is allowed: none, an allowed origin, or one of
    the server's own (never judged by the request's own `Host`)."""
    return _origin_ok(websocket.scope, websocket.headers)


def check_sse_origin(request: Request) -> None:
    """Raise 403 `FORBIDDEN` when an SSE request's `Origin` is not allowed."""
    if not _origin_ok(request.scope, request.headers):
        raise ServiceError("FORBIDDEN", f"origin {request.headers.get('origin')!r} is not allowed")
