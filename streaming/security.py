"""Origin checks for the streaming handshakes (contract section 8).

Browsers send `Origin` on WebSocket handshakes and cross-origin requests; a page from another
site must not be able to open an event stream or send control ops with the user's ambient
credentials. Non-browser clients send no `Origin` and are allowed (the token guards them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_allowed(headers: Mapping[str, str], allowed_origins: Iterable[str]) -> bool:
    """True when the request's `Origin` may use the streams.

    No `Origin` -> allowed; same origin (the Origin's host:port equals the `Host` header) ->
    allowed; otherwise the Origin must be listed in `allowed_origins` (scheme://host[:port],
    compared case-insensitively, default ports normalised), or the list must contain "*".
    `headers` is looked up with lower-case names (Starlette's `Headers` is case-insensitive).
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    allowed = [a.strip() for a in allowed_origins if a.strip()]
    if "*" in allowed:
        return True
    normalised = _normalise(origin)
    if normalised is None:
        return False  # "null" (sandboxed/file pages) or garbage: never same-origin
    host = headers.get("host")
    if host is not None and _host_port(normalised) == _host_port_of_host(host, normalised[0]):
        return True
    return any(_normalise(a) == normalised for a in allowed)


def _normalise(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _host_port(origin: tuple[str, str, int]) -> tuple[str, int]:
    return origin[1], origin[2]


def _host_port_of_host(host: str, scheme: str) -> tuple[str, int] | None:
    parsed = _normalise(f"{scheme}://{host}")
    return None if parsed is None else _host_port(parsed)
