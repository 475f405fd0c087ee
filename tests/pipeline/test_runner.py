"""The runner: cancellation, progress, timing and states, logging, missing sources, artifacts."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from pipeline.cancel import CancelToken
from pipeline.composite import Pipeline, PipelineSpec
from pipeline.errors import CancelledError
from pipeline.exitcodes import ExitCode
from pipeline.group import StepGroup
from pipeline.observer import RecordingObserver, RunObserver
from pipeline.runner import ProcessingRunner
from pipeline.step import Step, StepContext


class Noop(Step):
    name = "test.noop"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"out": ctx.step_id}


class WaitForCancel(Step):
    """Signals it started, then waits (cooperatively) until the run is cancelled."""

    name = "test.wait_for_cancel"
    output_names = ("out",)
    started: threading.Event

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        self.started.set()
        if not ctx.cancel.wait(10):
            raise AssertionError("never cancelled")
        ctx.raise_if_cancelled()
        return {"out": None}


class Writer(Step):
    name = "test.writer"
    input_names = ("value",)
    output_names = ("path",)
    writes_artifacts = True

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert ctx.artifacts_dir is not None
        target = ctx.artifacts_dir / "sub" / "value.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(str(inputs["value"]))
        (ctx.artifacts_dir / ".partial.tmp").write_text("temp files are not artifacts")
        return {"path": str(target)}


class ReadsSource(Step):
    name = "test.reads_source"
    output_names = ("out",)

    class Params(msgspec.Struct):
        source: str

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert isinstance(self.params, ReadsSource.Params)
        return {"out": Path(ctx.sources[self.params.source].location).read_text()}


def noops(n: int) -> list[Step]:
    return [Noop(f"s{i}", outputs={"out": f"k{i}"}) for i in range(n)]


class CancelAfter(RunObserver):
    """Cancels the run when a given step finishes (deterministic: called in the step's thread)."""

    def __init__(self, token: CancelToken, step_id: str) -> None:
        self.token, self.step_id = token, step_id

    def on_step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None
    ) -> None:
        if step_id == self.step_id:
            self.token.cancel()


def test_cancel_between_steps_records_states_and_exits_cancelled() -> None:
    token = CancelToken()
    runner = ProcessingRunner(Pipeline("p", noops(5)), observers=[CancelAfter(token, "s1")])
    result = runner.run({}, cancel=token)
    assert result.exit_code == ExitCode.CANCELLED
    assert result.status == "cancelled"
    assert list(result.step_states) == ["s0", "s1"]  # ran before the cancel, recorded
    assert all(s.status == "succeeded" for s in result.step_states.values())


def test_long_step_sees_cancel_through_its_context() -> None:
    step = WaitForCancel("long", outputs={"out": "x"})
    step.started = threading.Event()
    token = CancelToken()
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(ProcessingRunner(Pipeline("p", [step])).run({}, cancel=token))
    )
    thread.start()
    assert step.started.wait(10)
    token.cancel()
    thread.join(10)
    (result,) = results
    assert result.exit_code == ExitCode.CANCELLED
    assert result.step_states["long"].status == "cancelled"
    assert result.error is None


def test_cancel_before_start_runs_nothing() -> None:
    token = CancelToken()
    token.cancel()
    result = ProcessingRunner(Pipeline("p", noops(3))).run({}, cancel=token)
    assert result.exit_code == ExitCode.CANCELLED and result.step_states == {}


def test_cancel_token_wait_and_raise() -> None:
    token = CancelToken()
    assert token.wait(0) is False
    token.cancel()
    assert token.cancelled and token.wait(0)
    try:
        token.raise_if_cancelled()
    except CancelledError:
        pass
    else:
        raise AssertionError("expected CancelledError")


def test_cancelled_inside_parallel_group() -> None:
    token = CancelToken()
    group = StepGroup("g", noops(4), parallel=True, max_workers=1)
    runner = ProcessingRunner(Pipeline("p", [group]), observers=[CancelAfter(token, "g.s0")])
    result = runner.run({}, cancel=token)
    assert result.exit_code == ExitCode.CANCELLED
    assert result.step_states["g"].status == "cancelled"
    assert "g.s3" not in result.step_states


