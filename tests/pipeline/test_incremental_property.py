"""Property: for random pipelines and random source changes, an incremental run yields exactly
what a full run yields, and the plan's reasons are right."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.composite import Pipeline, PipelineSpec
from pipeline.exitcodes import ExitCode
from pipeline.group import StepGroup
from pipeline.incremental import IncrementalCache
from pipeline.runner import ProcessingRunner
from pipeline.step import PipelineStep, SourceSpec, Step, StepContext

BIG = 65_537  # one element more than a "small" value: signed by its producer, not its content


class Read(Step):
    name = "prop.read"
    output_names = ("value",)

    class Params(msgspec.Struct):
        source: str

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, Read.Params)
        return {"value": int(Path(ctx.sources[self.params.source].location).read_text())}


def _scalar(value: Any) -> int:
    return int(value[0]) if isinstance(value, np.ndarray) else int(value)


class Mix(Step):
    """A pure function of its inputs; `mod` makes different inputs give equal outputs (cutoff)."""

    name = "prop.mix"
    input_names = ("a",)
    optional_inputs = ("b", "c")
    output_names = ("out",)

    class Params(msgspec.Struct):
        mul: int = 1
        mod: int = 1000
        big: bool = False

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, Mix.Params)
        total = sum(_scalar(v) for v in inputs.values() if v is not None)
        value = (total * self.params.mul) % self.params.mod
        return {"out": np.full(BIG, value, dtype=np.int64) if self.params.big else value}


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[int, list[tuple[list[str], Mix.Params]], list[int], list[list[tuple[int, str]]]]:
    n_sources = draw(st.integers(1, 3))
    keys = [f"src{i}" for i in range(n_sources)]
    steps: list[tuple[list[str], Mix.Params]] = []
    for i in range(draw(st.integers(1, 7))):
        picked = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
        params = Mix.Params(mul=draw(st.integers(1, 3)), mod=draw(st.sampled_from([2, 5, 1000])),
                            big=draw(st.booleans()))  # fmt: skip
        steps.append((picked, params))
        keys.append(f"k{i}")
    chunk_sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    # Each round changes some sources: ("value", new), ("touch", same value), ("flag", changed_sources).
    change = st.tuples(st.integers(0, n_sources - 1), st.sampled_from(["value", "touch", "flag"]))
    rounds = draw(st.lists(st.lists(change, max_size=3), min_size=1, max_size=3))
    return n_sources, steps, chunk_sizes, rounds


def build(
    n_sources: int, steps: list[tuple[list[str], Mix.Params]], chunk_sizes: list[int]
) -> PipelineSpec:
    items: list[PipelineStep] = [
        Read(f"read{i}", Read.Params(source=f"s{i}"), outputs={"value": f"src{i}"})
        for i in range(n_sources)
    ]
    mixes: list[PipelineStep] = [
        Mix(
            f"mix{i}",
            params,
            inputs=dict(zip(["a", "b", "c"], picked, strict=False)),
            outputs={"out": f"k{i}"},
        )
        for i, (picked, params) in enumerate(steps)
    ]
    # Wrap runs of consecutive steps in nested pipelines (ids stay dotted and unique).
    position, nested = 0, 0
    for size in chunk_sizes:
        chunk = mixes[position : position + size]
        if not chunk:
            break
        provided = {key for step in chunk for key in step.provides}
        independent = not any(set(step.requires) & provided for step in chunk)
        if size > 1 and independent and nested % 2 == 0:
            items.append(StepGroup(f"nest{nested}", chunk, parallel=True, max_workers=2))
            nested += 1
        elif size > 1:
            items.append(Pipeline(f"nest{nested}", chunk))
            nested += 1
        else:
            items.extend(chunk)
        position += size
    items.extend(mixes[position:])
    return PipelineSpec.from_pipeline(Pipeline("prop", items, version="1"))


def equal_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def downstream(spec: PipelineSpec, changed_keys: set[str]) -> set[str]:
    """Leaf ids whose inputs depend (transitively) on the changed keys."""
    from pipeline.composite import leaves

    affected: set[str] = set()
    dirty_keys = set(changed_keys)
    for full_id, step in leaves(spec.pipeline):
        if set(step.requires) & dirty_keys:
            affected.add(full_id)
            dirty_keys.update(step.provides)
    return affected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=scenarios())
def test_incremental_equals_full(tmp_path: Path, scenario: Any) -> None:
    n_sources, steps, chunk_sizes, rounds = scenario
    spec = build(n_sources, steps, chunk_sizes)
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    paths = [folder / f"s{i}.txt" for i in range(n_sources)]
    values = [i + 1 for i in range(n_sources)]
    clock = [1_000_000_000_000_000_000]

    def write(i: int) -> None:
        paths[i].write_text(str(values[i]))
        clock[0] += 1_000_000  # an mtime that always moves, whatever the filesystem's granularity
        os.utime(paths[i], ns=(clock[0], clock[0]))

    for i in range(n_sources):
        write(i)
    sources = {f"s{i}": SourceSpec(type="json", location=str(p)) for i, p in enumerate(paths)}
    cache = IncrementalCache()
    first = ProcessingRunner(spec, cache=cache).run(sources)
    assert first.exit_code == ExitCode.OK and first.effective_mode == "full"

    for changes in rounds:
        flagged: list[str] = []
        touched: set[int] = set()
        for index, kind in changes:
            if kind == "value":
                values[index] += 7
                write(index)
                touched.add(index)
            elif kind == "touch":
                write(index)
                touched.add(index)
            else:
                flagged.append(f"s{index}")
        incremental = ProcessingRunner(spec, cache=cache).run(sources, changed_sources=flagged)
        full = ProcessingRunner(spec).run(sources)
        assert incremental.exit_code == full.exit_code == ExitCode.OK
        assert incremental.effective_mode == "partial"
        assert equal_values(incremental.values, full.values)

        plan = incremental.plan
        changed_refs = {f"s{i}" for i in touched} | set(flagged)
        for ref in changed_refs:
            assert f"source_changed:{ref}" in plan.reasons[f"read{ref[1:]}"]
        for i in range(n_sources):
            if f"s{i}" not in changed_refs:
                assert f"read{i}" not in plan.reasons
        expected_dirty = {f"read{r[1:]}" for r in changed_refs}
        expected_dirty |= downstream(spec, {f"src{r[1:]}" for r in changed_refs})
        assert set(plan.dirty_steps) == expected_dirty
        for _step_id, reasons in plan.reasons.items():
            for reason in reasons:
                kind, _, arg = reason.partition(":")
                assert kind in {"source_changed", "upstream_dirty"}
                if kind == "upstream_dirty":
                    assert arg in plan.reasons  # names a dirty step
        # Execution only ever does less than the plan (early cutoff), never more.
        assert set(incremental.dirty_steps) <= set(plan.dirty_steps)
        assert set(incremental.dirty_steps) | set(incremental.skipped_steps) == set(
            plan.dirty_steps
        ) | set(plan.skipped_steps)
