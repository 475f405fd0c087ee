"""The incremental caches' memory budget (issue 8, item 5): sizes, LRU choice, eviction.

The pure parts (`service.runtime.memory`) are fed values; the budget itself is shown on the in-process
service: two sessions over a budget that holds one, the least recently used one evicted, its
next run full with `fallback_reason: "cache_evicted"` (and its dry run saying so).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from api_support import Api, finished_run, run_events
from test_run_inputs import SHAPE, make_saxs_session, submit_sample

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec
from service.cli import build_parser
from service.cli.errors import CliError
from service.cli.serve import build_config
from service.runtime.memory import (
    choose_evictions,
    default_cache_memory,
    parse_byte_size,
    physical_memory,
    release_memory,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("64kb", 64 << 10)],
)
def test_byte_sizes_accept_suffixes(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "2X", "1e9"])
def test_a_bad_byte_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="byte size"):
        parse_byte_size(text)


def test_default_budget_is_a_quarter_of_ram() -> None:
    ram = physical_memory()
    assert ram is not None and ram > 0  # Linux has the sysconf names
    assert default_cache_memory() == ram // 4


def test_least_recently_used_caches_go_first_and_busy_ones_stay() -> None:
    caches = [("a", 40, 3.0, False), ("b", 40, 1.0, True), ("c", 40, 2.0, False)]
    assert choose_evictions(caches, budget=200) == []
    # 120 > 50: b is the oldest but busy, so c then a go.
    assert choose_evictions(caches, budget=50) == ["c", "a"]
    assert choose_evictions(caches, budget=80) == ["c"]
    assert choose_evictions([("x", 0, 0.0, False)], budget=-1) == []


def test_release_memory_trims_the_heap_on_glibc() -> None:
    assert release_memory() is True  # Debian: glibc has malloc_trim


def one_session_cache_bytes(files: list[Path], tmp: Path) -> int:
    sample, _, background, dark = files
    sources = {
        "sample": SourceSpec(type="hdf5", location=str(sample)),
        "background": SourceSpec(type="hdf5", location=str(background)),
        "dark": SourceSpec(type="hdf5", location=str(dark)),
    }
    cache = IncrementalCache()
    tmp.mkdir()
    ProcessingRunner(load_pipeline_text(example_text("saxs")), cache=cache, artifacts_dir=tmp).run(
        sources
    )
    return cache.nbytes()


async def cache_metrics(api: Api) -> dict[str, Any]:
    """The cache figures of `GET /v1/metrics` (`runwire_cache_*`), as ints."""
    text = (await api.client.get("/v1/metrics")).text
    figures: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("runwire_cache_"):
            name, value = line.split()
            figures[name.removeprefix("runwire_")] = int(float(value))
    assert set(figures) == {"cache_bytes", "cache_budget_bytes", "cache_evictions"}
    return figures


@pytest.mark.anyio
async def test_over_budget_the_least_recently_used_session_is_evicted_and_runs_full(
    make_api: Callable[..., AbstractAsyncContextManager[Api]], tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=2, shape=SHAPE, seed=5)
    )
    first, second, background, dark = files
    one = await anyio.to_thread.run_sync(one_session_cache_bytes, files, tmp_path / "ref")
    budget = one * 3 // 2  # one session's cache fits, two do not
    async with make_api(cache_memory=budget) as api:
        for sid in ("old", "new"):
            await make_saxs_session(api, sid, background, dark)
        run = await finished_run(api, (await submit_sample(api, "old", first))["run_id"])
        assert run["status"] == "succeeded"
        metrics = await cache_metrics(api)
        assert (metrics["cache_bytes"], metrics["cache_evictions"]) == (one, 0)
        assert metrics["cache_budget_bytes"] == budget
        # `new` runs: the two caches exceed the budget and `old`, used less recently, goes.
        await finished_run(api, (await submit_sample(api, "new", first))["run_id"])
        metrics = await cache_metrics(api)
        assert (metrics["cache_bytes"], metrics["cache_evictions"]) == (one, 1)

        plan = (await api.client.post("/v1/sessions/old/process/dry-run", json={})).json()
        assert plan["effective_mode"] == "full"
        assert set(plan["reasons"]) == set(plan["dirty_steps"])
        assert all(why == ["cache_evicted"] for why in plan["reasons"].values())
        # The evicted session's next run is full and says why; `new` kept its cache.
        queued = await submit_sample(api, "old", second)
        events = await run_events(api.app, queued["run_id"])
        run = await finished_run(api, queued["run_id"])
        assert (run["status"], run["effective_mode"]) == ("succeeded", "full")
        assert run["fallback_reason"] == "cache_evicted"
        [started] = [e for e in events if e["type"] == "run.started"]
        assert started["data"]["fallback_reason"] == "cache_evicted"
        # ...and now `new` is the least recently used: it goes, and `old` stays.
        metrics = await cache_metrics(api)
        assert metrics["cache_evictions"] == 2
        plan = (await api.client.post("/v1/sessions/new/process/dry-run", json={})).json()
        assert plan["effective_mode"] == "full"
        plan = (await api.client.post("/v1/sessions/old/process/dry-run", json={})).json()
        assert plan["effective_mode"] == "partial"


@pytest.mark.anyio
async def test_within_budget_nothing_is_evicted_and_deleting_frees_the_cache(
    api: Api, tmp_path: Path
) -> None:
    files = await anyio.to_thread.run_sync(
        lambda: write_demo_data(tmp_path / "frames", count=1, shape=SHAPE, seed=6)
    )
    sample, background, dark = files
    await make_saxs_session(api, "s", background, dark)
    await finished_run(api, (await submit_sample(api, "s", sample))["run_id"])
    metrics = await cache_metrics(api)
    assert metrics["cache_bytes"] > 0 and metrics["cache_evictions"] == 0
    response = await api.client.request("DELETE", "/v1/sessions/s", json={})
    assert response.status_code == 204
    assert (await cache_metrics(api))["cache_bytes"] == 0


def test_serve_takes_the_budget_from_the_flag_or_the_environment() -> None:
    def parse(*argv: str) -> Any:
        return build_parser().parse_args(["serve", *argv])

    assert build_config(parse("--cache-memory", "512M"), {}).cache_memory == 512 << 20
    env = {"RUNWIRE_CACHE_MEMORY": "2G"}
    assert build_config(parse(), env).cache_memory == 2 << 30
    assert build_config(parse("--cache-memory", "1G"), env).cache_memory == 1 << 30
    assert build_config(parse(), {}).cache_memory is None  # a quarter of RAM, at start
    with pytest.raises(CliError, match="--cache-memory: expected a byte size"):
        build_config(parse("--cache-memory", "lots"), {})
