"""`runwire serve --demo`: a simulated instrument feeding the bundled `saxs` example.

`run_demo(runtime, config)` creates (or reuses, after a restart) session `demo` on the example
pipeline, writes synthetic 1024x1024 detector frames under `<data_dir>/demo` once (in a worker
thread; about a second), sets the background and dark sources, then every
`config.demo_interval_s` seconds sets the next sample frame (cycling through the files) with
`process: true`, so live events flow as soon as the service is up.

Runs until cancelled (the app cancels it first on shutdown). A tick is skipped while the demo
session still has a run waiting, so a slow machine never piles up a queue of demo runs; a refused
submit (queue full, shutting down) is logged and retried at the next tick.

A bounded history: after each submit the demo keeps the newest `DEMO_KEEP_RUNS` (100) runs of
its session and deletes the older finished ones, run directory first and then the store row
(a crash in between leaves a row without a directory, which the next prune removes; never a
directory nobody would remove). A demo left running for days therefore holds about 100 run
directories (about 60 KB each at the default frame size, so ~6 MB), not one per tick. Only the
demo session is pruned: sessions a user creates keep every run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import anyio
import anyio.to_thread

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from service.contract.errors import ServiceError
from service.contract.models import CreateSessionRequest, PipelineInput, SampleRequest, SourceInput
from service.contract.records import FINAL_RUN_STATUSES
from service.runtime.config import Config
from service.runtime.facade import Runtime
from service.storage.store import StoreError

__all__ = ["DEMO_KEEP_RUNS", "DEMO_SESSION", "prepare_demo", "prune_demo_runs", "run_demo"]

log = logging.getLogger("service.runtime.demo")

DEMO_SESSION = "demo"
DEMO_FRAMES = 3
DEMO_SHAPE = (1024, 1024)  # the contract's default frame size
DEMO_KEEP_RUNS = 100  # runs of the demo session kept (directories and store rows)
# The demo session's own journal (`runs/demo/events.ndjson`, events without a run) is cut back
# to its newest half past this size (a few events per tick: ~75 MB a day unbounded).
DEMO_JOURNAL_MAX_BYTES = 4 << 20


def _demo_files(directory: Path, shape: tuple[int, int]) -> tuple[list[Path], Path, Path]:
    """The demo's files, generated once (the same arguments always give the same files)."""
    samples = [directory / f"sample_{i:04d}.h5" for i in range(1, DEMO_FRAMES + 1)]
    background, dark = directory / "background.h5", directory / "dark.h5"
    if not all(p.is_file() for p in (*samples, background, dark)):
        write_demo_data(directory, count=DEMO_FRAMES, shape=shape)
    return samples, background, dark


async def prepare_demo(
    runtime: Runtime, config: Config, *, shape: tuple[int, int] = DEMO_SHAPE
) -> list[Path]:
    """Create or reuse session `demo` with its background and dark; returns the sample files."""
    directory = Path(config.data_dir) / "demo"
    samples, background, dark = await anyio.to_thread.run_sync(_demo_files, directory, shape)
    try:
        await runtime.get_session(DEMO_SESSION)
    except ServiceError:
        await runtime.create_session(
            CreateSessionRequest(
                session_id=DEMO_SESSION,
                name="Simulated SAXS instrument",
                pipeline=PipelineInput(yaml_text=example_text("saxs")),
                source_profile="saxs",
            )
        )
    await runtime.patch_source(
        DEMO_SESSION, SourceInput(ref="background", type="hdf5", location=str(background))
    )
    await runtime.patch_source(
        DEMO_SESSION, SourceInput(ref="dark", type="hdf5", location=str(dark))
    )
    return samples


def _remove_run_dirs(session_dir: Path, run_ids: list[str]) -> None:
    for run_id in run_ids:
        shutil.rmtree(session_dir / run_id, ignore_errors=True)


async def prune_demo_runs(
    runtime: Runtime,
    config: Config,
    keep: int = DEMO_KEEP_RUNS,
    journal_bytes: int = DEMO_JOURNAL_MAX_BYTES,
) -> int:
    """Delete the demo session's finished runs beyond the newest `keep` (how many went), and
    bound its session journal to `journal_bytes`."""
    sched = runtime.scheduler
    try:
        await sched.io(sched.publisher.trim_session_journal, DEMO_SESSION, journal_bytes)
    except OSError as exc:  # retried at the next tick
        log.warning("demo: session journal not trimmed: %s", exc)
    runs = await sched.io(runtime.store.list_runs, DEMO_SESSION, None)  # oldest first
    excess = runs[: max(0, len(runs) - keep)]
    old = [
        r.run_id for r in excess if r.status in FINAL_RUN_STATUSES and r.run_id not in sched.live
    ]
    if not old:
        return 0
    # Directories off the I/O thread (many files); the rows then go in one commit.
    await anyio.to_thread.run_sync(_remove_run_dirs, Path(config.runs_dir) / DEMO_SESSION, old)
    try:
        await sched.io(runtime.store.delete_runs, old)
    except StoreError as exc:  # retried at the next tick: the rows are still there
        log.warning("demo: old runs not removed from the store: %s", exc)
        return 0
    log.info("demo: removed %d old runs, keeping the newest %d", len(old), keep)
    return len(old)


async def run_demo(
    runtime: Runtime,
    config: Config,
    *,
    shape: tuple[int, int] = DEMO_SHAPE,
    ticks: int | None = None,
    keep: int = DEMO_KEEP_RUNS,
) -> None:
    """Feed session `demo` a new sample every `config.demo_interval_s` s (`ticks`: stop after
    that many, for tests; None: until cancelled), keeping its newest `keep` runs."""
    samples = await prepare_demo(runtime, config, shape=shape)
    n = 0
    while ticks is None or n < ticks:
        sample = samples[n % len(samples)]
        n += 1
        try:
            session = await runtime.get_session(DEMO_SESSION)
            if not session.queued_run_ids:
                # A new acquisition: a fresh mtime, as a detector writing the file would give.
                await anyio.to_thread.run_sync(os.utime, sample)
                await runtime.set_sample(
                    DEMO_SESSION, SampleRequest(location=str(sample), process=True)
                )
            await prune_demo_runs(runtime, config, keep)
        except ServiceError as exc:
            log.warning("demo: sample %s not submitted: %s %s", sample.name, exc.code, exc.detail)
        if ticks is None or n < ticks:
            await anyio.sleep(config.demo_interval_s)
