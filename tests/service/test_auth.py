"""Bearer token on every endpoint but /v1/health (HTTP, SSE and WebSocket alike)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager

import pytest
from api_support import Api, LiveServer, assert_problem
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.http.auth import token_matches

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token"
MakeApi = Callable[..., AbstractAsyncContextManager[Api]]


async def test_health_needs_no_token(make_api: MakeApi) -> None:
    async with make_api(token=TOKEN) as api:
        assert (await api.client.get("/v1/health")).status_code == 200


@pytest.mark.parametrize(
    "path", ["/v1/sessions", "/v1/readiness", "/v1/metrics", "/v1/openapi.json", "/v1/events"]
)
async def test_everything_else_needs_the_token(make_api: MakeApi, path: str) -> None:
    async with make_api(token=TOKEN) as api:
        r = await api.client.get(path)
        assert_problem(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", ""]
)
async def test_wrong_credentials_are_401(make_api: MakeApi, authorization: str) -> None:
    async with make_api(token=TOKEN) as api:
        r = await api.client.get("/v1/sessions", headers={"Authorization": authorization})
        assert_problem(r, 401, "UNAUTHORIZED")


async def test_right_token_in_header_or_query_passes(make_api: MakeApi) -> None:
    async with make_api(token=TOKEN) as api:
        r = await api.client.get("/v1/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        r = await api.client.get("/v1/sessions", params={"access_token": TOKEN})
        assert r.status_code == 200


async def test_auth_is_checked_before_the_body_is_looked_at(make_api: MakeApi) -> None:
    async with make_api(token=TOKEN) as api:
        r = await api.client.post(
            "/v1/sessions", content=b"x" * 10, headers={"content-type": "text/plain"}
        )
        assert_problem(r, 401, "UNAUTHORIZED")


async def test_without_configured_token_everything_is_open(api: Api) -> None:
    assert (await api.client.get("/v1/sessions")).status_code == 200


def test_token_compare() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "")
    assert token_matches("ünï", "ünï")


@pytest.mark.parametrize("path", ["/v1/ws", "/v1/sessions/s/events"])
async def test_websocket_without_token_is_closed_1008(
    make_live_server: Callable[..., AbstractContextManager[LiveServer]], path: str
) -> None:
    with make_live_server(token=TOKEN) as server:
        async with connect(server.ws_url + path) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
