"""Browser-facing checks of the streaming handshakes and of `Host` (contract section 8).

Two attacks shape this module:

- Cross-site requests: a page on another site opens an event stream or sends control ops
  with the user's network position. Browsers send `Origin` on WebSocket handshakes and
  cross-origin requests; it must be one of the configured allowed origins or one of the
  server's own origins. It is never compared with the request's own `Host`, which the
  attacker controls under DNS rebinding. Non-browser clients send no `Origin` and are allowed
  (the token guards them).
- DNS rebinding: `evil.example` resolves to 127.0.0.1, so the page's requests reach a
  loopback-bound server as same-origin requests carrying `Host: evil.example`. A
  loopback-bound server therefore only answers the host names it knows (`HostPolicy`).

Everything here is pure: no I/O, no ASGI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HostPolicy", "host_name", "is_loopback_host", "normalise_origin", "origin_allowed"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str | None:
    """The host name of a `Host` header value (lower case, IPv6 without brackets, port
    dropped), or None when it is not a well-formed `host[:port]`."""
    value = host_header.strip()
    if not value or any(c in value for c in "/?#@\\ \t\r\n\0"):
        return None
    try:
        parts = urlsplit("//" + value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    return parts.hostname or None


@dataclass(frozen=True)
class HostPolicy:
    """Which `Host` values a server answers and which origins are its own.

    `bound` is the address the server listens on; `allowed_hosts` the operator's extra names
    (`--allowed-hosts`). A loopback-bound server (`enforced`) answers only its bound address,
    `localhost` and the allowed names, whatever the port; a server bound beyond loopback
    needs a token and answers any `Host`. The port is not checked: a rebinding page can use
    the right port, so the name is what tells a rebinding request apart.
    """

    bound: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()

    @property
    def enforced(self) -> bool:
        return is_loopback_host(self.bound)

    @property
    def names(self) -> frozenset[str]:
        """Host names this server calls its own (and answers, when `enforced`)."""
        names = {"localhost", *(h.strip().lower().strip("[]") for h in self.allowed_hosts)}
        bound = self.bound.lower().strip("[]")
        if bound not in _WILDCARD_BINDS:
            names.add(bound)
        if bound == "localhost":
            names |= {"127.0.0.1", "::1"}
        if not self.enforced:
            # A wildcard or public bind is still reachable through loopback.
            names |= {"127.0.0.1", "::1"}
        return frozenset(n for n in names if n)

    def host_allowed(self, host_header: str | None) -> bool:
        """True when a request with this `Host` may be served.

        No `Host` at all (HTTP/1.0 tools) is allowed: a browser always sends one, and a
        rebinding attack needs a browser.
        """
        if not self.enforced or host_header is None:
            return True
        name = host_name(host_header)
        return name is not None and name in self.names

    def own_origin(self, origin: tuple[str, str, int], server_port: int | None) -> bool:
        """Whether a normalised origin is one of this server's own (a page it served)."""
        _, name, port = origin
        return name in self.names and (server_port is None or port == server_port)


def normalise_origin(origin: str) -> tuple[str, str, int] | None:
    """`(scheme, host, port)` of an origin string; None for `null` or garbage."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def origin_allowed(
    headers: Mapping[str, str],
    allowed_origins: Iterable[str],
    *,
    policy: HostPolicy | None = None,
    server_port: int | None = None,
) -> bool:
    """True when the request's `Origin` may use the streams.

    No `Origin` -> allowed; an Origin listed in `allowed_origins` (scheme://host[:port],
    compared case-insensitively, default ports normalised), or "*" in the list -> allowed;
    one of the server's own origins (`policy.names` on `server_port`, the port the
    connection really arrived on) -> allowed. Anything else, including `null`, is refused.
    The request's `Host` header plays no part. `headers` is looked up with lower-case names.
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    allowed = [a.strip() for a in allowed_origins if a.strip()]
    if "*" in allowed:
        return True
    normalised = normalise_origin(origin)
    if normalised is None:
        return False  # "null" (sandboxed/file pages) or garbage
    if any(normalise_origin(a) == normalised for a in allowed):
        return True
    return (policy or HostPolicy()).own_origin(normalised, server_port)
