"""`runwire serve --demo`: a simulated instrument feeding the bundled `saxs` example.

`run_demo(runtime, config)` creates (or reuses, after a restart) session `demo` on the example
pipeline, writes synthetic 1024x1024 detector frames under `<data_dir>/demo` once (in a worker
thread; about a second), sets the background and dark sources, then every
`config.demo_interval_s` seconds sets the next sample frame (cycling through the files) with
`process: true`, so live events flow as soon as the service is up.

Runs until cancelled (the app cancels it first on shutdown). A tick is skipped while the demo
session still has a run waiting, so a slow machine never piles up a queue of demo runs; a refused
submit (queue full, shutting down) is logged and retried at the next tick.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import anyio.to_thread

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

from .config import Config
from .errors import ServiceError
from .models import CreateSessionRequest, PipelineInput, SampleRequest, SourceInput
from .runtime import Runtime

__all__ = ["DEMO_SESSION", "prepare_demo", "run_demo"]

log = logging.getLogger("service.demo")

DEMO_SESSION = "demo"
DEMO_FRAMES = 3
DEMO_SHAPE = (1024, 1024)  # the contract's default frame size


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


async def run_demo(
    runtime: Runtime,
    config: Config,
    *,
    shape: tuple[int, int] = DEMO_SHAPE,
    ticks: int | None = None,
) -> None:
    """Feed session `demo` a new sample every `config.demo_interval_s` s (`ticks`: stop after
    that many, for tests; None: until cancelled)."""
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
        except ServiceError as exc:
            log.warning("demo: sample %s not submitted: %s %s", sample.name, exc.code, exc.detail)
        if ticks is None or n < ticks:
            await anyio.sleep(config.demo_interval_s)
