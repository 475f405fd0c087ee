"""Dirty planning and incremental execution: reasons, modes, early cutoff, signatures."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from pipeline.composite import Pipeline, PipelineSpec
from pipeline.exitcodes import ExitCode
from pipeline.incremental import IncrementalCache
from pipeline.planning import plan_run
from pipeline.runner import ProcessingRunner
from pipeline.signatures import SMALL_ARRAY_ELEMENTS, source_signature, value_signature
from pipeline.step import SourceSpec, Step, StepContext


class ReadMeta(Step):
    """Reads `{"geometry": ..., "frame": [...]}` from a JSON source."""

    name = "test.read_meta"
    output_names = ("geometry", "frame")

    class Params(msgspec.Struct):
        source: str = "sample"

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, ReadMeta.Params)
        doc = msgspec.json.decode(Path(ctx.sources[self.params.source].location).read_bytes())
        return {"geometry": doc["geometry"], "frame": np.full(100_000, doc["frame"], dtype=float)}


class Counted(Step):
    """Counts its executions (class-level log) and applies `scale` to its input."""

    name = "test.counted"
    input_names = ("x",)
    output_names = ("y",)
    log: list[str] = []

    class Params(msgspec.Struct):
        scale: float = 1.0

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, Counted.Params)
        Counted.log.append(ctx.step_id)
        x = inputs["x"]
        if isinstance(x, dict):
            return {"y": sum(x.values()) * self.params.scale}
        return {"y": x * self.params.scale}


class Combine(Step):
    name = "test.combine"
    input_names = ("frame", "q")
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        Counted.log.append(ctx.step_id)
        return {"out": float(inputs["frame"].sum() * inputs["q"])}


def write_sample(path: Path, geometry: dict[str, float], frame: float) -> None:
    path.write_bytes(msgspec.json.encode({"geometry": geometry, "frame": frame}))


def make_spec(scale: float = 2.0, version: str = "1.0") -> PipelineSpec:
    root = Pipeline(
        "saxs",
        [
            ReadMeta("meta", outputs={"geometry": "geo", "frame": "frame"}),
            Counted(
                "geometry", Counted.Params(scale=scale), inputs={"x": "geo"}, outputs={"y": "q"}
            ),
            Combine("reduce", inputs={"frame": "frame", "q": "q"}, outputs={"out": "result"}),
        ],
        version=version,
    )
    return PipelineSpec.from_pipeline(root)


def sources(path: Path) -> dict[str, SourceSpec]:
    return {"sample": SourceSpec(type="json", location=str(path))}


def test_first_run_is_full_never_run_then_nothing_is_dirty(tmp_path: Path) -> None:
    sample = tmp_path / "s1.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    spec, cache = make_spec(), IncrementalCache()
    plan = plan_run(spec, sources(sample), cache)
    assert plan.effective_mode == "full"
    assert plan.reasons == {
        "meta": ["never_run"],
        "geometry": ["never_run"],
        "reduce": ["never_run"],
    }
    assert ProcessingRunner(spec, cache=cache).run(sources(sample)).exit_code == ExitCode.OK
    plan = plan_run(spec, sources(sample), cache)
    assert plan.effective_mode == "partial"
    assert plan.dirty_steps == [] and plan.skipped_steps == ["meta", "geometry", "reduce"]


def test_new_sample_with_same_geometry_skips_geometry_early_cutoff(tmp_path: Path) -> None:
    s1, s2 = tmp_path / "s1.json", tmp_path / "s2.json"
    write_sample(s1, {"d": 1.0, "wl": 0.1}, 1.0)
    write_sample(s2, {"wl": 0.1, "d": 1.0}, 3.0)  # same geometry, other frame
    spec, cache = make_spec(), IncrementalCache()
    ProcessingRunner(spec, cache=cache).run(sources(s1))
    Counted.log.clear()
    plan = plan_run(spec, sources(s2), cache)
    assert plan.reasons == {
        "meta": ["source_changed:sample"],
        "geometry": ["upstream_dirty:meta"],
        "reduce": ["upstream_dirty:meta", "upstream_dirty:geometry"],
    }
    result = ProcessingRunner(spec, cache=cache).run(sources(s2))
    assert result.effective_mode == "partial"
    assert result.dirty_steps == ["meta", "reduce"]
    assert result.skipped_steps == ["geometry"]  # geometry fields unchanged: not recomputed
    assert Counted.log == ["reduce"]
    full = ProcessingRunner(spec).run(sources(s2))
    assert result.values["result"] == full.values["result"]


def test_geometry_change_recomputes_geometry(tmp_path: Path) -> None:
    s1, s2 = tmp_path / "s1.json", tmp_path / "s2.json"
    write_sample(s1, {"d": 1.0}, 1.0)
    write_sample(s2, {"d": 2.0}, 1.0)
    spec, cache = make_spec(), IncrementalCache()
    ProcessingRunner(spec, cache=cache).run(sources(s1))
    result = ProcessingRunner(spec, cache=cache).run(sources(s2))
    assert result.dirty_steps == ["meta", "geometry", "reduce"]
    assert result.values["result"] == ProcessingRunner(spec).run(sources(s2)).values["result"]


def test_params_and_version_changes_are_named(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    cache = IncrementalCache()
    ProcessingRunner(make_spec(scale=2.0), cache=cache).run(sources(sample))
    plan = plan_run(make_spec(scale=3.0), sources(sample), cache)
    assert plan.reasons == {"geometry": ["params_changed"], "reduce": ["upstream_dirty:geometry"]}
    # The pipeline version is part of every step's signature.
    plan = plan_run(make_spec(version="2.0"), sources(sample), cache)
    assert plan.effective_mode == "partial"
    assert plan.reasons["meta"] == ["version_changed"]
    assert plan.reasons["reduce"] == [
        "version_changed",
        "upstream_dirty:meta",
        "upstream_dirty:geometry",
    ]


def test_step_version_change_is_version_changed(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    cache = IncrementalCache()
    spec = make_spec()
    ProcessingRunner(spec, cache=cache).run(sources(sample))
    geometry = spec.pipeline.steps[1]
    geometry.version = "2"
    plan = plan_run(spec, sources(sample), cache)
    assert plan.reasons["geometry"] == ["version_changed"]


def test_modes_changed_sources_and_cache_lost(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    spec, cache = make_spec(), IncrementalCache()
    ProcessingRunner(spec, cache=cache).run(sources(sample))

    full = plan_run(spec, sources(sample), cache, mode="full")
    assert full.effective_mode == "full" and set(map(tuple, full.reasons.values())) == {("forced",)}

    touched = plan_run(spec, sources(sample), cache, changed_sources=["sample"])
    assert touched.reasons["meta"] == ["source_changed:sample"]

    lost = plan_run(spec, sources(sample), cache, mode="partial", cache_lost=True)
    assert lost.effective_mode == "full"
    assert lost.reasons == {key: ["cache_lost"] for key in ["meta", "geometry", "reduce"]}

    Counted.log.clear()
    result = ProcessingRunner(spec, cache=cache).run(sources(sample), changed_sources=["sample"])
    # Re-read; the geometry and the (100,000-element) frame are equal by content: cut off.
    assert result.dirty_steps == ["meta"]
    assert Counted.log == []

    result = ProcessingRunner(spec, cache=cache).run(sources(sample), mode="full")
    assert result.dirty_steps == ["meta", "geometry", "reduce"] and result.skipped_steps == []


def test_partial_without_cache_is_full_with_a_warning(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    plan = plan_run(make_spec(), sources(sample), IncrementalCache(), mode="partial")
    assert plan.effective_mode == "full" and plan.warnings


def test_cache_clear_makes_the_next_auto_run_full(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    write_sample(sample, {"d": 1.0}, 1.0)
    spec, cache = make_spec(), IncrementalCache()
    ProcessingRunner(spec, cache=cache).run(sources(sample))
    assert len(cache) == 3
    cache.clear()
    assert plan_run(spec, sources(sample), cache).effective_mode == "full"


def test_failed_step_is_rerun_next_time(tmp_path: Path) -> None:
    sample = tmp_path / "s.json"
    sample.write_text("not json")
    spec, cache = make_spec(), IncrementalCache()
    assert (
        ProcessingRunner(spec, cache=cache).run(sources(sample)).exit_code
        == ExitCode.STEP_EXCEPTION
    )
    write_sample(sample, {"d": 1.0}, 1.0)
    result = ProcessingRunner(spec, cache=cache).run(sources(sample))
    assert result.exit_code == ExitCode.OK and result.dirty_steps == ["meta", "geometry", "reduce"]


def test_source_signature_tracks_size_mtime_ctime_inode_options_and_content(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    path.write_bytes(b"abc")
    spec = SourceSpec(type="hdf5", location=str(path))
    sig = source_signature(spec)
    assert source_signature(SourceSpec(type="hdf5", location=str(path))) == sig
    assert (
        source_signature(SourceSpec(type="hdf5", location=str(path), options={"dataset": "/x"}))
        != sig
    )
    st = path.stat()
    path.write_bytes(b"abd")  # same size, mtime restored: only ctime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    # ctime comes from the kernel's coarse clock: wait (bounded) for it to move on.
    deadline = time.monotonic() + 10
    while path.stat().st_ctime_ns == st.st_ctime_ns and time.monotonic() < deadline:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert source_signature(spec) != sig
    replaced = tmp_path / "g.h5"  # same content, size and times, another inode
    replaced.write_bytes(b"abd")
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))
    settled = source_signature(spec)
    os.replace(replaced, path)
    assert source_signature(spec) != settled
    hashed = SourceSpec(type="hdf5", location=str(path), options={"hash": True})
    before = source_signature(hashed)
    path.write_bytes(b"abe")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_signature(hashed) != before  # content hashing sees it
    assert source_signature(SourceSpec(type="hdf5", location=str(tmp_path / "missing"))) != sig


def test_value_signatures_small_by_content_large_opaque() -> None:
    assert value_signature({"a": 1, "b": [1.0, "x"]}) == value_signature({"b": [1.0, "x"], "a": 1})
    assert value_signature(1) != value_signature(1.0) != value_signature(True)
    small = np.arange(10.0)
    assert value_signature(small) == value_signature(small.copy())
    assert value_signature(small) != value_signature(small.astype(np.float32))
    # Arrays of any size are signed by content (xxh3), equal content signing equal.
    big = np.zeros(SMALL_ARRAY_ELEMENTS + 1)
    assert value_signature(big) == value_signature(big.copy()) is not None
    changed = big.copy()
    changed[-1] = 1.0
    assert value_signature(changed) != value_signature(big)
    assert value_signature(np.array([object()])) is None
    assert value_signature(object()) is None
    assert value_signature(np.float64(2.5)) is not None
