"""Hostile and friendly browsers (contract section 8): DNS rebinding (421 for unknown `Host`),
`Origin` judged against the configured and the server's own origins, CSRF (415 for
state-changing requests that are not JSON, before any effect) and CORS for allowed origins,
SSE included."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from api_support import Api, LiveServer, assert_problem, finished_run, session_body, sleep_step
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.http.state import service_state

pytestmark = pytest.mark.anyio
MakeApi = Callable[..., AbstractAsyncContextManager[Api]]
MakeLive = Callable[..., AbstractContextManager[LiveServer]]
SSE = {"Accept": "text/event-stream"}
EVIL = "http://evil.example"
UI = "https://ui.example"


def port_of(server: LiveServer) -> int:
    port = urlsplit(server.base_url).port
    assert port is not None
    return port


# --- DNS rebinding: Host ------------------------------------------------------------------


async def test_rebinding_host_is_refused_over_http_sse_and_websocket(
    make_live_server: MakeLive, tmp_path: Path
) -> None:
    victim = tmp_path / "precious.csv"
    victim.write_text("keep me\n")
    with make_live_server() as server:
        port = port_of(server)
        forged = {"Host": f"evil.example:{port}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            r = await client.get("/v1/sessions", headers=forged)
            problem = assert_problem(r, 421, "MISDIRECTED_REQUEST")
            assert "--allowed-hosts" in problem["detail"]
            # What the attack did: create a session whose CSV sink overwrites a file.
            body = session_body("pwn")
            r = await client.post("/v1/sessions", json=body, headers=forged)
            assert_problem(r, 421, "MISDIRECTED_REQUEST")
            sink = {"ref": "out", "type": "csv", "location": str(victim)}
            r = await client.post("/v1/sessions/pwn/sinks/patch", json=sink, headers=forged)
            assert_problem(r, 421, "MISDIRECTED_REQUEST")
            assert (await client.get("/v1/sessions")).json()["sessions"] == []
            r = await client.get("/v1/events", headers={**SSE, **forged})
            assert_problem(r, 421, "MISDIRECTED_REQUEST")
            # The names the server owns still work, with or without the port.
            for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}"):
                r = await client.get("/v1/health", headers={"Host": host})
                assert r.status_code == 200, host
        # WebSocket: the handshake itself is refused, before any op can be sent.
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                f"ws://evil.example:{port}/v1/ws", host="127.0.0.1", port=port, open_timeout=20
            ):
                pass
        assert info.value.response.status_code == 421
        assert json.loads(info.value.response.body)["code"] == "MISDIRECTED_REQUEST"
        async with connect(
            f"ws://localhost:{port}/v1/ws", host="127.0.0.1", port=port, open_timeout=20
        ) as ws:
            await ws.send(json.dumps({"op": "ping", "id": "p"}))
            with anyio.fail_after(20):
                assert json.loads(await ws.recv())["ok"] is True
    assert victim.read_text() == "keep me\n"


async def test_allowed_hosts_add_names(make_live_server: MakeLive) -> None:
    with make_live_server(allowed_hosts=("beamline-pc.local",)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            r = await client.get("/v1/sessions", headers={"Host": "Beamline-PC.local:8000"})
            assert r.status_code == 200
            r = await client.get("/v1/sessions", headers={"Host": "other.local"})
            assert_problem(r, 421, "MISDIRECTED_REQUEST")


# --- Origin on the stream handshakes --------------------------------------------------------


async def test_stream_origin_is_judged_by_allowed_and_own_origins_not_by_host(
    make_live_server: MakeLive,
) -> None:
    with make_live_server(allowed_origins=(UI,)) as server:
        port = port_of(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            r = await client.get("/v1/events", headers={**SSE, "Origin": EVIL})
            assert_problem(r, 403, "FORBIDDEN")
            # Host and Origin agreeing proves nothing (rebinding makes them agree).
            r = await client.get(
                "/v1/events",
                headers={**SSE, "Origin": f"{EVIL}:{port}", "Host": f"evil.example:{port}"},
            )
            assert r.status_code in (403, 421)
            for origin in (UI, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                async with client.stream(
                    "GET", "/v1/events", headers={**SSE, "Origin": origin}
                ) as stream:
                    assert stream.status_code == 200, origin
        url = server.ws_url + "/v1/ws"
        async with connect(url, origin=EVIL, open_timeout=20) as ws:  # type: ignore[arg-type]
            with pytest.raises(ConnectionClosed) as closed:
                with anyio.fail_after(20):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        for origin in (UI, f"http://127.0.0.1:{port}"):
            async with connect(url, origin=origin, open_timeout=20) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"op": "ping", "id": "p"}))
                with anyio.fail_after(20):
                    assert json.loads(await ws.recv())["ok"] is True


# --- CSRF: only JSON may change state ---------------------------------------------------------


async def started(api: Api, run_id: str) -> None:
    """Wait (on the broker, from the run's first event) until `run_id` has started."""
    subscription = await service_state(api.app).broker.subscribe(run_id=run_id, since="0")
    try:
        with anyio.fail_after(20):
            while batch := await subscription.get_batch():
                if any(json.loads(item.raw)["type"] == "run.started" for item in batch):
                    return
    finally:
        subscription.close()
    raise AssertionError(f"{run_id} ended without starting")


FORM = {"content-type": "application/x-www-form-urlencoded"}
TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}


