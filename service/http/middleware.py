"""The one middleware stack of both node roles (`service.http.app`, `service.http.stream_node`).

Outermost first: `InternalErrorMiddleware` (500 `INTERNAL`, logged once), `HostCheckMiddleware`
(421 for an unknown `Host` on loopback: DNS rebinding), `AllowedOriginsCors` (preflights
answered before auth), `AuthMiddleware` (bearer token), `BodyLimitMiddleware` (413/415/422 on
bodies). Spelled once, so that a guard added for one role guards the other too.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.middleware import Middleware

from service.http.auth import AuthMiddleware
from service.http.browser import AllowedOriginsCors, HostCheckMiddleware
from service.http.limits import BodyLimitMiddleware
from service.http.problems import InternalErrorMiddleware
from service.runtime.config import Config
from streaming.security import HostPolicy

__all__ = ["middleware_stack"]


def middleware_stack(
    config: Config, host_policy: HostPolicy, *, route_limits: Mapping[str, int] | None = None
) -> list[Middleware]:
    """The middleware for `config`; `route_limits`: body limits of single routes (path ->
    bytes) above `config.max_body_bytes`."""
    return [
        Middleware(InternalErrorMiddleware),
        Middleware(HostCheckMiddleware, policy=host_policy),
        Middleware(AllowedOriginsCors, allowed_origins=config.allowed_origins),
        Middleware(AuthMiddleware, token=config.token),
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=config.max_body_bytes,
            route_limits=dict(route_limits) if route_limits else None,
        ),
    ]
