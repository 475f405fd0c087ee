"""Pipeline benchmarks, run by hand: `python tests/bench/bench_pipeline.py [--quick]`.

Prints:
- per-step orchestration overhead for 1,000 no-op steps (median of repeats), plain and with an
  observer collecting every event (goals: <= 5 us and <= 8 us per step);
- with an incremental cache, the same steps all reused (the partial-run skip path);
- when `pipeline.demodata` and the `saxs` example exist: the 1024x1024 reduction, full, and
  incremental after a new sample file (goals: <= 300 ms and <= 60 ms).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.composite import Pipeline
from pipeline.incremental import IncrementalCache
from pipeline.observer import RunObserver
from pipeline.runner import ProcessingRunner, RunResult
from pipeline.step import SourceSpec, Step, StepContext


class Noop(Step):
    name = "bench.noop"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"out": None}


class Collect(RunObserver):
    """Collects every notification, as an event-publishing observer would."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_step_started(self, step_id: str) -> None:
        self.events.append(("started", step_id))

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        self.events.append(("finished", step_id, status, duration_s, error))

    def on_run_finished(self, result: RunResult) -> None:
        self.events.append(("run", result.status))


def median_us_per_step(run: Callable[[], Any], steps: int, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t0) / 1000 / steps)
    return statistics.median(times)


def bench_overhead(n: int, repeats: int) -> None:
    pipeline = Pipeline("bench", [Noop(f"s{i}", outputs={"out": f"k{i}"}) for i in range(n)])
    plain = ProcessingRunner(pipeline)
    print(
        f"no-op steps, plain:           {median_us_per_step(lambda: plain.run({}), n, repeats):6.2f} us/step  (goal <= 5)"
    )

    def observed() -> None:
        ProcessingRunner(pipeline, observers=[Collect()]).run({})

    observer_runner = ProcessingRunner(pipeline, observers=[Collect()])
    print(
        f"no-op steps, event observer:  {median_us_per_step(lambda: observer_runner.run({}), n, repeats):6.2f} us/step  (goal <= 8)"
    )
    print(f"  incl. building the runner:  {median_us_per_step(observed, n, repeats):6.2f} us/step")
    cache = IncrementalCache()
    cached = ProcessingRunner(pipeline, cache=cache)
    cached.run({})
    print(
        f"no-op steps, all reused:      {median_us_per_step(lambda: cached.run({}), n, repeats):6.2f} us/step  (partial run, cache hit)"
    )


def bench_saxs(repeats: int, shape: tuple[int, int]) -> None:
    try:
        from pipeline.demodata import write_demo_data
        from pipeline.examples import example_text
        from pipeline.loader import load_pipeline_text
    except ImportError:
        print("saxs: pipeline.demodata or the example is missing; skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_demo_data(folder, count=repeats + 1, shape=shape, seed=0)
        spec = load_pipeline_text(example_text("saxs"))

        def sources(i: int) -> dict[str, SourceSpec]:
            return {
                "sample": SourceSpec(type="hdf5", location=str(folder / f"sample_{i:04d}.h5")),
                "background": SourceSpec(type="hdf5", location=str(folder / "background.h5")),
                "dark": SourceSpec(type="hdf5", location=str(folder / "dark.h5")),
            }

        full_ms, inc_ms = [], []
        for i in range(1, repeats + 1):
            out = folder / f"full{i}"
            t0 = time.perf_counter()
            result = ProcessingRunner(spec, artifacts_dir=out).run(sources(i))
            full_ms.append((time.perf_counter() - t0) * 1000)
            assert result.status == "succeeded", result.error
        cache = IncrementalCache()
        ProcessingRunner(spec, cache=cache, artifacts_dir=folder / "warm").run(sources(1))
        skipped: list[str] = []
        for i in range(2, repeats + 2):
            t0 = time.perf_counter()
            result = ProcessingRunner(spec, cache=cache, artifacts_dir=folder / f"inc{i}").run(
                sources(i)
            )
            inc_ms.append((time.perf_counter() - t0) * 1000)
            assert result.status == "succeeded", result.error
            skipped = result.skipped_steps
        h, w = shape
        print(
            f"saxs {h}x{w}, full run:        {statistics.median(full_ms):7.1f} ms median of {repeats}  (goal <= 300)"
        )
        print(
            f"saxs {h}x{w}, new sample file: {statistics.median(inc_ms):7.1f} ms median of {repeats}  (goal <= 60)"
        )
        print(f"  reused steps: {', '.join(skipped)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 256x256 frames")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or platform.system()}"
    )
    bench_overhead(1000, 5 if args.quick else 15)
    bench_saxs(2 if args.quick else 5, (256, 256) if args.quick else (1024, 1024))


if __name__ == "__main__":
    main()