async def test_cross_site_text_plain_and_form_posts_are_415_and_do_nothing(api: Api) -> None:
    body = json.dumps(session_body("s", sleep_step(seconds=30, ticks=300)))
    r = await api.client.post("/v1/sessions", content=body, headers=TEXT)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await api.client.get("/v1/sessions")).json()["sessions"] == []

    assert (await api.client.post("/v1/sessions", content=body, headers=JSON)).status_code == 201
    r = await api.client.post("/v1/sessions/s/process", content=b"mode=full", headers=FORM)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await api.client.post("/v1/sessions/s/process", content=b"", headers=TEXT)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await api.client.get("/v1/sessions/s/runs")).json()["runs"] == []

    running = (await api.client.post("/v1/sessions/s/process", json={})).json()["run_id"]
    await started(api, running)
    # Body-less: no Content-Type at all, as a bare `fetch(url, {method: "POST"})` sends.
    assert_problem(
        await api.client.post(f"/v1/runs/{running}/cancel"), 415, "UNSUPPORTED_MEDIA_TYPE"
    )
    r = await api.client.post(f"/v1/runs/{running}/cancel", content=b"", headers=TEXT)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await api.client.get(f"/v1/runs/{running}")).json()["status"] == "running"
    r = await api.client.delete("/v1/sessions/s")
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await api.client.post("/v1/sessions/s/reset", content=b"mode=full", headers=FORM)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await api.client.get("/v1/sessions/s")).status_code == 200

    r = await api.client.post(f"/v1/runs/{running}/cancel", json={})
    assert r.status_code == 202
    assert (await finished_run(api, running))["status"] == "cancelled"
    r = await api.client.post(f"/v1/runs/{running}/retry", headers=TEXT)
    assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    runs = (await api.client.get("/v1/sessions/s/runs")).json()["runs"]
    assert [run["run_id"] for run in runs] == [running]  # no retry was queued
    r = await api.client.delete("/v1/sessions/s", headers=JSON)
    assert r.status_code == 204


# --- CORS -------------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        out["Access-Control-Request-Headers"] = headers
    return out


async def test_cors_preflight_and_real_requests_for_allowed_origins_only(
    make_api: MakeApi,
) -> None:
    async with make_api(allowed_origins=("https://UI.example:443",), token="t") as api:
        wanted = "authorization, content-type, idempotency-key, last-event-id"
        # A preflight carries no token: it is answered before authentication and CSRF.
        r = await api.client.options(
            "/v1/sessions/s/process", headers=preflight(UI, "POST", wanted)
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == UI
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert set(wanted.split(", ")) <= allowed
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await api.client.options("/v1/events", headers=preflight(UI, "GET", "last-event-id"))
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == UI

        r = await api.client.options("/v1/sessions", headers=preflight(EVIL, "POST", wanted))
        assert not any(h.startswith("access-control-") for h in r.headers)

        auth = {"Authorization": "Bearer t"}
        r = await api.client.get("/v1/sessions", headers={"Origin": UI, **auth})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == UI
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"location", "retry-after"} <= exposed
        # Errors are readable by the allowed page too (a 401 says to ask for the token).
        r = await api.client.get("/v1/sessions", headers={"Origin": UI})
        assert_problem(r, 401, "UNAUTHORIZED")
        assert r.headers["access-control-allow-origin"] == UI

        r = await api.client.get("/v1/sessions", headers={"Origin": EVIL, **auth})
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers)


async def test_cors_on_a_live_sse_stream(make_live_server: MakeLive) -> None:
    with make_live_server(allowed_origins=(UI,)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            r = await client.get("/v1/events", headers={**SSE, "Origin": EVIL})
            assert r.status_code == 403
            assert "access-control-allow-origin" not in r.headers
            with anyio.fail_after(30):
                async with client.stream(
                    "GET", "/v1/events", params={"since": "0"}, headers={**SSE, "Origin": UI}
                ) as stream:
                    assert stream.status_code == 200
                    assert stream.headers["access-control-allow-origin"] == UI
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    created = await client.post("/v1/sessions", json=session_body("c"))
                    assert created.status_code == 201
                    events: list[dict[str, Any]] = []
                    async for line in stream.aiter_lines():
                        if line.startswith("data:"):
                            events.append(json.loads(line[5:]))
                            if events[-1]["type"] == "session.created":
                                break
                    assert events[-1]["sessionid"] == "c"
