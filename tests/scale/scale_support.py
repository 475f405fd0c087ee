"""Helpers of the scale-out tests: SSE clients that stop at once when the test is done (a
thread blocked in a read would wait for the next keep-alive, 15 s later)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from redis_server import RedisServer
from sstore_server import DIAG_PIPELINE, ServeProcess

Frame = tuple[str, str, str]  # (id, event type, data line)


async def read_sse(url: str, since: str, count: int) -> list[Frame]:
    """The first `count` frames of `/v1/events` after `since`, from a fresh client."""
    follower = Follower(url, since)
    try:
        assert await follower.wait_for(lambda ev: len(ev) >= count), follower.error
        return follower.events[:count]
    finally:
        await follower.aclose()


def client(url: str) -> httpx.AsyncClient:
    """An API client for the node at `url` (paths start after `/v1`)."""
    return httpx.AsyncClient(base_url=url + "/v1", timeout=30.0)


class Follower:
    """Follows `GET /v1/events?since=...` in an asyncio task; `aclose()` cancels it at once.

    Use it from async tests (`pytest.mark.anyio`); blocking calls in the test hold it up only
    while they run (the socket buffers meanwhile)."""

    def __init__(self, url: str, since: str = "0") -> None:
        self.url = url
        self.since = since
        self.events: list[Frame] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as client,
                client.stream(
                    "GET", f"{self.url}/v1/events", params={"since": self.since},
                    headers={"Accept": "text/event-stream"},
                ) as response,
            ):  # fmt: skip
                response.raise_for_status()
                frame: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line == "":
                        if "data" in frame:
                            self.events.append((frame.get("id", ""), frame["event"], frame["data"]))
                            self._changed.set()
                        frame = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        frame[field] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[Frame]], bool], timeout: float = 30.0
    ) -> bool:
        """Wait until `predicate(events)` holds; False after `timeout` or if the stream ended."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate(self.events) and not self._task.done():
                    self._changed.clear()
                    await self._changed.wait()
        return predicate(self.events)

    @property
    def ended(self) -> bool:
        return self._task.done()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def seqs(frames: list[Frame]) -> list[int]:
    return [json.loads(f[2])["seq"] for f in frames]


Nodes = tuple[ServeProcess, ServeProcess]


def start_nodes(data_dir: Path, redis: RedisServer, *api_args: str) -> Nodes:
    """An API node on `redis`, then a stream node relaying from it (both on `data_dir`)."""
    api = ServeProcess(data_dir, extra_args=("--broker", redis.url, *api_args))
    api.start()
    stream = ServeProcess(
        data_dir,
        extra_args=("--role", "stream", "--broker", redis.url, "--api-url", api.url),
    )
    try:
        stream.start()
    except BaseException:
        api.terminate()
        raise
    return api, stream


async def create_session(node: ServeProcess, sid: str) -> None:
    """Create session `sid` (a small diagnostic pipeline) through `node`'s API."""
    async with client(node.url) as c:
        body = {"session_id": sid, "pipeline": {"yaml_text": DIAG_PIPELINE}}
        (await c.post("/sessions", json=body)).raise_for_status()
