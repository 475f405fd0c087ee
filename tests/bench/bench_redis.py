"""Events on Redis and stream nodes (issue 13), run by hand:
`python tests/bench/bench_redis.py [--quick] [--rounds 3] [--runs 30] [--subscribers 1000]`.

Real processes only: `redis-server` (append-only, fsync always, as in the tests and in
docs/scale-out.md), `runwire serve` API nodes, `runwire serve --role stream` nodes; the event
source is real runs of the bundled saxs pipeline on generated 256x256 frames (one session,
background and dark, a warm-up run, then new samples with `process: true`). Every latency is
an event's envelope `time` (stamped by the API node when the event is created, wall clock)
to the moment a subscriber read it (wall clock, same machine).

1. Cost of the Redis backend on one node. Configurations, interleaved A B C D A B C D ..., so
   that the machine's load noise hits all of them:
   - `memory`: `runwire serve` (the embedded in-memory broker);
   - `redis`: `runwire serve --broker redis://...` (every event also written to Redis), the
     subscriber on that API node;
   - `redis+stream`: the same plus a `--role stream` node; one subscriber on each node, on
     the same events (the number users care about is the stream node's);
   - `redis+stream, no AOF`: the same on a Redis without its append-only file (no fsync per
     write): what the durability the tests and docs use costs a stream node's subscribers.
   `--runs` samples submitted one after another (the next once `run.finished` arrived). Per
   configuration: p50/p99 event latency and p50 sample -> `run.finished`.
2. Fan-out: `--subscribers` SSE subscribers of one session (`/v1/sessions/{sid}/events`),
   held by a separate client process (raw asyncio sockets, as fanout_clients.py does), on 1
   stream node or split over 2 (500 + 500); a burst of `--burst` samples (the events come
   faster than 1,000 subscribers can take them: the node's capacity), then `--paced` samples
   at one a second (what a viewer waits for a run's events). Prints deliveries/s (first to
   last delivery), p50/p99 latency, whether every subscriber got every event (counted per
   subscriber, in seq order, no duplicate), and the CPU seconds each process used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from array import array
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "scale"))

from bench_workers import cpu_s  # noqa: E402
from fanout_clients import http_request  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from workers_cluster import ServeProcess  # noqa: E402

from pipeline.demodata import write_demo_data  # noqa: E402
from pipeline.examples import example_text  # noqa: E402

POOL = 8
CONFIGS = ("memory", "redis", "redis+stream", "redis+stream, no AOF")
SID = "bench"
# The envelope's fields in encoding order (streaming.envelope.Envelope): time, then seq.
STAMP = re.compile(rb'"time":"([^"]+)","datacontenttype":"[^"]*","sessionid":"[^"]*","seq":(\d+)')


def wall(stamp: bytes | str, cache: dict[bytes | str, float]) -> float:
    """Seconds since the epoch of an envelope `time` (parsed once per distinct value)."""
    at = cache.get(stamp)
    if at is None:
        text = stamp.decode() if isinstance(stamp, bytes) else stamp
        at = cache[stamp] = datetime.fromisoformat(text).timestamp()
        if len(cache) > 100_000:  # bounded: a long burst never grows it without limit
            cache.clear()
    return at


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


# -- part 1: one follower per node, in this process ---------------------------------------------


class Follower:
    """Follows `/v1/events` on one node in a thread: per event its latency (ms) and, per run,
    when its `run.finished` arrived."""

    def __init__(self, url: str) -> None:
        self.latencies: list[float] = []
        self.finished: dict[str, float] = {}
        self.cond = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))
        self._url = url
        self._ready = threading.Event()
        self._cache: dict[bytes | str, float] = {}
        threading.Thread(target=self._run, daemon=True).start()
        if not self._ready.wait(30):
            raise SystemExit(f"no event stream from {url}")

    def _run(self) -> None:
        try:
            with self._client.stream("GET", f"{self._url}/v1/events",
                                     headers={"Accept": "text/event-stream"}) as response:  # fmt: skip
                self._ready.set()
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.time()
                    envelope = json.loads(line[5:])
                    with self.cond:
                        self.latencies.append((now - wall(envelope["time"], self._cache)) * 1e3)
                        if envelope["type"] == "run.finished":
                            self.finished[envelope["runid"]] = time.perf_counter()
                            self.cond.notify_all()
        except httpx.HTTPError:
            pass  # the node was stopped

    def reset(self) -> None:
        with self.cond:
            self.latencies = []

    def wait(self, run_id: str, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while run_id not in self.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"run {run_id} did not finish on {self._url}")
                self.cond.wait(left)
            return self.finished[run_id]

    def close(self) -> None:
        self._client.close()


class Cluster:
    """Redis (optional), one API node, `stream_nodes` stream nodes, one session ready to run."""

    def __init__(self, root: Path, *, redis: bool, stream_nodes: int, aof: bool = True) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis", appendonly=aof) if redis else None
        self.api: ServeProcess | None = None
        self.streams: list[ServeProcess] = []
        self.stream_nodes = stream_nodes

    def start(self, queue_size: int) -> Cluster:
        extra: tuple[str, ...] = ("--queue-size", str(queue_size))
        if self.redis is not None:
            self.redis.start()
            extra += ("--broker", self.redis.url)
        self.api = ServeProcess(self.root / "data", extra_args=extra)
        self.api.start()
        for _ in range(self.stream_nodes):
            assert self.redis is not None
            node = ServeProcess(self.root / "data", extra_args=(
                "--role", "stream", "--broker", self.redis.url, "--api-url", self.api.url))  # fmt: skip
            node.start()
            self.streams.append(node)
        return self

    def stop(self) -> None:
        for node in self.streams:
            node.terminate()
        if self.api is not None and self.api.proc is not None:
            self.api.terminate()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def create_session(client: httpx.Client, background: Path, dark: Path) -> None:
    client.post("/sessions", json={"session_id": SID, "source_profile": "saxs",
                "pipeline": {"yaml_text": example_text("saxs")}}).raise_for_status()  # fmt: skip
    srcs = [{"ref": "background", "type": "hdf5", "location": str(background)},
            {"ref": "dark", "type": "hdf5", "location": str(dark)}]  # fmt: skip
    client.put(f"/sessions/{SID}/sources", json={"sources": srcs}).raise_for_status()


def submit(client: httpx.Client, frame: Path) -> str:
    answer = client.post(f"/sessions/{SID}/sample", json={"location": str(frame), "process": True})
    answer.raise_for_status()
    return str(answer.json()["run_id"])


def one_node_round(config: str, args: argparse.Namespace, frames: list[Path], background: Path,
                   dark: Path, into: dict[str, dict[str, list[float]]]) -> None:  # fmt: skip
    """One round of one configuration of part 1; results appended to `into[label]`."""
    root = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    cluster = Cluster(root, redis=config != "memory", stream_nodes=int("stream" in config),
                      aof="no AOF" not in config)  # fmt: skip
    followers: dict[str, Follower] = {}
    try:
        cluster.start(args.runs + 8)
        assert cluster.api is not None
        with cluster.api.client() as client:
            create_session(client, background, dark)
            followers["api"] = Follower(cluster.api.url)
            if cluster.streams:
                followers["stream"] = Follower(cluster.streams[0].url)
            warm = submit(client, frames[0])
            for f in followers.values():
                f.wait(warm)
            for f in followers.values():
                f.reset()
            turnaround: dict[str, list[float]] = {k: [] for k in followers}
            for i in range(args.runs):
                t0 = time.perf_counter()
                run_id = submit(client, frames[1 + i % (len(frames) - 1)])
                for k, f in followers.items():
                    turnaround[k].append((f.wait(run_id) - t0) * 1e3)
        for k, f in followers.items():
            label = {"memory": "memory", "redis": "redis, on the API node"}.get(config) or (
                f"{config}: on the {'API' if k == 'api' else 'stream'} node"
            )
            with f.cond:
                into.setdefault(label, {"lat": [], "turn": []})["lat"].extend(f.latencies)
            into[label]["turn"].extend(turnaround[k])
    finally:
        for f in followers.values():
            f.close()
        cluster.stop()


# -- part 2: many subscribers in a client process ---------------------------------------------


class Counter(asyncio.Protocol):
    """One SSE subscriber: sends the request, waits for `retry:`, then for each event of seq
    > `base` notes its latency; counts events, duplicates and seqs out of order."""

    def __init__(self, request: bytes, pool: Pool) -> None:
        self.request = request
        self.pool = pool
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pre = b""
        self.tail = b""
        self.count = 0
        self.seqs = array("q")  # every seq counted: the check against the API node's list
        self.last_seq = 0
        self.disorder = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.ready.done():
            self.pre += data
            at = self.pre.find(b"retry:")
            if at < 0:
                return
            data, self.pre = self.pre[at:], b""
            self.ready.set_result(None)
        buf = self.tail + data
        pos = 0
        pool = self.pool
        for m in STAMP.finditer(buf):
            pos = m.end()
            seq = int(m.group(2))
            if seq <= pool.base:
                continue
            if seq <= self.last_seq:
                self.disorder += 1
                continue
            self.last_seq = seq
            self.seqs.append(seq)
            self.count += 1
            pool.latencies.append((now - wall(m.group(1), pool.cache)) * 1e3)
            pool.first = min(pool.first, now)
            pool.last = max(pool.last, now)
        self.tail = buf[max(pos, len(buf) - 200) :]
        if self.last_seq >= pool.top:
            pool.check_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))
        self.pool.check_done()


class Pool:
    """The client process: `open` subscribers, `collect` once the burst is over."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.subs: list[Counter] = []
        self.latencies: list[float] = []
        self.cache: dict[bytes | str, float] = {}
        self.base = 0
        self.top = 1 << 62
        self.first = float("inf")
        self.last = 0.0
        self.done: asyncio.Event | None = None

    def check_done(self) -> None:
        if self.done is not None and all(s.closed or s.last_seq >= self.top for s in self.subs):
            self.done.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd, kwargs = await loop.run_in_executor(None, self.conn.recv)
            if cmd == "quit":
                self.conn.send(None)
                return
            self.conn.send(await getattr(self, cmd)(**kwargs))

    async def open(self, ports: list[int], n: int) -> int:
        loop = asyncio.get_running_loop()
        # A fresh measurement: nothing of the previous configuration's carries over.
        self.base, self.top, self.latencies = 1 << 62, 1 << 62, []  # nothing counts yet
        self.first, self.last, self.done = float("inf"), 0.0, asyncio.Event()

        async def connect(port: int) -> Counter:
            request, _ = http_request(f"/v1/sessions/{SID}/events", port, "sse")
            _, sub = await loop.create_connection(lambda: Counter(request, self), "127.0.0.1", port)
            await asyncio.wait_for(sub.ready, 60)
            return sub

        for start in range(0, n, 100):  # not all at once: the listen backlog is finite
            batch = range(start, min(n, start + 100))
            self.subs.extend(await asyncio.gather(*(connect(ports[i % len(ports)]) for i in batch)))
        return len(self.subs)

    async def set_base(self, base: int) -> int:
        """A new measurement: from now on count the events of seq > `base` (the ones the
        next runs publish)."""
        self.base, self.top, self.latencies = base, 1 << 62, []
        self.first, self.last, self.done = float("inf"), 0.0, asyncio.Event()
        return base

    async def collect(self, top: int, expected: int, wait_s: float) -> dict[str, Any]:
        """Wait until every subscriber has seq `top` (or `wait_s`), then count per subscriber
        the events of seq in (base, top]: `expected` each when nothing was lost."""
        assert self.done is not None
        self.top = top
        self.check_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), wait_s)
        counts = []
        for s in self.subs:
            seqs = np.frombuffer(s.seqs, np.int64)
            counts.append(int(np.count_nonzero((seqs > self.base) & (seqs <= top))))
        received = sum(counts)
        span = self.last - self.first
        return {
            "subscribers": len(self.subs),
            "received": received,
            "expected": expected * len(self.subs),
            "complete": sum(c == expected for c in counts),
            "short": sum(c < expected for c in counts),
            "closed": sum(s.closed for s in self.subs),
            "disorder": sum(s.disorder for s in self.subs),
            "rate": received / span if span > 0 else 0.0,
            "p50_ms": pct(self.latencies, 50),
            "p99_ms": pct(self.latencies, 99),
            "max_ms": max(self.latencies) if self.latencies else float("nan"),
        }

    async def close(self) -> int:
        for s in self.subs:
            s.transport.abort()
        self.subs = []
        return 0


