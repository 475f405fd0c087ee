"""Writing a step as a decorated function: it validates, documents, plans, reuses, reports
progress and cancels exactly like a built-in subclass of `Step`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import pytest
import yaml

from pipeline.cancel import CancelToken
from pipeline.docs import describe_step
from pipeline.errors import PipelineFileError
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.observer import RunObserver
from pipeline.runner import ProcessingRunner
from pipeline.step import REGISTRY, Step, StepContext, register_all, step, unregister

CALLS: list[float] = []


def scale(
    values: list[float],
    *,
    factor: Annotated[float, msgspec.Meta(gt=0, description="Multiplier.")] = 2.0,
    label: str = "x",
    ctx: StepContext,
) -> dict[str, Any]:
    """Scale numbers by a factor.

    Reports progress per value and stops between values once cancelled.
    """
    out = []
    for k, v in enumerate(values):
        ctx.raise_if_cancelled()
        ctx.progress((k + 1) / len(values), f"{label} {k}")
        out.append(v * factor)
    CALLS.append(factor)
    return {"scaled": out}


def make_list(*, n: int = 3) -> list[float]:
    """A list 0..n-1."""
    return [float(i) for i in range(n)]


Scale = step(
    "test.scale", inputs=("values",), outputs=("scaled",), version="2", auto_register=False
)(scale)
MakeList = step("test.make_list", outputs=("values",), auto_register=False)(make_list)


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    register_all([Scale, MakeList])
    CALLS.clear()
    yield
    unregister(["test.scale", "test.make_list"])


def _pipeline(factor: Any = 3.0, **extra: Any) -> str:
    steps = [
        {"id": "make", "use": "test.make_list", "params": {"n": 4}, "outputs": {"values": "v"}},
        {"id": "scale", "use": "test.scale", "params": {"factor": factor, **extra},
         "inputs": {"values": "v"}, "outputs": {"scaled": "s"}},
    ]  # fmt: skip
    return yaml.safe_dump({"name": "p", "steps": steps})


def test_the_decorator_makes_a_step_class_with_typed_documented_params() -> None:
    assert issubclass(Scale, Step) and Scale.version == "2"
    doc = describe_step(Scale)
    assert doc.summary == "Scale numbers by a factor."
    assert doc.inputs == ("values",) and doc.outputs == ("scaled",)
    params = {p.name: p for p in doc.params}
    assert params["factor"].type == "float > 0" and params["factor"].default == "2.0"
    assert params["factor"].description == "Multiplier."
    assert params["label"].default == '"x"'


def test_params_are_validated_like_a_builtin_with_every_problem_located() -> None:
    with pytest.raises(PipelineFileError) as info:
        load_pipeline_text(_pipeline(factor=-1, colour="red"))
    text = str(info.value)
    assert "steps[1].params.colour" in text and "unknown parameter of step 'test.scale'" in text
    assert "steps[1].params.factor" in text and "Expected `float` > 0.0" in text


class Progress(RunObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, float | None, str | None]] = []

    def on_step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        self.events.append((step_id, fraction, message))


def test_runs_reports_progress_and_is_reused_until_its_params_change() -> None:
    cache = IncrementalCache()
    progress = Progress()
    result = ProcessingRunner(
        load_pipeline_text(_pipeline()), observers=(progress,), cache=cache
    ).run({})
    assert result.values["s"] == [0.0, 3.0, 6.0, 9.0]
    assert progress.events[-1] == ("scale", 1.0, "x 3")
    again = ProcessingRunner(load_pipeline_text(_pipeline()), cache=cache).run({})
    assert set(again.skipped_steps) == {"make", "scale"} and CALLS == [3.0]
    changed = ProcessingRunner(load_pipeline_text(_pipeline(factor=0.5)), cache=cache).run({})
    assert changed.dirty_steps == ["scale"] and changed.values["s"] == [0.0, 0.5, 1.0, 1.5]


def test_cancellation_stops_it_between_values() -> None:
    cancel = CancelToken()

    class CancelOnFirstProgress(RunObserver):
        def on_step_progress(
            self, step_id: str, fraction: float | None, message: str | None
        ) -> None:
            cancel.cancel()

    runner = ProcessingRunner(load_pipeline_text(_pipeline()), observers=(CancelOnFirstProgress(),))
    result = runner.run({}, cancel=cancel)
    assert result.state.status == "cancelled"
    assert result.step_states["scale"].status in ("cancelled", "failed")
    assert CALLS == []


def test_an_undeclared_parameter_is_a_clear_error_at_definition() -> None:
    def bad(values: list[float], other: int) -> None: ...

    with pytest.raises(TypeError, match=r"parameter 'other' of .*bad is neither an input"):
        step("test.bad", inputs=("values",), auto_register=False)(bad)


def test_registering_a_taken_name_is_refused_and_changes_nothing() -> None:
    before = dict(REGISTRY)
    Other = step("test.other", auto_register=False)(make_list)
    Dup = step("test.scale", auto_register=False)(make_list)
    with pytest.raises(ValueError, match=r"'test\.scale' registered twice"):
        register_all([Other, Dup])
    assert before == REGISTRY
