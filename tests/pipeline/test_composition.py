"""Composition: nested pipelines, groups, inferred contracts, dotted ids, validation of returns,
rollback, continue_on_error, optional inputs, exit codes."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from pipeline.composite import Pipeline, PipelineSpec, leaves, walk
from pipeline.errors import PipelineFileError, StepFailure
from pipeline.exitcodes import ExitCode, exit_code_from
from pipeline.group import StepGroup
from pipeline.runner import ProcessingRunner
from pipeline.step import CompletedState, Step, StepContext, StepResult


class Const(Step):
    name = "test.const"
    output_names = ("out",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        value: int = 1

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, Const.Params)
        return {"out": self.params.value}


class Add(Step):
    name = "test.add"
    input_names = ("a", "b")
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"out": inputs["a"] + inputs["b"]}


class AddOptional(Step):
    name = "test.add_optional"
    input_names = ("a",)
    optional_inputs = ("b",)
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        b = inputs["b"]
        return {"out": inputs["a"] + (0 if b is None else b)}


class Returns(Step):
    """Returns whatever `self.result` holds (set by the test)."""

    name = "test.returns"
    output_names = ("out",)
    result: Any = None

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Any:
        return self.result


class Raises(Step):
    name = "test.raises"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        raise ValueError("boom")


class Barrier(Step):
    """Waits until `parties` steps reached it: only passes when they run concurrently."""

    name = "test.barrier"
    output_names = ("out",)
    barrier: threading.Barrier

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        self.barrier.wait(timeout=10)
        return {"out": threading.current_thread().name}


def const(step_id: str, key: str, value: int = 1) -> Const:
    return Const(step_id, Const.Params(value=value), outputs={"out": key})


def add(step_id: str, a: str, b: str, out: str) -> Add:
    return Add(step_id, inputs={"a": a, "b": b}, outputs={"out": out})


def test_nested_pipeline_infers_contract_and_namespaces_ids() -> None:
    inner = Pipeline("reduce", [add("integrate", "x", "y", "z"), add("scale", "z", "z", "w")])
    assert inner.requires == ("x", "y")  # z is provided by an earlier sibling
    assert inner.provides == ("z", "w")
    root = Pipeline("root", [const("x", "x"), const("y", "y", 2), inner])
    assert root.requires == ()
    assert [i for i, _ in leaves(root)] == ["x", "y", "reduce.integrate", "reduce.scale"]
    assert [i for i, _ in walk(root)] == ["x", "y", "reduce", "reduce.integrate", "reduce.scale"]

    result = ProcessingRunner(root).run({})
    assert result.exit_code == ExitCode.OK
    assert result.values["w"] == 6
    assert set(result.step_states) == {"x", "y", "reduce", "reduce.integrate", "reduce.scale"}
    assert result.step_states["reduce"].status == "succeeded"
    assert result.step_states["reduce.integrate"].outputs == {"z": 3}
    assert result.step_states["reduce.integrate"].started_utc is not None
    assert result.step_states["reduce.integrate"].started_utc.endswith("Z")


def test_duplicate_sibling_ids_are_rejected() -> None:
    with pytest.raises(PipelineFileError, match="duplicate step id 'a'"):
        Pipeline("p", [const("a", "x"), const("a", "y")])


def test_parallel_group_runs_children_concurrently() -> None:
    barrier = threading.Barrier(3)
    steps = []
    for i in range(3):
        step = Barrier(f"b{i}", outputs={"out": f"k{i}"})
        step.barrier = barrier
        steps.append(step)
    group = StepGroup("renders", steps, parallel=True)
    result = ProcessingRunner(Pipeline("p", [group])).run({})
    assert result.exit_code == ExitCode.OK
    assert len({result.values[f"k{i}"] for i in range(3)}) == 3  # three different threads
    assert result.step_states["renders"].status == "succeeded"


def test_parallel_group_rejects_overlapping_provides() -> None:
    with pytest.raises(PipelineFileError, match="also provided by"):
        StepGroup("g", [const("a", "x"), const("b", "x")], parallel=True)


def test_parallel_group_requires_what_its_children_need() -> None:
    group = StepGroup("g", [const("a", "x"), add("b", "x", "x", "y")], parallel=True)
    assert group.requires == ("x",)  # siblings cannot feed each other in a parallel group
    seq = StepGroup("g", [const("a", "x"), add("b", "x", "x", "y")])
    assert seq.requires == ()


def test_step_that_misses_an_output_fails_invalid_return() -> None:
    step = Returns("r", outputs={"out": "x"})
    step.result = {}
    result = ProcessingRunner(Pipeline("p", [step])).run({})
    assert result.exit_code == ExitCode.INVALID_RETURN
    assert result.error is not None and result.error.failed_step == "r"
    assert "out" in result.error.message
    assert "x" not in result.values


@pytest.mark.parametrize("value", [None, 42, ["out"]])
def test_step_returning_a_non_mapping_fails_invalid_return(value: Any) -> None:
    step = Returns("r", outputs={"out": "x"})
    step.result = value
    result = ProcessingRunner(Pipeline("p", [step])).run({})
    assert result.exit_code == ExitCode.INVALID_RETURN


def test_step_returning_undeclared_outputs_fails_invalid_return() -> None:
    step = Returns("r", outputs={"out": "x"})
    step.result = {"out": 1, "surprise": 2}
    result = ProcessingRunner(Pipeline("p", [step])).run({})
    assert result.exit_code == ExitCode.INVALID_RETURN
    assert "surprise" in result.error.message  # type: ignore[union-attr]


def test_step_result_failure_is_step_failed_and_success_passes_outputs() -> None:
    bad = Returns("bad", outputs={"out": "y"})
    bad.result = StepResult(success=False, message="detector offline")
    good = Returns("good", outputs={"out": "x"})
    good.result = StepResult(outputs={"out": 5})
    result = ProcessingRunner(Pipeline("p", [good, bad])).run({})
    assert result.values["x"] == 5
    assert result.exit_code == ExitCode.STEP_FAILED
    assert result.error is not None and result.error.message == "detector offline"
    assert exit_code_from(result.step_states["bad"]) == ExitCode.STEP_FAILED


def test_exception_stops_the_run_with_step_exception() -> None:
    root = Pipeline("p", [Raises("boom", outputs={"out": "x"}), const("after", "y")])
    result = ProcessingRunner(root).run({})
    assert result.exit_code == ExitCode.STEP_EXCEPTION
    assert result.error is not None
    assert (result.error.failed_step, result.error.exception_type) == ("boom", "ValueError")
    assert "after" not in result.step_states  # nothing runs after a failure
    assert result.state.status == "failed"


def test_missing_requirement_at_run_time() -> None:
    result = ProcessingRunner(Pipeline("p", [add("a", "nowhere", "nowhere", "x")])).run({})
    assert result.exit_code == ExitCode.MISSING_REQUIREMENT
    assert "nowhere" in result.error.message  # type: ignore[union-attr]


def test_continue_on_error_records_failure_and_dependants_miss_the_key() -> None:
    flaky = Raises("flaky", outputs={"out": "x"}, continue_on_error=True)
    root = Pipeline("p", [flaky, const("independent", "y"), add("dependant", "x", "y", "z")])
    result = ProcessingRunner(root).run({})
    assert result.step_states["flaky"].status == "failed"
    assert result.step_states["independent"].status == "succeeded"
    assert result.exit_code == ExitCode.MISSING_REQUIREMENT
    assert result.error is not None and result.error.failed_step == "dependant"
    assert "'x'" in result.error.message


def test_tolerated_failure_alone_leaves_the_run_succeeded() -> None:
    root = Pipeline(
        "p", [Raises("flaky", outputs={"out": "x"}, continue_on_error=True), const("y", "y")]
    )
    result = ProcessingRunner(root).run({})
    assert result.exit_code == ExitCode.OK
    assert result.step_states["flaky"].status == "failed"
    assert result.values == {"y": 1}


def test_failed_nested_pipeline_rolls_back_its_partial_outputs() -> None:
    inner = Pipeline(
        "inner",
        [const("first", "partial"), Raises("second", outputs={"out": "never"})],
        continue_on_error=True,
    )
    result = ProcessingRunner(Pipeline("p", [inner, const("after", "y")])).run({})
    assert result.exit_code == ExitCode.OK
    assert result.step_states["inner"].status == "failed"
    assert result.step_states["inner.first"].status == "succeeded"
    assert "partial" not in result.values  # rolled back with the failed composite
    assert result.values["y"] == 1


def test_optional_inputs_get_none_when_absent_or_none() -> None:
    missing = AddOptional("m", inputs={"a": "a", "b": "nothing"}, outputs={"out": "m"})
    unmapped = AddOptional("u", inputs={"a": "a"}, outputs={"out": "u"})
    given = AddOptional("g", inputs={"a": "a", "b": "a"}, outputs={"out": "g"})
    result = ProcessingRunner(Pipeline("p", [const("a", "a", 3), missing, unmapped, given])).run({})
    assert result.exit_code == ExitCode.OK
    assert (result.values["m"], result.values["u"], result.values["g"]) == (3, 3, 6)


def test_step_failure_message_is_kept_without_type_prefix() -> None:
    class Fails(Step):
        name = "test.fails"
        output_names = ("out",)

        def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
            raise StepFailure("dataset /entry/data/data not found")

    result = ProcessingRunner(Pipeline("p", [Fails("f", outputs={"out": "x"})])).run({})
    assert result.error is not None
    assert result.error.message == "dataset /entry/data/data not found"
    assert result.error.exception_type == "StepFailure"


def test_exit_code_from_states() -> None:
    assert exit_code_from(CompletedState(True)) == ExitCode.OK
    assert exit_code_from(CompletedState(False, status="cancelled")) == ExitCode.CANCELLED
    assert (
        exit_code_from(CompletedState(False, status="failed", meta={"code": "INVALID_RETURN"})) == 3
    )
    assert exit_code_from(CompletedState(False, status="failed")) == ExitCode.STEP_EXCEPTION
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 64]


def test_spec_from_pipeline_requires_the_sources_steps_read() -> None:
    class Reads(Step):
        name = "test.reads"
        output_names = ("out",)

        class Params(msgspec.Struct):
            source: str = "sample"

        def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
            return {"out": ctx.sources["sample"].location}

    spec = PipelineSpec.from_pipeline(Pipeline("p", [Reads("r", outputs={"out": "x"})]))
    assert spec.sources == {"sample": True}
    result = ProcessingRunner(spec).run({})
    assert result.exit_code == ExitCode.MISSING_REQUIREMENT
    assert result.error is not None and "sample" in result.error.message
    assert result.step_states == {}


def test_completed_state_contract_entry_and_equality() -> None:
    failed = CompletedState(False, status="failed", error="boom", meta={"code": "STEP_EXCEPTION"})
    assert failed.as_dict() == {"status": "failed", "duration_s": 0.0, "error": "boom"}
    assert failed.code == "STEP_EXCEPTION" and CompletedState(True).code is None
    assert CompletedState(True).as_dict() == {"status": "succeeded", "duration_s": 0.0}
    assert failed == CompletedState(False, status="failed", error="boom")
    assert failed != CompletedState(True) and failed != "failed"
    assert "boom" in repr(failed)
    given = CompletedState(True, started_utc="2026-01-01T00:00:00Z")
    assert given.started_utc == "2026-01-01T00:00:00Z" and given.finished_utc is None
    stamped = CompletedState(True, started_ns=1_700_000_000_123_456_789)
    assert stamped.started_utc == "2023-11-14T22:13:20.123456Z"
