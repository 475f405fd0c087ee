"""Service benchmarks over real HTTP (uvicorn in a background thread, httpx client).

1. Submit throughput: `POST /v1/sessions/{sid}/process` on a no-op pipeline, one client, until
   the first 429 (or `--submits`): 202s per second.
2. Sample-to-result latency for the bundled `saxs` example on generated frames (1024x1024 by
   default): the time from sending `POST /v1/sessions/{sid}/sample {"process": true}` to
   receiving that run's `run.finished` over SSE. Partial: consecutive samples (geometry reused).
   Full: the same after `POST .../reset {"mode": "full"}` (not timed).

Usage: `.venv/bin/python tests/bench/bench_service.py [--frame 1024] [--repeats 15]`.
Prints one line per figure. Goals (contract section 9): partial <= 100 ms median,
full <= 400 ms median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from service.http.app import create_app
from service.http.server import RunwireServer, uvicorn_config
from service.runtime.config import Config

NOOP = "name: noop\nsteps:\n  - {id: n, use: diag.noop}\n"


@contextmanager
def serve(config: Config) -> Iterator[str]:
    """uvicorn on 127.0.0.1 and a free port, in a thread; yields the base URL.

    Like `service.http.server.serve_in_thread`, except that the listening socket is created with
    `IPPROTO_TCP`: asyncio enables TCP_NODELAY only on sockets whose `proto` says TCP, and
    without it every keep-alive response waits ~40 ms for a delayed ACK (headers and body are
    two writes), which would swamp every figure here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(config)
    server = RunwireServer(uvicorn_config(app, config, log_level="warning"), app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not server.started_event.wait(30):
            raise RuntimeError("server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.request_exit()
        thread.join(30)
        sock.close()


async def submit_throughput(client: httpx.AsyncClient, limit: int) -> tuple[int, float, bool]:
    """(202s, seconds, whether a 429 ended it)."""
    r = await client.post("/sessions", json={"session_id": "noop", "pipeline": {"yaml_text": NOOP}})
    r.raise_for_status()
    accepted = 0
    t0 = time.perf_counter()
    for _ in range(limit):
        r = await client.post("/sessions/noop/process", json={})
        if r.status_code == 429:
            assert "retry-after" in r.headers
            return accepted, time.perf_counter() - t0, True
        assert r.status_code == 202, r.text
        accepted += 1
    return accepted, time.perf_counter() - t0, False


class FinishedWatcher:
    """Follows a session's SSE stream and records when each run's `run.finished` arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.elapsed: dict[str, float] = {}  # the run's own time in its worker (elapsed_s)
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    async def follow(self, client: httpx.AsyncClient, sid: str) -> None:
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", f"/sessions/{sid}/events", headers=headers) as resp:
            resp.raise_for_status()
            self.ready.set()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event: dict[str, Any] = json.loads(line[5:])
                if event["type"] == "run.finished":
                    now = time.perf_counter()
                    async with self._changed:
                        self.arrived[event["runid"]] = now
                        self.status[event["runid"]] = event["data"]["status"]
                        self.elapsed[event["runid"]] = event["data"].get("elapsed_s", 0.0)
                        self._changed.notify_all()

    async def wait(self, run_id: str, timeout: float = 60.0) -> float:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: run_id in self.arrived)
        if self.status[run_id] != "succeeded":
            raise RuntimeError(f"run {run_id} {self.status[run_id]}")
        return self.arrived[run_id]


async def sample_latency(
    client: httpx.AsyncClient, data: Path, repeats: int
) -> tuple[list[float], list[float]]:
    samples = sorted(await asyncio.to_thread(lambda: list(data.glob("sample_*.h5"))))
    body = {
        "session_id": "saxs",
        "pipeline": {"yaml_text": example_text("saxs")},
        "source_profile": "saxs",
    }
    (await client.post("/sessions", json=body)).raise_for_status()
    sources = [
        {"ref": "background", "type": "hdf5", "location": str(data / "background.h5")},
        {"ref": "dark", "type": "hdf5", "location": str(data / "dark.h5")},
    ]
    (await client.put("/sessions/saxs/sources", json={"sources": sources})).raise_for_status()
    watcher = FinishedWatcher()
    follower = asyncio.create_task(watcher.follow(client, "saxs"))
    await watcher.ready.wait()

    async def one(index: int) -> float:
        t0 = time.perf_counter()
        r = await client.post(
            "/sessions/saxs/sample",
            json={"location": str(samples[index % len(samples)]), "process": True},
        )
        assert r.status_code == 202, r.text
        return await watcher.wait(r.json()["run_id"]) - t0

    await one(0)  # warm-up: imports, first full run
    partial, full = [], []
    for i in range(repeats):
        partial.append(await one(i + 1))
    for i in range(repeats):
        (await client.post("/sessions/saxs/reset", json={"mode": "full"})).raise_for_status()
        full.append(await one(i))
    runs = (await client.get("/sessions/saxs/runs")).json()["runs"]
    modes = [r["effective_mode"] for r in reversed(runs)]  # listed newest first
    assert modes == ["full"] + ["partial"] * repeats + ["full"] * repeats, modes
    follower.cancel()
    return partial, full


def _stats(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return (
        f"median {statistics.median(ms):7.1f} ms  p90 {p90:7.1f} ms  "
        f"min {ms[0]:7.1f} ms  max {ms[-1]:7.1f} ms  (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--submits", type=int, default=5000, help="stop after this many 202s")
    parser.add_argument("--queue-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runwire-bench-") as tmp:
        root = Path(tmp)
        data = root / "frames"
        write_demo_data(data, count=3, shape=(args.frame, args.frame))
        config = Config(data_dir=root / "data", queue_size=args.queue_size, workers=2)
        with serve(config) as base_url:

            async def run() -> None:
                limits = httpx.Limits(max_connections=4)
                async with httpx.AsyncClient(
                    base_url=base_url + "/v1", timeout=60.0, limits=limits
                ) as client:
                    accepted, seconds, hit = await submit_throughput(client, args.submits)
                    end = "until the first 429" if hit else f"(no 429 within {args.submits})"
                    print(
                        f"submit throughput: {accepted / seconds:8.0f} 202/s  "
                        f"({accepted} accepted in {seconds:.2f} s {end}, queue {args.queue_size})"
                    )
                    # let the no-op backlog drain so it does not compete with the latency runs
                    # polled over HTTP: the server offers nothing to wait on (ASYNC110)
                    while (await client.get("/readiness")).json()["metrics"]["queued_run_count"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    partial, full = await sample_latency(client, data, args.repeats)
                    size = f"{args.frame}x{args.frame}"
                    print(f"sample -> run.finished, partial, {size}: {_stats(partial)}")
                    print(f"sample -> run.finished, full,    {size}: {_stats(full)}")

            asyncio.run(run())


if __name__ == "__main__":
    main()