def client_main(conn: Connection) -> None:
    """The client process's entry point."""
    asyncio.run(Pool(conn).run())


def call(conn: Connection, cmd: str, timeout: float = 600.0, **kwargs: Any) -> Any:
    conn.send((cmd, kwargs))
    if not conn.poll(timeout):
        raise SystemExit(f"client process did not answer {cmd}")
    return conn.recv()


class SessionEvents:
    """The reference: every event of the session as the API node published it (seq, type)."""

    def __init__(self, url: str) -> None:
        self.seqs: list[tuple[int, str, str | None]] = []
        self.cond = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))
        ready = threading.Event()

        def follow() -> None:
            try:
                with self._client.stream("GET", f"{url}/v1/sessions/{SID}/events",
                                         headers={"Accept": "text/event-stream"}) as response:  # fmt: skip
                    ready.set()
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            env = json.loads(line[5:])
                            with self.cond:
                                self.seqs.append((env["seq"], env["type"], env.get("runid")))
                                self.cond.notify_all()
            except httpx.HTTPError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        if not ready.wait(30):
            raise SystemExit("no session event stream on the API node")

    def wait_finished(self, run_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not run_ids <= {r for _, t, r in self.seqs if t == "run.finished"}:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit("the burst's runs did not all finish")
                self.cond.wait(left)

    def close(self) -> None:
        self._client.close()


def fanout(nodes: int, args: argparse.Namespace, frames: list[Path], background: Path,
           dark: Path, conn: Connection, client_pid: int | None) -> list[dict[str, Any]]:  # fmt: skip
    """The burst, then the paced runs, on one deployment with `nodes` stream nodes."""
    root = Path(tempfile.mkdtemp(prefix="bench-redis-fanout-"))
    cluster = Cluster(root, redis=True, stream_nodes=nodes)
    ref: SessionEvents | None = None
    try:
        cluster.start(args.burst + 8)
        assert cluster.api is not None
        with cluster.api.client() as client:
            create_session(client, background, dark)
            ref = SessionEvents(cluster.api.url)
            warm = submit(client, frames[0])
            ref.wait_finished({warm}, 120)
            ports = [s.port for s in cluster.streams]
            call(conn, "open", ports=ports, n=args.subscribers)
            pids = {"api": cluster.api.proc.pid if cluster.api.proc else None,
                    "redis": cluster.redis.proc.pid if cluster.redis and cluster.redis.proc else None,
                    "clients": client_pid}  # fmt: skip
            pids.update({f"stream{i + 1}": n.proc.pid if n.proc else None
                         for i, n in enumerate(cluster.streams)})  # fmt: skip
            results = []
            for pattern in ("burst", "paced"):
                # Every subscriber is live now: what the API node publishes from here on, each
                # of them must get (an event published while they connected may not reach them).
                with ref.cond:
                    base = max(s for s, _, _ in ref.seqs)
                call(conn, "set_base", base=base)
                cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                if pattern == "burst":
                    runs = {submit(client, frames[1 + i % (len(frames) - 1)])
                            for i in range(args.burst)}  # fmt: skip
                    ref.wait_finished(runs, 600)
                else:  # one run a second, as a beamline takes samples
                    runs = set()
                    for i in range(args.paced):
                        run_id = submit(client, frames[1 + i % (len(frames) - 1)])
                        runs.add(run_id)
                        ref.wait_finished({run_id}, 120)
                        time.sleep(max(0.0, t0 + i + 1 - time.perf_counter()))  # the pace
                with ref.cond:  # the runs' events: from `base` to their last `run.finished`
                    top = max(s for s, t, r in ref.seqs if t == "run.finished" and r in runs)
                    expected = sum(base < s <= top for s, _, _ in ref.seqs)
                result: dict[str, Any] = call(conn, "collect", top=top, expected=expected,
                                              wait_s=120.0)  # fmt: skip
                result.update(pattern=pattern, runs=len(runs), events=expected,
                              load=(load0, os.getloadavg()[0]),
                              cpu={k: round(cpu_s(pid) - cpu0[k], 1) for k, pid in pids.items()},
                              seconds=time.perf_counter() - t0)  # fmt: skip
                results.append(result)
            call(conn, "close")
            return results
    finally:
        if ref is not None:
            ref.close()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and subscribers")
    parser.add_argument("--rounds", type=int, default=3, help="A B C D rounds of part 1")
    parser.add_argument("--runs", type=int, default=30, help="sequential runs per round")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=20, help="samples in the fan-out burst")
    parser.add_argument("--paced", type=int, default=10, help="fan-out samples at one a second")
    parser.add_argument("--shape", type=int, default=256)
    parser.add_argument("--skip", choices=("latency", "fanout"), help="leave one part out")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.runs, args.subscribers, args.burst, args.paced = 1, 8, 200, 5, 3
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    data = Path(tempfile.mkdtemp(prefix="bench-redis-frames-"))
    started = time.perf_counter()
    try:
        files = write_demo_data(data, count=POOL, shape=(args.shape, args.shape), seed=1)
        *frames, background, dark = files
        load = os.getloadavg()
        print(f"# {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
              f"Python {platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f}; saxs example on {args.shape}x{args.shape} frames")  # fmt: skip
        if args.skip != "latency":
            print(f"\n## 1. publish -> receive on one node ({args.rounds} rounds x {args.runs} "
                  "sequential runs per configuration, interleaved)")  # fmt: skip
            into: dict[str, dict[str, list[float]]] = {}
            for _ in range(args.rounds):
                for config in CONFIGS:
                    one_node_round(config, args, frames, background, dark, into)
            base = statistics.median(into["memory"]["lat"])
            print(f"{'subscriber':<40}{'events':>7}{'p50 ms':>8}{'p99 ms':>8}{'vs mem':>8}"
                  f"{'run p50 ms':>11}")  # fmt: skip
            for label, r in into.items():
                p50 = statistics.median(r["lat"])
                print(f"{label:<40}{len(r['lat']):>7}{p50:>8.2f}{pct(r['lat'], 99):>8.2f}"
                      f"{p50 - base:>+8.2f}{statistics.median(r['turn']):>11.1f}")  # fmt: skip
        if args.skip != "fanout":
            print(f"\n## 2. fan-out: {args.subscribers} SSE subscribers of one session on stream "
                  f"nodes; a burst of {args.burst} samples, then {args.paced} at one a second")  # fmt: skip
            parent, child = mp.get_context("spawn").Pipe()
            proc = mp.get_context("spawn").Process(target=client_main, args=(child,), daemon=True)
            proc.start()
            try:
                print(f"{'stream nodes, runs':<24}{'events':>7}{'deliveries':>11}{'per s':>8}"
                      f"{'p50 ms':>8}{'p99 ms':>9}{'max ms':>8}  nothing lost?")  # fmt: skip
                for nodes in (1, 2):
                    for r in fanout(nodes, args, frames, background, dark, parent, proc.pid):
                        lost = r["expected"] - r["received"]
                        verdict = ("yes" if lost == 0 and not r["disorder"] else
                                   f"NO: {lost} missing, {r['short']} short, {r['closed']} "
                                   f"closed, {r['disorder']} out of order")  # fmt: skip
                        what = (
                            "a burst" if r["pattern"] == "burst" else "1/s"
                        ) + f" of {r['runs']}"
                        print(f"{f'{nodes}, {what}':<24}{r['events']:>7}{r['received']:>11}"
                              f"{r['rate']:>8.0f}{r['p50_ms']:>8.1f}{r['p99_ms']:>9.1f}"
                              f"{r['max_ms']:>8.0f}  {verdict} ({r['complete']}/"
                              f"{r['subscribers']} complete; {r['seconds']:.1f} s, load "
                              f"{r['load'][0]:.2f} -> {r['load'][1]:.2f}; CPU s {r['cpu']})")  # fmt: skip
                call(parent, "quit", timeout=30)
            finally:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
        load = os.getloadavg()
        print(f"\n# done in {time.perf_counter() - started:.0f} s; load average {load[0]:.2f} "
              f"{load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
