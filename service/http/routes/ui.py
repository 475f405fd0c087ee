"""The web dashboard (contract section 10): `GET /` redirects to `/ui/`, which serves the static
files shipped in the package (`service/static/`), with no build step and nothing fetched from
the network.

Every answer under `/ui/` carries a strict Content-Security-Policy (`default-src 'self'`: no
inline script or style, no other origin, no framing) and `X-Content-Type-Options: nosniff`.
Caching: `index.html` is `no-cache` (revalidated every load, so an upgraded server is picked up
at once), the other files may be kept for an hour and are revalidated by their `ETag` after
that. The files are public (they hold no data), so `service.http.auth` lets `/` and `/ui/` through
without a token; the page then asks for one when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.datastructures import URLPath
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "UI_PATH", "routes"]

STATIC_DIR = Path(__file__).parents[2] / "static"
UI_PATH = "/ui"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_ASSET_MAX_AGE_S = 3600


class DashboardFiles(StaticFiles):
    """`StaticFiles` with the dashboard's security and caching headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if path in ("", ".", "index.html") or path.endswith(".html"):
            response.headers["Cache-Control"] = "no-cache"
        else:
            response.headers["Cache-Control"] = f"public, max-age={_ASSET_MAX_AGE_S}"
        return response


class RootRedirect(BaseRoute):
    """`GET /` (and HEAD) -> 307 to `/ui/`. A route of its own kind, not a `Route`, because it
    is not part of the `/v1` API the OpenAPI document describes."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"] == "/":
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await RedirectResponse(UI_PATH + "/", status_code=307)(scope, receive, send)


def routes() -> list[BaseRoute]:
    """The redirect and the `/ui` mount, for the app's top-level route table."""
    return [
        RootRedirect(),
        Mount(UI_PATH, app=DashboardFiles(directory=STATIC_DIR, html=True), name="ui"),
    ]