def test_step_states_have_timing_and_durations_match() -> None:
    result = ProcessingRunner(Pipeline("p", noops(3))).run({})
    assert list(result.step_durations_s) == ["s0", "s1", "s2"]
    for step_id, state in result.step_states.items():
        assert state.duration_s == result.step_durations_s[step_id] >= 0
        assert state.started_utc is not None and state.finished_utc is not None
        assert state.started_utc <= state.finished_utc
    assert result.state.started_utc is not None and result.elapsed_s >= 0
    assert result.values == {"k0": "s0", "k1": "s1", "k2": "s2"}
    assert result.dirty_steps == ["s0", "s1", "s2"] and result.skipped_steps == []


def test_missing_required_source_fails_before_any_step() -> None:
    spec = PipelineSpec.from_pipeline(
        Pipeline("p", [ReadsSource("r", ReadsSource.Params(source="sample"), outputs={"out": "x"})])
    )
    obs = RecordingObserver()
    result = ProcessingRunner(spec, observers=[obs]).run({})
    assert result.exit_code == ExitCode.MISSING_REQUIREMENT
    assert result.plan.missing_required_sources == ["sample"] and not result.plan.can_process
    assert obs.kinds() == ["run_started", "run_finished"]


def test_sources_accept_any_object_with_type_location_options(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("hello")

    class Record(msgspec.Struct):
        type: str
        location: str
        options: dict[str, Any] = {}

    spec = PipelineSpec.from_pipeline(
        Pipeline("p", [ReadsSource("r", ReadsSource.Params(source="sample"), outputs={"out": "x"})])
    )
    result = ProcessingRunner(spec).run({"sample": Record(type="json", location=str(path))})
    assert result.values["x"] == "hello"


def test_optional_source_absent_skips_its_reader_with_none_outputs() -> None:
    reader = ReadsSource("dark", ReadsSource.Params(source="dark"), outputs={"out": "dark.frame"})
    spec = PipelineSpec.from_pipeline(Pipeline("p", [reader]), sources={"dark": False})
    result = ProcessingRunner(spec).run({})
    assert result.exit_code == ExitCode.OK
    assert result.step_states["dark"].status == "skipped"
    assert result.values == {"dark.frame": None}


def test_artifacts_are_listed_relative_to_the_artifacts_dir(tmp_path: Path) -> None:
    root = Pipeline(
        "p",
        [
            Noop("v", outputs={"out": "v"}),
            Writer("w", inputs={"value": "v"}, outputs={"path": "p"}),
        ],
    )
    result = ProcessingRunner(root, artifacts_dir=tmp_path).run({})
    assert result.exit_code == ExitCode.OK
    assert result.artifacts == ["sub/value.txt"]


class PlainWriter(Step):
    """A writer that does not declare `writes_artifacts`: detected by its use of the directory."""

    name = "test.plain_writer"
    input_names = ("value",)
    output_names = ("path",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        assert ctx.artifacts_dir is not None
        target = ctx.artifacts_dir / "value.txt"
        target.write_text(str(inputs["value"]))
        return {"path": str(target)}


def test_writers_rerun_for_every_new_artifacts_directory(tmp_path: Path) -> None:
    from pipeline.incremental import IncrementalCache

    root = Pipeline(
        "p",
        [
            Noop("v", outputs={"out": "v"}),
            PlainWriter("w", inputs={"value": "v"}, outputs={"path": "p"}),
        ],
    )
    cache = IncrementalCache()
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()
        result = ProcessingRunner(root, cache=cache, artifacts_dir=tmp_path / run).run({})
        assert result.artifacts == ["value.txt"]
    assert result.dirty_steps == ["w"] and result.skipped_steps == ["v"]
    assert result.plan.reasons == {"w": ["forced"]}
    assert (tmp_path / "r2" / "value.txt").read_text() == "v"


class Interrupted(Step):
    name = "test.interrupted"
    output_names = ("out",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        raise KeyboardInterrupt


def test_keyboard_interrupt_in_a_step_cancels_the_run() -> None:
    token = CancelToken()
    steps = [
        Noop("s0", outputs={"out": "a"}),
        Interrupted("i", outputs={"out": "x"}),
        Noop("s1", outputs={"out": "b"}),
    ]
    result = ProcessingRunner(Pipeline("p", steps)).run({}, cancel=token)
    assert result.exit_code == ExitCode.CANCELLED and token.cancelled
    assert result.step_states["i"].status == "cancelled"
    assert list(result.step_states) == ["s0", "i"]


class InterruptOnStart(RunObserver):
    """Raises KeyboardInterrupt when step `step_id` starts, as a Ctrl-C arriving outside any
    step's compute would; first waits for `wait_for` (a step of the same parallel group)."""

    def __init__(self, step_id: str, wait_for: threading.Event | None = None) -> None:
        self.step_id = step_id
        self.wait_for = wait_for
        self.finished: list[str] = []

    def on_step_started(self, step_id: str) -> None:
        if step_id == self.step_id:
            if self.wait_for is not None:
                assert self.wait_for.wait(10)
            raise KeyboardInterrupt

    def on_run_finished(self, result: Any) -> None:
        self.finished.append(result.status)


def test_keyboard_interrupt_between_steps_cancels_the_run_with_a_result() -> None:
    # Regression: a Ctrl-C outside a step's compute escaped `run()`, so `runwire run` wrote no
    # summary for the interrupted run.
    token = CancelToken()
    observer = InterruptOnStart("s1")
    steps = [Noop("s0", outputs={"out": "a"}), Noop("s1", outputs={"out": "b"})]
    result = ProcessingRunner(Pipeline("p", steps), observers=[observer]).run({}, cancel=token)
    assert result.exit_code == ExitCode.CANCELLED and result.status == "cancelled"
    assert token.cancelled and observer.finished == ["cancelled"]
    assert list(result.step_states) == ["s0"] and result.dirty_steps == ["s0"]


def test_keyboard_interrupt_in_a_parallel_group_stops_the_running_children() -> None:
    slow = WaitForCancel("a", outputs={"out": "a"})
    slow.started = threading.Event()
    observer = InterruptOnStart("g.b", wait_for=slow.started)
    group = StepGroup("g", [Noop("b", outputs={"out": "b"}), slow], parallel=True, max_workers=2)
    result = ProcessingRunner(Pipeline("p", [group]), observers=[observer]).run({})
    assert result.exit_code == ExitCode.CANCELLED
    # The running child was told to stop (it did not wait out its 10 s and fail).
    assert result.step_states["g.a"].status == "cancelled"


def test_nested_pipelines_in_a_parallel_group_finish_while_siblings_record_states() -> None:
    # Regression: a finishing nested pipeline scanned `run.states` for its children while the
    # other branch of the parallel group inserted into it ("dictionary changed size during
    # iteration" escaped `run()`). Frequent thread switches make that interleaving likely.
    def branch(b: str) -> Pipeline:
        return Pipeline(b, [
            Pipeline(f"p{i}", [Noop(f"s{j}", outputs={"out": f"{b}.{i}.{j}"}) for j in range(3)])
            for i in range(20)
        ])  # fmt: skip

    group = StepGroup("g", [branch("a"), branch("b")], parallel=True)
    runner = ProcessingRunner(Pipeline("root", [group]))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        results = [runner.run({}) for _ in range(20)]
    finally:
        sys.setswitchinterval(interval)
    assert all(r.status == "succeeded" for r in results)
    assert len(results[-1].step_states) == 1 + 2 * (1 + 20 * (1 + 3))


def test_a_failed_step_counts_as_dirty_and_later_steps_do_not() -> None:
    # run.finished and the Run object report dirty_steps: a step that ran and failed must be in
    # it (a client would otherwise see a failed run that "ran nothing").
    from pipeline.loader import load_pipeline_text

    spec = load_pipeline_text(
        "name: t\nsteps:\n"
        "  - {id: a, use: diag.noop}\n"
        "  - {id: f, use: diag.fail, params: {message: boom}}\n"
        "  - {id: c, use: diag.noop}\n"
    )
    result = ProcessingRunner(spec).run({})
    assert result.exit_code == ExitCode.STEP_EXCEPTION
    assert result.dirty_steps == ["a", "f"]
    assert result.error is not None and result.error.failed_step == "f"
