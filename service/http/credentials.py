"""The bearer token a request presents, and its constant-time check (`service.http.auth`
guards every route with them; a stream node forwards the presented token to its API node).

Framework-light on purpose (no app state): any module of `service.http` may import it.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import Scope

__all__ = ["presented_token", "token_matches"]


def presented_token(scope: Scope) -> str | None:
    """The bearer token a request presents: `Authorization: Bearer`, else `access_token`."""
    authorization = Headers(scope=scope).get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else None
    query: str = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query):
        if name == "access_token":
            return value
    return None


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of the configured token with what the client presented."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))
