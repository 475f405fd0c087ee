"""`IncrementalCache.nbytes()`: the figure the service keeps its cache memory budget with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from pipeline.incremental import CacheEntry, IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec


def entry(**outputs: object) -> CacheEntry:
    return CacheEntry(signature="s", params="p", version="v", outputs=dict(outputs))


def test_counts_each_buffer_once_views_and_shared_values_included() -> None:
    cache = IncrementalCache()
    frame = np.zeros((100, 100), dtype=np.float64)  # 80,000 bytes
    cache.put("a", entry(frame=frame, view=frame[10:20], meta={"n": 3, "label": "x"}))
    cache.put("b", entry(same=frame, pair=(np.ones(10, dtype=np.int32), [np.ones(5)])))
    assert cache.nbytes() == 80_000 + 40 + 40
    cache.discard("b")
    assert cache.nbytes() == 80_000
    cache.clear()
    assert cache.nbytes() == 0


def test_a_saxs_run_cache_holds_about_its_per_pixel_arrays(tmp_path: Path) -> None:
    sample, _, background, dark = write_demo_data(tmp_path, count=2, shape=(64, 64))
    sources = {
        "sample": SourceSpec(type="hdf5", location=str(sample)),
        "background": SourceSpec(type="hdf5", location=str(background)),
        "dark": SourceSpec(type="hdf5", location=str(dark)),
    }
    cache = IncrementalCache()
    spec = load_pipeline_text(example_text("saxs"))
    (tmp_path / "a").mkdir()
    ProcessingRunner(spec, cache=cache, artifacts_dir=tmp_path / "a").run(sources)
    held = cache.nbytes()
    # Several 64x64 per-pixel maps (frames, q, solid angle, masks) are kept between runs.
    assert 5 * 64 * 64 * 4 < held < 200 * 64 * 64 * 8
