"""The client side of bench_fanout.py: one process holding many raw WebSocket / SSE
connections, timing every event against the `ts` (time.monotonic_ns) the server's publisher
stamped into it. Raw asyncio protocols and a regex over the byte stream keep the per-event cost
of the measuring side far below the server's (a full client library would measure itself)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

TS = re.compile(rb'"ts":(\d+),')
TCP_ESTABLISHED = 1


class Recorder(asyncio.Protocol):
    """One connection: sends the request, waits for `marker`, then records latencies."""

    def __init__(self, request: bytes, marker: bytes, pause_after_ready: bool = False) -> None:
        self.request = request
        self.marker = marker
        self.pause_after_ready = pause_after_ready
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pre = b""
        self.tail = b""
        self.latencies: list[int] = []
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.expected = 0
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.ready.done():
            self.pre += data
            at = self.pre.find(self.marker)
            if at < 0:
                return
            data = self.pre[at + len(self.marker) :]
            self.pre = b""
            self.ready.set_result(None)
            if self.pause_after_ready and self.transport is not None:
                self.transport.pause_reading()
                return
        buf = self.tail + data
        pos = 0
        n = 0
        lat = self.latencies
        for m in TS.finditer(buf):
            lat.append(now - int(m.group(1)))
            pos = m.end()
            n += 1
        self.tail = buf[max(pos, len(buf) - 40) :]
        if n:
            self.count += n
            self.last_ns = now
            if not self.first_ns:
                self.first_ns = now
            if self.done is not None and self.count >= self.expected and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def http_request(path: str, port: int, kind: str) -> tuple[bytes, bytes]:
    host = f"127.0.0.1:{port}"
    if kind == "sse":
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        return req.encode(), b"retry:"
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return req.encode(), b"\r\n\r\n"


class ClientPool:
    def __init__(self, conn: Connection, port: int) -> None:
        self.conn = conn
        self.port = port
        self.recorders: list[Recorder] = []
        self.stalled: list[tuple[Recorder, socket.socket]] = []
        self.cut_off_ns: list[int] = []
        self._watch: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd, args = await loop.run_in_executor(None, self.conn.recv)
            if cmd == "quit":
                self.conn.send(None)
                return
            self.conn.send(await getattr(self, cmd)(**args))

    async def _connect(self, path: str, kind: str, stalled: bool = False) -> Recorder:
        loop = asyncio.get_running_loop()
        request, marker = http_request(path, self.port, "sse" if kind == "sse" else "ws")
        if kind == "ws" and "/rw/" in path:
            marker = b'"type":"reply"'  # runwire's subscribe reply: subscribed from here
        sock = socket.socket()
        if stalled:
            # A tiny receive window: the server's send buffer fills after a few KiB.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        _, proto = await loop.create_connection(
            lambda: Recorder(request, marker, pause_after_ready=stalled), sock=sock
        )
        await asyncio.wait_for(proto.ready, 30)
        if stalled:
            self.stalled.append((proto, sock))
        return proto

    async def open(self, path: str, kind: str, n: int) -> int:
        for start in range(0, n, 200):  # not all at once: the listen backlog is finite
            batch = [self._connect(path, kind) for _ in range(min(200, n - start))]
            self.recorders.extend(await asyncio.gather(*batch))
        return len(self.recorders)

    async def open_stalled(self, path: str) -> int:
        await self._connect(path, "ws", stalled=True)
        self._watch = asyncio.create_task(self._watch_stalled())
        return len(self.stalled)

    async def _watch_stalled(self) -> None:
        # The stalled side never reads, so it can't see a close frame: poll the TCP state.
        while True:
            for _, sock in self.stalled:
                state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
                if state != TCP_ESTABLISHED and len(self.cut_off_ns) < len(self.stalled):
                    self.cut_off_ns.append(time.monotonic_ns())
            await asyncio.sleep(0.002)

    async def timed_replay(self, path: str, kind: str, expected: int) -> float:
        """Seconds from connecting to having received `expected` replayed events."""
        start = time.perf_counter()
        rec = await self._connect(path, kind)
        rec.expected = expected
        rec.done = asyncio.get_running_loop().create_future()
        if rec.count < expected:
            await asyncio.wait_for(rec.done, 30)
        elapsed = time.perf_counter() - start
        assert rec.transport is not None
        rec.transport.close()
        return elapsed

    async def reset(self) -> None:
        for r in self.recorders:
            r.latencies = []
            r.count = r.first_ns = r.last_ns = 0

    async def collect(self, expected: int, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        waits = []
        for r in self.recorders:
            r.expected = expected
            r.done = loop.create_future()
            if r.count >= expected:
                r.done.set_result(None)
            waits.append(r.done)
        await asyncio.wait(waits, timeout=timeout)
        lat = np.concatenate([np.asarray(r.latencies, dtype=np.int64) for r in self.recorders])
        received = int(sum(r.count for r in self.recorders))
        firsts = [r.first_ns for r in self.recorders if r.first_ns]
        lasts = [r.last_ns for r in self.recorders if r.last_ns]
        span = (max(lasts) - min(firsts)) / 1e9 if firsts else 0.0
        return {
            "received": received,
            "expected": expected * len(self.recorders),
            "rate": received / span if span > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) / 1e6 if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) / 1e6 if lat.size else float("nan"),
            "max_ms": float(lat.max()) / 1e6 if lat.size else float("nan"),
            "cut_off_ns": list(self.cut_off_ns),
        }

    async def close(self) -> int:
        for r in self.recorders:
            if r.transport is not None:
                r.transport.abort()
        for r, _ in self.stalled:
            if r.transport is not None:
                r.transport.abort()
        if self._watch is not None:
            self._watch.cancel()
        self.recorders, self.stalled, self.cut_off_ns = [], [], []
        return 0


def client_main(conn: Connection, port: int) -> None:
    """Process entry point."""
    asyncio.run(ClientPool(conn, port).run())
