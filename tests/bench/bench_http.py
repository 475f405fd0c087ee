"""Cost of the HTTP layer itself (middleware, routing, decoding, encoding), in-process over ASGI
so that no socket or client parsing is measured.

1. Per-request time of `GET /v1/health` (middleware + routing only), `GET /v1/sessions/{sid}`
   (plus runtime lookup and msgspec encoding) and `POST .../process/dry-run` (plus body limits,
   decoding and planning), each with and without a bearer token.
2. `check_json_shape` (the body limit's depth/number scan) on 1 MiB bodies.

Usage: `.venv/bin/python tests/bench/bench_http.py [--requests 2000]`. Prints one line per
figure (median and p99 per request, microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from service.http.app import create_app
from service.http.limits import check_json_shape
from service.runtime.config import Config

PIPELINE = "name: b\nsteps:\n  - {id: n, use: diag.noop}\n"


async def measure(client: httpx.AsyncClient, method: str, path: str, n: int, **kw: object) -> str:
    times: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        r = await client.request(method, path, **kw)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
        assert r.status_code < 300, r.text
    times.sort()
    median = statistics.median(times) * 1e6
    p99 = times[int(len(times) * 0.99) - 1] * 1e6
    return f"{method} {path}: median {median:.0f} us, p99 {p99:.0f} us ({n} requests)"


async def http_layer(n: int, token: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Config(data_dir=Path(tmp), token=token))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1", headers=headers
            ) as client:
                body = {"session_id": "b", "pipeline": {"yaml_text": PIPELINE}}
                (await client.post("/v1/sessions", json=body)).raise_for_status()
                label = "with token" if token else "no token"
                for method, path, kw in (
                    ("GET", "/v1/health", {}),
                    ("GET", "/v1/sessions/b", {}),
                    ("POST", "/v1/sessions/b/process/dry-run", {"json": {"mode": "auto"}}),
                ):
                    print(f"[{label}] " + await measure(client, method, path, n, **kw))


def shape_scan() -> None:
    bodies = {
        "1 MiB pipeline text": json.dumps({"yaml_text": "a: [1, 2]\n" * 95_000}).encode(),
        "1 MiB number array": json.dumps(list(range(150_000))).encode(),
        "1 MiB of '['": b"[" * (1 << 20),
    }
    for name, body in bodies.items():
        t = time.perf_counter()
        for _ in range(10):
            check_json_shape(body, max_depth=32, max_number_chars=64)
        print(f"check_json_shape, {name}: {(time.perf_counter() - t) / 10 * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(http_layer(args.requests, None))
    asyncio.run(http_layer(args.requests, "bench-token"))
    shape_scan()


if __name__ == "__main__":
    main()
