"""Runs/s on `runwire worker` processes vs in-process, run by hand:
`python tests/bench/bench_workers.py [--runs 200] [--sessions 8] [--workers 1,2,4]`.

Real processes on this machine: `redis-server` (append-only, fsync always, as in the tests),
one `runwire serve`, and for the remote configurations `runwire worker`s (one thread each).
Each configuration gets a fresh data directory and Redis, `--sessions` sessions of the bundled
saxs pipeline (1024x1024 frames, background and dark), a warm-up run per session (full), then
`--runs` submissions of a new sample each (`POST /sample` with `process: true`, round-robin
over the sessions; a pool of 16 distinct frames, so that a session's sample always differs from
its previous one: each run is partial). Submitted as a burst (the queue holds them all);
measured from the first submit to the last `run.finished` seen on `GET /v1/events`:

- runs/s = runs / that time;
- p50/p99 sample -> `run.finished`: from the submit's answer to the run's terminal event (in a
  burst this is mostly time spent queued behind the session's earlier samples).

Configurations: `local` (the embedded default: `--workers 2` threads in the API process) and
`N workers` (`--runs workers`, N `runwire worker` processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "scale"))

from redis_server import RedisServer  # noqa: E402
from workers_cluster import ServeProcess, WorkerProcess  # noqa: E402

from pipeline.demodata import write_demo_data  # noqa: E402
from pipeline.examples import example_text  # noqa: E402

POOL = 16


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Finished:
    """Follows `/v1/events` and notes when each run's `run.finished` arrived."""

    def __init__(self, url: str) -> None:
        self.at: dict[str, float] = {}
        self.cond = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))
        self._url = url
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(30)

    def _run(self) -> None:
        with self._client.stream("GET", f"{self._url}/v1/events",
                                 headers={"Accept": "text/event-stream"}) as response:  # fmt: skip
            self._ready.set()
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "run.finished":
                    run_id = json.loads(line[5:]).get("runid")
                    with self.cond:
                        self.at[run_id] = time.perf_counter()
                        self.cond.notify_all()

    def wait(self, run_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(r in self.at for r in run_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"only {sum(r in self.at for r in run_ids)} runs finished")
                self.cond.wait(left)


def one(config: str, n_workers: int, args: argparse.Namespace, frames: list[Path],
        background: Path, dark: Path) -> dict[str, Any]:  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    redis = RedisServer(root / "redis")
    redis.start()
    extra = ("--queue-size", str(args.runs + args.sessions + 8))
    if n_workers:
        extra += ("--broker", redis.url, "--runs", "workers")
    api = ServeProcess(root / "data", extra_args=extra)
    api.start()
    workers = [WorkerProcess(root / "data", redis.url, f"w{i}").start() for i in range(n_workers)]
    try:
        with api.client() as client:
            finished = Finished(api.url)
            sessions = [f"s{i}" for i in range(args.sessions)]
            warm = []
            for sid in sessions:
                client.post("/sessions", json={"session_id": sid, "source_profile": "saxs",
                            "pipeline": {"yaml_text": example_text("saxs")}}).raise_for_status()  # fmt: skip
                srcs = [{"ref": "background", "type": "hdf5", "location": str(background)},
                        {"ref": "dark", "type": "hdf5", "location": str(dark)}]  # fmt: skip
                client.put(f"/sessions/{sid}/sources", json={"sources": srcs}).raise_for_status()
                body = {"location": str(frames[0]), "process": True}
                warm.append(client.post(f"/sessions/{sid}/sample", json=body).json()["run_id"])
            finished.wait(warm, 300)
            pids = {
                "api": api.proc.pid if api.proc else None,
                "redis": redis.proc.pid if redis.proc else None,
            }
            pids.update({w.name: w.proc.pid if w.proc else None for w in workers})
            pids["client"] = os.getpid()  # this process: the POSTs and the SSE follower
            cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
            submitted: dict[str, float] = {}
            t0 = time.perf_counter()
            for i in range(args.runs):
                sid = sessions[i % len(sessions)]
                frame = frames[1 + (i // len(sessions)) % (len(frames) - 1)]
                answer = client.post(f"/sessions/{sid}/sample",
                                     json={"location": str(frame), "process": True})  # fmt: skip
                answer.raise_for_status()
                submitted[answer.json()["run_id"]] = time.perf_counter()
            finished.wait(list(submitted), 1800)
            elapsed = max(finished.at[r] for r in submitted) - t0
            cpu = {k: cpu_s(pid) - cpu0[k] for k, pid in pids.items()}
            latencies = sorted((finished.at[r] - t) * 1000 for r, t in submitted.items())
            runs = [client.get(f"/runs/{r}").json() for r in submitted]
            modes = {r["effective_mode"] for r in runs}
            per_worker: dict[str, int] = {}
            for r in runs:
                per_worker[r["worker"] or "local"] = per_worker.get(r["worker"] or "local", 0) + 1
    finally:
        for w in workers:
            w.terminate()
        api.terminate()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "config": config,
        "runs_per_s": args.runs / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "modes": sorted(m for m in modes if m),
        "per_worker": per_worker,
        "cpu": {k: round(v, 1) for k, v in cpu.items()},
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4", help="worker-process counts to try")
    parser.add_argument("--shape", type=int, default=1024)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-workers-frames-"))
    try:
        files = write_demo_data(data, count=POOL, shape=(args.shape, args.shape), seed=1)
        *frames, background, dark = files
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}; {args.runs} runs over {args.sessions} "
              f"sessions, {args.shape}x{args.shape} frames")  # fmt: skip
        results = [one("local (2 threads)", 0, args, frames, background, dark)]
        for n in (int(x) for x in args.workers.split(",") if x):
            results.append(one(f"{n} worker{'s' if n > 1 else ''}", n, args, frames,
                               background, dark))  # fmt: skip
        base = results[0]["runs_per_s"]
        print(f"{'config':<20}{'runs/s':>8}{'x local':>9}{'p50 ms':>9}{'p99 ms':>9}  modes")
        # CPU per run, every process (the client included): what the 2 cores must supply.
        for r in results:
            print(f"{r['config']:<20}{r['runs_per_s']:>8.1f}{r['runs_per_s'] / base:>9.2f}"
                  f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}  {','.join(r['modes'])}  "
                  f"runs per worker {r['per_worker']}, CPU s {r['cpu']} in {r['elapsed']:.1f} s, "
                  f"{sum(r['cpu'].values()) / args.runs * 1000:.1f} ms CPU per run")  # fmt: skip
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
