"""Contract tests of the runner lifecycle: hook order, observers, and a raising observer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.composite import Pipeline
from pipeline.exitcodes import ExitCode
from pipeline.group import StepGroup
from pipeline.incremental import IncrementalCache
from pipeline.observer import RecordingObserver, RunInfo, RunObserver
from pipeline.runner import ProcessingRunner, RunContext, RunResult
from pipeline.step import Step, StepContext


class Emit(Step):
    name = "test.emit"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        ctx.progress(0.5, "half")
        ctx.progress(1.0)
        return {"out": 1}


class Fail(Step):
    name = "test.fail"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        raise RuntimeError("nope")


class HookRecorder(ProcessingRunner):
    """A subclass overriding every hook, recording calls and what each hook can see."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def prepare(self, run: RunContext) -> None:
        self.calls.append("prepare")
        super().prepare(run)

    def on_prepare(self, run: RunContext) -> None:
        assert run.plan is not None  # the plan exists once prepared
        self.calls.append("on_prepare")

    def execute(self, run: RunContext) -> None:
        self.calls.append("execute")
        super().execute(run)

    def on_execute(self, run: RunContext) -> None:
        assert run.result is None and "a" in run.states  # steps ran, result not built yet
        self.calls.append("on_execute")

    def finalize(self, run: RunContext) -> None:
        self.calls.append("finalize")
        super().finalize(run)

    def on_finalize(self, run: RunContext) -> None:
        assert run.result is not None
        self.calls.append("on_finalize")


def test_hooks_run_in_contract_order() -> None:
    runner = HookRecorder(Pipeline("p", [Emit("a", outputs={"out": "x"})]))
    result = runner.run({})
    assert result.exit_code == ExitCode.OK
    assert runner.calls == [
        "prepare",
        "on_prepare",
        "execute",
        "on_execute",
        "finalize",
        "on_finalize",
    ]


def test_hooks_run_in_order_for_a_failing_run_too() -> None:
    runner = HookRecorder(
        Pipeline("p", [Emit("a", outputs={"out": "x"}), Fail("b", outputs={"out": "y"})])
    )
    assert runner.run({}).exit_code == ExitCode.STEP_EXCEPTION
    assert runner.calls == [
        "prepare",
        "on_prepare",
        "execute",
        "on_execute",
        "finalize",
        "on_finalize",
    ]


def test_dry_run_plans_and_executes_nothing() -> None:
    obs = RecordingObserver()
    runner = HookRecorder(Pipeline("p", [Fail("a", outputs={"out": "x"})]), observers=[obs])
    result = runner.run({}, dry_run=True)
    assert runner.calls == ["prepare", "on_prepare", "finalize", "on_finalize"]
    assert result.dry_run and result.exit_code == ExitCode.OK
    assert result.plan.dirty_steps == ["a"]
    assert result.step_states == {} and obs.events == []


def test_default_hooks_are_noops() -> None:
    result = ProcessingRunner(Pipeline("p", [Emit("a", outputs={"out": "x"})])).run({})
    assert result.values == {"x": 1}


def test_observer_sees_the_run_in_order() -> None:
    obs = RecordingObserver()
    inner = Pipeline("inner", [Emit("a", outputs={"out": "x"})])
    ProcessingRunner(Pipeline("p", [inner]), observers=[obs]).run({})
    assert obs.finished.is_set()
    described = [
        (e[0], *(e[1:3] if e[0] != "run_started" and e[0] != "run_finished" else ()))
        for e in obs.events
    ]
    assert described == [
        ("run_started",),
        ("step_started", "inner"),
        ("step_started", "inner.a"),
        ("step_progress", "inner.a", 0.5),
        ("step_progress", "inner.a", 1.0),
        ("step_finished", "inner.a", "succeeded"),
        ("step_finished", "inner", "succeeded"),
        ("run_finished",),
    ]
    info = obs.events[0][1]
    assert isinstance(info, RunInfo) and info.dirty_steps == ("inner.a",)
    assert obs.events[3][3] == "half"
    result = obs.events[-1][1]
    assert isinstance(result, RunResult) and result.status == "succeeded"


class Tick(Step):
    """Made with `idempotent=False`: never reused from the cache, it runs in every run."""

    name = "test.tick"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"out": 1}


def test_a_skipped_step_is_reported_finished_and_never_started() -> None:
    fixed = Pipeline("fixed", [Emit("a", outputs={"out": "x"})])
    tick = Tick("c", outputs={"out": "z"}, idempotent=False)
    live = Pipeline("live", [Emit("b", outputs={"out": "y"}), tick])
    pipeline, cache = Pipeline("p", [fixed, live]), IncrementalCache()
    ProcessingRunner(pipeline, cache=cache).run({})  # fills the cache
    obs = RecordingObserver()
    result = ProcessingRunner(pipeline, cache=cache, observers=[obs]).run({})
    assert result.skipped_steps == ["fixed.a", "live.b"]
    # `fixed` reused everything: finished (skipped), never started. `live` starts with its
    # first child that runs, after its skipped one.
    assert [e[:3] for e in obs.events if e[0] in ("step_started", "step_finished")] == [
        ("step_finished", "fixed.a", "skipped"),
        ("step_finished", "fixed", "skipped"),
        ("step_finished", "live.b", "skipped"),
        ("step_started", "live"),
        ("step_started", "live.c"),
        ("step_finished", "live.c", "succeeded"),
        ("step_finished", "live", "succeeded"),
    ]


def test_a_parallel_group_starts_once_before_its_children() -> None:
    children = [Tick(f"t{i}", outputs={"out": f"v{i}"}, idempotent=False) for i in range(8)]
    group = StepGroup("g", children, parallel=True, max_workers=4)
    obs = RecordingObserver()
    ProcessingRunner(Pipeline("p", [group]), observers=[obs]).run({})
    started = [e[1] for e in obs.events if e[0] == "step_started"]
    assert started[0] == "g" and sorted(started[1:]) == sorted(f"g.t{i}" for i in range(8))


def test_failed_step_is_reported_with_its_error() -> None:
    obs = RecordingObserver()
    ProcessingRunner(Pipeline("p", [Fail("a", outputs={"out": "x"})]), observers=[obs]).run({})
    finished = [e for e in obs.events if e[0] == "step_finished"]
    assert finished[0][1:3] == ("a", "failed")
    assert "nope" in finished[0][4]


class Broken(RunObserver):
    def on_step_started(self, step_id: str) -> None:
        raise RuntimeError("observer bug")

    def on_run_finished(self, result: RunResult) -> None:
        raise RuntimeError("observer bug")


def test_raising_observer_is_logged_and_never_breaks_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = RecordingObserver()
    steps = [Emit("a", outputs={"out": "x"}), Emit("b", outputs={"out": "y"})]
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        result = ProcessingRunner(Pipeline("p", steps), observers=[Broken(), good]).run({})
    assert result.exit_code == ExitCode.OK
    assert good.kinds().count("step_finished") == 2  # later observers still hear everything
    assert good.finished.is_set()
    failures = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(failures) == 2  # once per observer method, not once per call
