"""The run side on Redis with the API node in-process (ASGI) and a `Worker` in a thread, on a
real `redis-server`: cancels reach the worker, failures come back whole, a stopped worker
gives its leases back, and the CLI refuses bad settings in one line."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis_server import RedisServer

from service.cli.main import main
from service.http.app import create_app
from service.runtime.config import Config
from service.runtime.worker import Worker, WorkerSettings

FAIL = """\
name: failing
steps:
  - id: boom
    use: diag.fail
    params: {message: kaput}
"""

SLOW = """\
name: slow
steps:
  - id: wait
    use: diag.sleep
    params: {seconds: 60, ticks: 600}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def api_and_worker(
    tmp_path: Path, url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Worker]]:
    config = Config(data_dir=tmp_path / "data", broker=url, runs="workers", lease_ttl=1.0,
                    shutdown_grace=1.0)  # fmt: skip
    app = create_app(config)
    async with app.router.lifespan_context(app):
        worker = Worker(WorkerSettings(broker=url, data_dir=config.data_dir, name="t1",
                                       lease_ttl=1.0))  # fmt: skip
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1/v1") as c:
                yield c, worker
        finally:
            worker.stop()
            await anyio.to_thread.run_sync(thread.join, 60)
            worker.redis.close()


async def final(client: httpx.AsyncClient, run_id: str, timeout: float = 60) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
            if run["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
                return run
            await anyio.sleep(0.05)  # pacing between polls of the run's state


async def until(
    get: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll `get()` until `done(body)`; the body then."""
    with anyio.fail_after(timeout):
        while True:
            body: dict[str, Any] = (await get()).json()
            if done(body):
                return body
            await anyio.sleep(0.05)  # pacing between polls of the server's state


async def submit(client: httpx.AsyncClient, sid: str, yaml_text: str) -> str:
    body = {"session_id": sid, "pipeline": {"yaml_text": yaml_text}, "auto_fallback": False}
    (await client.post("/sessions", json=body)).raise_for_status()
    answer = await client.post(f"/sessions/{sid}/process", json={})
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["run_id"]
    return run_id


@pytest.mark.anyio
async def test_cancel_reaches_the_worker_and_failures_come_back_whole(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with api_and_worker(tmp_path, redis_server.url) as (client, worker):
        failed = await final(client, await submit(client, "f", FAIL))
        assert failed["status"] == "failed" and failed["worker"] == "t1"
        assert failed["error"]["failed_step"] == "boom"
        assert "kaput" in failed["error"]["message"]

        slow = await submit(client, "s", SLOW)
        await until(lambda: client.get(f"/runs/{slow}"), lambda b: b["status"] == "running")
        (await client.post(f"/runs/{slow}/cancel", json={})).raise_for_status()
        cancelled = await final(client, slow)
        assert cancelled["status"] == "cancelled" and cancelled["worker"] == "t1"

        # The figures are refreshed every couple of seconds.
        body = await until(lambda: client.get("/workers"), lambda b: bool(b["workers"]))
        assert body["workers"][0]["name"] == "t1" and body["workers"][0]["alive"] is True
        assert (await client.get("/metrics")).text.count("runwire_broker_available 1.0") == 1
    # A stopped worker gives its leases back and stops beating.
    assert worker.redis.get("runwire:runs:worker:t1") is None
    assert worker.redis.get("runwire:runs:lease:s") is None


@pytest.mark.anyio
async def test_local_runs_list_no_workers(tmp_path: Path) -> None:
    app = create_app(Config(data_dir=tmp_path / "data"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1/v1") as c:
            body = (await c.get("/workers")).json()
            assert body == {"runs": "local", "broker_available": True, "queue_depth": 0,
                            "reports_lag": 0, "workers": []}  # fmt: skip
            assert "runwire_workers_alive" not in (await c.get("/metrics")).text


def test_cli_refuses_bad_worker_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--data-dir", str(tmp_path)]) == 64
    assert "needs --broker" in capsys.readouterr().err
    assert main(["worker", "--broker", "redis://127.0.0.1:1/0"]) == 64
    assert "needs --data-dir" in capsys.readouterr().err
    assert main(["worker", "--broker", "http://x", "--data-dir", str(tmp_path)]) == 64
    assert "--broker: expected" in capsys.readouterr().err
    args = ["worker", "--broker", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path)]
    assert main([*args, "--threads", "0"]) == 64
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(args) == 64  # no runs/ in it: not a runwire data directory
    assert "not a runwire data directory" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    assert main(args) == 69  # nothing listens on port 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach redis://127.0.0.1:1/0") and err.count("\n") == 1
    assert main(["serve", "--runs", "workers", "--data-dir", str(tmp_path)]) == 64
    assert "--runs workers needs --broker" in capsys.readouterr().err
    # A stream node needs the broker it relays from and the API node it forwards to.
    stream = ["serve", "--role", "stream", "--data-dir", str(tmp_path)]
    assert main(stream) == 64
    assert "--role stream needs --broker" in capsys.readouterr().err
    assert main([*stream, "--broker", "redis://127.0.0.1:1/0", "--api-url", "ftp://x"]) == 64
    assert "--api-url: expected http://HOST:PORT" in capsys.readouterr().err
