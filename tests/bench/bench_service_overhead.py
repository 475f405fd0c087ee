"""What the service adds to a partial run, run by hand:
`python tests/bench/bench_service_overhead.py [--frame 1024] [--repeats 15]`.

For each new sample file, in turn: the partial run in-process (`ProcessingRunner` with a warm
`IncrementalCache`), then the same sample through a real server (a `runwire serve` child
process; `--server thread`: uvicorn in a thread of this process, as in `bench_service.py`), timed from sending `POST /v1/sessions/{sid}/sample {"process": true}` to
receiving that run's `run.finished` over SSE. Prints both medians and the median of the
per-sample differences (goal: <= 5 ms), split into what the run costs more in its worker thread
(its `elapsed_s` minus the in-process run) and what lies around it (`POST` to `run.finished`
minus `elapsed_s`: acceptance, commits, thread hops, events, the SSE hop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_burst import runwire_serve
from bench_service import FinishedWatcher, serve

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec
from service.runtime.config import Config


async def compare(
    client: httpx.AsyncClient, data: Path, repeats: int
) -> list[tuple[float, float, float]]:
    samples = sorted(await asyncio.to_thread(lambda: list(data.glob("sample_*.h5"))))
    body = {"session_id": "saxs", "pipeline": {"yaml_text": example_text("saxs")},
            "source_profile": "saxs"}  # fmt: skip
    (await client.post("/sessions", json=body)).raise_for_status()
    fixed = [
        {"ref": "background", "type": "hdf5", "location": str(data / "background.h5")},
        {"ref": "dark", "type": "hdf5", "location": str(data / "dark.h5")},
    ]
    (await client.put("/sessions/saxs/sources", json={"sources": fixed})).raise_for_status()
    watcher = FinishedWatcher()
    follower = asyncio.create_task(watcher.follow(client, "saxs"))
    await watcher.ready.wait()

    spec = load_pipeline_text(example_text("saxs"))
    cache = IncrementalCache()

    def in_process(path: Path, out: Path) -> float:
        sources = {
            "sample": SourceSpec(type="hdf5", location=str(path)),
            "background": SourceSpec(type="hdf5", location=str(data / "background.h5")),
            "dark": SourceSpec(type="hdf5", location=str(data / "dark.h5")),
        }
        t0 = time.perf_counter()
        result = ProcessingRunner(spec, cache=cache, artifacts_dir=out).run(sources)
        elapsed = time.perf_counter() - t0
        assert result.exit_code == 0, result.error
        return elapsed

    async def served(path: Path) -> tuple[float, float]:
        """(POST -> run.finished, the run's elapsed_s in its worker thread)."""
        t0 = time.perf_counter()
        r = await client.post(
            "/sessions/saxs/sample", json={"location": str(path), "process": True}
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        return await watcher.wait(run_id) - t0, watcher.elapsed[run_id]

    in_process(samples[0], data / "warm")  # warm both: imports, first full runs
    await served(samples[0])
    pairs = []
    for i in range(1, repeats + 1):
        local = in_process(samples[i], data / f"local{i}")
        pairs.append((local, *await served(samples[i])))
    follower.cancel()
    return pairs


@contextmanager
def _base_url(server: Any) -> Iterator[str]:
    with server as (url, _pid):
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--server", choices=("process", "thread"), default="process",
        help="a `runwire serve` child process (default), or uvicorn in a thread of this process "
        "(then the client and the in-process runs share the server's GIL)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runwire-bench-") as tmp:
        root = Path(tmp)
        data = root / "frames"
        write_demo_data(data, count=args.repeats + 1, shape=(args.frame, args.frame))
        if args.server == "thread":
            server = serve(Config(data_dir=root / "data", workers=2))
        else:
            server = _base_url(runwire_serve(root / "data", "--workers", "2"))
        with server as base_url:

            async def run() -> list[tuple[float, float, float]]:
                async with httpx.AsyncClient(base_url=base_url + "/v1", timeout=60.0) as client:
                    return await compare(client, data, args.repeats)

            pairs = asyncio.run(run())
    local = statistics.median(p[0] * 1000 for p in pairs)
    served = statistics.median(p[1] * 1000 for p in pairs)
    added = statistics.median((s - loc) * 1000 for loc, s, _ in pairs)
    in_worker = statistics.median((w - loc) * 1000 for loc, _, w in pairs)
    around = statistics.median((s - w) * 1000 for _, s, w in pairs)
    size = f"{args.frame}x{args.frame}"
    print(f"partial run {size}: in-process {local:.1f} ms, sample -> run.finished {served:.1f} ms "
          f"(medians of {len(pairs)}); service adds {added:.1f} ms median (goal <= 5)")  # fmt: skip
    print(
        f"  of which: the run in its worker thread minus in-process {in_worker:.1f} ms; "
        f"POST -> run.finished minus the run's elapsed_s {around:.1f} ms (medians)"
    )


if __name__ == "__main__":
    main()
