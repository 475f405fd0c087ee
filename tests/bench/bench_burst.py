"""The instrument workload through the HTTP API of a real `runwire serve` process (issue 8).

1. **Burst**: N distinct samples (default 200, 1024x1024) posted to one session with
   `{"process": true}` as fast as the server answers; frames/s from the first POST to the last
   `run.finished` (over SSE). Every run must succeed and name its own sample: N runs, N samples.
2. **20 sessions at once**: each round posts one new sample to each of 20 sessions at the same
   time; latency from each POST to its `run.finished`; p50/p99 over the rounds (after a
   warm-up round of full runs).
3. **Churn**: cycles of "create 20 sessions, 3 runs each, delete them"; the server's VmRSS
   (`/proc/<pid>/status`) fresh and after each cycle.
4. **Service overhead** (`--only overhead`): the burst with a one-step JSON pipeline
   (`json.read`: the pipeline costs ~nothing), `--count` distinct JSON samples: ms per run.
5. **pyFAI** (if importable; `pip install -e '.[bench]'`): the plain loop of h5py read +
   `AzimuthalIntegrator.integrate1d(method=("no", "histogram", "cython"))` over the same frames,
   in this process: the frames/s an instrument gets without any service.

Usage: `.venv/bin/python tests/bench/bench_burst.py [--frame 1024] [--count 200] [--rounds 10]
[--cycles 4] [--workers 2]`. The server runs with `--queue-size` large enough for the burst
(the default 64 would answer 429 past 64 waiting runs). Prints one line per figure. Goals
(contract section 9b): burst >= 40 frames/s at 1 Mpx on 2 cores; 20 sessions p99 <= 1 s; RSS
after later churn cycles within 1.5x of the first cycle's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np

from pipeline.demodata import demo_geometry, write_demo_data, write_sample_file
from pipeline.examples import example_text

SESSIONS = 20


# -- the server ---------------------------------------------------------------------------------


@contextmanager
def runwire_serve(
    data_dir: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """`runwire serve` as a child process on a free port; yields (base URL, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir)]
    argv += ["--port", str(port), "--log-level", "warning", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    env.update(env_extra or {})
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    listening = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            if "Uvicorn running on" in line:
                listening.set()
            elif "error" in line.lower():
                sys.stderr.write("server: " + line)
        listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            # --log-level warning hides uvicorn's banner: probe /health instead.
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                listening.wait(0.1)
        else:
            raise RuntimeError("runwire serve did not start")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- the client ---------------------------------------------------------------------------------


class FinishedWatcher:
    """Follows `/v1/events` (every session) and records when each `run.finished` arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.data: dict[str, dict[str, Any]] = {}
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    async def follow(self, client: httpx.AsyncClient) -> None:
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", "/events", headers=headers, timeout=None) as resp:
            resp.raise_for_status()
            self.ready.set()
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or '"run.finished"' not in line:
                    continue
                event: dict[str, Any] = json.loads(line[5:])
                if event["type"] == "run.finished":
                    now = time.perf_counter()
                    async with self._changed:
                        self.arrived[event["runid"]] = now
                        self.data[event["runid"]] = event["data"]
                        self._changed.notify_all()

    async def wait(self, run_ids: list[str], timeout: float = 600.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: all(r in self.arrived for r in run_ids))
        for run_id in run_ids:
            if self.data[run_id]["status"] != "succeeded":
                raise RuntimeError(f"run {run_id}: {self.data[run_id]}")


async def make_session(client: httpx.AsyncClient, sid: str, data: Path) -> None:
    body = {"session_id": sid, "pipeline": {"yaml_text": example_text("saxs")}}
    (await client.post("/sessions", json=body)).raise_for_status()
    sources = [
        {"ref": "background", "type": "hdf5", "location": str(data / "background.h5")},
        {"ref": "dark", "type": "hdf5", "location": str(data / "dark.h5")},
    ]
    (await client.put(f"/sessions/{sid}/sources", json={"sources": sources})).raise_for_status()


async def post_sample(client: httpx.AsyncClient, sid: str, path: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = await client.post(f"/sessions/{sid}/sample", json={"location": str(path), "process": True})
    if r.status_code != 202:
        raise RuntimeError(f"{r.status_code}: {r.text}")
    return r.json()["run_id"], t0


async def burst(client: httpx.AsyncClient, watcher: FinishedWatcher, samples: list[Path]) -> None:
    data = samples[0].parent
    await make_session(client, "burst", data)
    warm, _ = await post_sample(client, "burst", data / "background.h5")  # first run: full
    await watcher.wait([warm])
    t0 = time.perf_counter()
    run_ids = [(await post_sample(client, "burst", path))[0] for path in samples]
    accepted = time.perf_counter() - t0
    await watcher.wait(run_ids)
    seconds = max(watcher.arrived[r] for r in run_ids) - t0
    reduced = {watcher.data[r]["sample"]["location"] for r in run_ids}
    assert reduced == {str(p) for p in samples}, "every sample reduced, each by its own run"
    page = (await client.get("/sessions/burst/runs", params={"limit": 1000})).json()["runs"]
    modes = [r["effective_mode"] for r in page if r["run_id"] in set(run_ids)]
    in_worker = statistics.mean(watcher.data[r]["elapsed_s"] for r in run_ids) * 1000
    print(
        f"burst, one session: {len(samples) / seconds:6.1f} frames/s "
        f"({len(samples)} distinct samples, all reduced, in {seconds:.2f} s; "
        f"202s took {accepted:.2f} s; {modes.count('partial')} partial runs); mean run "
        f"{in_worker:.1f} ms in its worker, {seconds / len(samples) * 1000 - in_worker:.1f} ms "
        "more per run through the service"
    )


async def many_sessions(
    client: httpx.AsyncClient, watcher: FinishedWatcher, samples: list[Path], rounds: int
) -> None:
    data = samples[0].parent
    sids = [f"s{k:02d}" for k in range(SESSIONS)]
    for sid in sids:
        await make_session(client, sid, data)
    latencies: list[float] = []
    for rnd in range(rounds + 1):
        posted = await asyncio.gather(
            *(
                post_sample(client, sid, samples[(rnd * SESSIONS + k) % len(samples)])
                for k, sid in enumerate(sids)
            )
        )
        await watcher.wait([run_id for run_id, _ in posted])
        if rnd:  # round 0 warms every session's cache (full runs)
            latencies += [watcher.arrived[run_id] - t0 for run_id, t0 in posted]
    ms = sorted(v * 1000 for v in latencies)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(
        f"{SESSIONS} sessions at once, sample -> run.finished: median "
        f"{statistics.median(ms):6.0f} ms  p99 {p99:6.0f} ms  max {ms[-1]:6.0f} ms "
        f"(n={len(ms)}, {rounds} rounds of {SESSIONS} samples posted together)"
    )
    for sid in sids:
        (await client.request("DELETE", f"/sessions/{sid}", json={})).raise_for_status()


async def churn(
    client: httpx.AsyncClient, watcher: FinishedWatcher, samples: list[Path], cycles: int, pid: int
) -> None:
    data = samples[0].parent
    rss = [vm_rss_mib(pid)]
    for cycle in range(cycles):
        sids = [f"churn{cycle}-{k:02d}" for k in range(SESSIONS)]
        for sid in sids:
            await make_session(client, sid, data)
        run_ids = []
        for index in range(3):
            for k, sid in enumerate(sids):
                run_id, _ = await post_sample(client, sid, samples[(k + index) % len(samples)])
                run_ids.append(run_id)
        await watcher.wait(run_ids)
        for sid in sids:
            (await client.request("DELETE", f"/sessions/{sid}", json={})).raise_for_status()
        rss.append(vm_rss_mib(pid))
    figures = "  ".join(f"{v:.0f}" for v in rss)
    print(
        f"RSS over churn ({SESSIONS} sessions x 3 runs, deleted, per cycle), MiB: "
        f"before {rss[0]:.0f}, after each cycle {figures.split('  ', 1)[1]}; "
        f"last/first cycle {rss[-1] / rss[1]:.2f}x"
    )


TINY = """
name: tiny
sources:
  sample: {required: true}
steps:
  - id: read
    use: json.read
    params: {source: sample}
    outputs: {value: sample.value}
"""


async def overhead(client: httpx.AsyncClient, watcher: FinishedWatcher, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="runwire-tiny-") as tmp:
        paths = []
        for k in range(count):
            path = Path(tmp) / f"s{k:04d}.json"
            path.write_text(json.dumps({"value": k}))
            paths.append(path)
        body = {"session_id": "tiny", "pipeline": {"yaml_text": TINY}}
        (await client.post("/sessions", json=body)).raise_for_status()
        t0 = time.perf_counter()
        run_ids = []
        for path in paths:
            sample = {"location": str(path), "type": "json", "process": True}
            r = await client.post("/sessions/tiny/sample", json=sample)
            r.raise_for_status()
            run_ids.append(r.json()["run_id"])
        accepted = time.perf_counter() - t0
        await watcher.wait(run_ids)
        seconds = max(watcher.arrived[r] for r in run_ids) - t0
    print(
        f"service overhead, one-step JSON pipeline: {seconds / count * 1000:.1f} ms per run "
        f"({count / seconds:.0f} runs/s; 202s {accepted / count * 1000:.1f} ms each)"
    )


# -- pyFAI --------------------------------------------------------------------------------------


def pyfai_loop(samples: list[Path], shape: tuple[int, int]) -> None:
    try:
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    except ImportError:
        try:
            from pyFAI.azimuthalIntegrator import AzimuthalIntegrator  # older pyFAI
        except ImportError:
            print("pyFAI: not installed (pip install -e '.[bench]')")
            return
    g = demo_geometry(shape)
    ai = AzimuthalIntegrator(
        dist=g["distance_m"],
        poni1=g["beam_center_y_px"] * g["pixel_size_y_m"],
        poni2=g["beam_center_x_px"] * g["pixel_size_x_m"],
        pixel1=g["pixel_size_y_m"],
        pixel2=g["pixel_size_x_m"],
        wavelength=g["wavelength_nm"] * 1e-9,
    )

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(path, "r") as f:
            frame = f["/entry/data/data"][()]
            mask = f["/entry/instrument/detector/pixel_mask"][()]
        return frame, mask

    method = ("no", "histogram", "cython")
    frame, mask = read(samples[0])
    ai.integrate1d(frame, 200, mask=mask, method=method, unit="q_nm^-1")  # warm-up (LUTs)
    t0 = time.perf_counter()
    for path in samples:
        frame, mask = read(path)
        ai.integrate1d(frame, 200, mask=mask, method=method, unit="q_nm^-1")
    seconds = time.perf_counter() - t0
    print(
        f"pyFAI read + integrate1d{method}, one thread: {len(samples) / seconds:6.1f} frames/s "
        f"({len(samples)} frames)"
    )


# -- main ---------------------------------------------------------------------------------------


def write_samples(data: Path, count: int, shape: tuple[int, int]) -> list[Path]:
    """Demo files: background, dark and `count` distinct samples (in parallel processes)."""
    write_demo_data(data, count=1, shape=shape)
    paths = [data / f"sample_{k:04d}.h5" for k in range(1, count + 1)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_write_one, [(p, k, shape) for k, p in enumerate(paths, start=1)]))
    return paths


def _write_one(args: tuple[Path, int, tuple[int, int]]) -> None:
    path, index, shape = args
    if not path.exists():
        write_sample_file(path, index, shape=shape)


async def one_phase(
    phase: str, url: str, pid: int, samples: list[Path], args: argparse.Namespace
) -> None:
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=120.0) as client:
        watcher = FinishedWatcher()
        follower = asyncio.create_task(watcher.follow(client))
        await watcher.ready.wait()
        if phase == "burst":
            await burst(client, watcher, samples)
        elif phase == "overhead":
            await overhead(client, watcher, args.count)
        elif phase == "sessions":
            await many_sessions(client, watcher, samples, args.rounds)
        else:
            await churn(client, watcher, samples, args.cycles, pid)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await follower


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frame", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--count", type=int, default=200, help="samples in the burst")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 20 sessions")
    parser.add_argument("--cycles", type=int, default=4, help="churn cycles")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated: burst,sessions,churn,pyfai")
    parser.add_argument("--only", choices=("overhead",), help="only the service-overhead burst")
    parser.add_argument(
        "--read-ahead", choices=("on", "off", "ab"), default="on",
        help="burst with the next run's frames read ahead (on), without (off), or both "
        "alternated off/on/off/on on fresh servers (ab)",
    )  # fmt: skip
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    shape = (args.frame, args.frame)
    if args.only == "overhead":
        extra = ["--queue-size", str(max(64, args.count + 8)), "--workers", str(args.workers)]
        with (
            tempfile.TemporaryDirectory(prefix="runwire-burst-") as tmp,
            runwire_serve(Path(tmp) / "data", *extra) as (url, pid),
        ):
            asyncio.run(one_phase("overhead", url, pid, [], args))
        return
    with tempfile.TemporaryDirectory(prefix="runwire-burst-") as tmp:
        root = Path(tmp)
        data = root / "frames"
        t0 = time.perf_counter()
        samples = write_samples(data, args.count, shape)
        print(
            f"wrote {len(samples)} samples {args.frame}x{args.frame} in "
            f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores"
        )
        if "pyfai" not in skip:
            pyfai_loop(samples, shape)
        extra = ["--queue-size", str(max(64, args.count + 8)), "--workers", str(args.workers)]
        phases = [p for p in ("burst", "sessions", "churn") if p not in skip]
        settings = {"on": ["1"], "off": ["0"], "ab": ["0", "1", "0", "1"]}[args.read_ahead]
        for phase in phases:
            for n, ahead in enumerate(settings if phase == "burst" else ["1"]):
                if phase == "burst":
                    print(f"burst, read-ahead {'on' if ahead == '1' else 'off'}:")
                # Each phase on a fresh server (churn's first figure is a fresh server's RSS).
                env = {"RUNWIRE_READ_AHEAD": ahead}
                with runwire_serve(root / f"data-{phase}{n}", *extra, env_extra=env) as (url, pid):
                    asyncio.run(one_phase(phase, url, pid, samples, args))


if __name__ == "__main__":
    main()
