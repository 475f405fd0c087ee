"""`runwire run`: run a pipeline locally, without a server (contract section 3).

Progress goes to stderr (a bar on a terminal, plain lines otherwise); the run directory
(`run-request.json`, `events.ndjson`, `summary.json`, `manifest.json`, `artifacts/`) is written
under `--out`; the exit status is the run's `ExitCode`. Bad input (an invalid pipeline file, a
missing source file, a bad `--source`/`--param`) is one `error: ...` line and status 64.

Only the standard library is imported at module level (see service/cli/main.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from service.cli.errors import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from pipeline.composite import PipelineSpec
    from pipeline.observer import RunInfo, RunObserver
    from pipeline.rundir import RunDirectory
    from pipeline.runner import RunResult
    from pipeline.step import SourceSpec

SOURCE_TYPES = {".h5": "hdf5", ".hdf5": "hdf5", ".nxs": "hdf5", ".nx5": "hdf5", ".npy": "npy",
                ".json": "json"}  # fmt: skip


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline locally (no server)",
        description="Run PIPELINE (a YAML/JSON file or an example name such as `saxs`) once. "
        "Exit status: 0 ok, 1 missing requirement, 2 step exception, 3 invalid return, "
        "4 step failed, 5 cancelled (also Ctrl-C), 64 usage error.",
    )
    p.add_argument("pipeline", help="pipeline file, or the name of a bundled example")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="REF=PATH",
        help="a source file for ref REF (type from the suffix: .h5/.nxs, .npy, .json)",
    )
    p.add_argument(
        "--out",
        default="./runwire-runs",
        metavar="DIR",
        help="where the run directory is created (default ./runwire-runs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan as JSON; run nothing (exit 1 if it could not run)",
    )
    p.add_argument(
        "--events", metavar="FILE|-", help="also write the events as NDJSON (- = stdout)"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STEP.NAME=VALUE",
        help="override a step parameter (STEP is the dotted step id; VALUE is YAML)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log to stderr (with tracebacks of failing steps)",
    )
    p.set_defaults(func=run_command)  # fmt: skip


def parse_assignment(text: str, what: str) -> tuple[str, str]:
    """`"a.b=c"` -> `("a.b", "c")`; a usage error when there is no `=` or no name."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise CliError(
            f"{what} must look like {'REF=PATH' if what == '--source' else 'STEP.NAME=VALUE'}: {text!r}",
            EXIT_USAGE,
        )
    return name.strip(), value


def load_spec(pipeline: str, params: list[str]) -> tuple[PipelineSpec, str]:
    """Load the pipeline (file or example name) with `--param` overrides applied."""
    from pipeline.errors import PipelineFileError
    from pipeline.examples import example_names, example_text
    from pipeline.loader import load_pipeline_text

    path = Path(pipeline)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read pipeline file {pipeline}: {exc}", EXIT_USAGE) from exc
        label = filename = str(path)
    elif pipeline in example_names():
        text, label, filename = example_text(pipeline), f"example {pipeline}", f"{pipeline}.yaml"
    else:
        examples = ", ".join(example_names()) or "none"
        raise CliError(
            f"pipeline {pipeline!r}: no such file or example (examples: {examples})", EXIT_USAGE
        )
    if params:
        text = _apply_params(text, params, label)
    try:
        return load_pipeline_text(text, filename=filename), label
    except PipelineFileError as exc:  # the loader maps YAML/JSON syntax errors to this too
        problems = "; ".join(str(p) for p in exc.problems)
        raise CliError(f"invalid pipeline ({label}): {problems}", EXIT_USAGE) from exc


def _apply_params(text: str, params: list[str], label: str) -> str:
    import json

    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"invalid pipeline ({label}): not valid YAML", EXIT_USAGE) from exc
    for item in params:
        target, raw = parse_assignment(item, "--param")
        step_path, _, name = target.rpartition(".")
        if not step_path or not name:
            raise CliError(f"--param must look like STEP.NAME=VALUE: {item!r}", EXIT_USAGE)
        step = _find_step(doc, step_path.split("."))
        if step is None:
            raise CliError(f"--param {target}: no step {step_path!r} in the pipeline", EXIT_USAGE)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise CliError(f"--param {target}: value is not valid YAML", EXIT_USAGE) from exc
        if not isinstance(step.get("params"), dict):
            step["params"] = {}
        step["params"][name] = value
    return json.dumps(doc)


def _find_step(doc: Any, ids: list[str]) -> dict[str, Any] | None:
    node: Any = doc
    for step_id in ids:
        steps = node.get("steps") if isinstance(node, dict) else None
        if not isinstance(steps, list):
            return None
        node = next((s for s in steps if isinstance(s, dict) and s.get("id") == step_id), None)
        if node is None:
            return None
    return node if isinstance(node, dict) and "use" in node else None


def parse_sources(items: list[str], spec: PipelineSpec) -> dict[str, SourceSpec]:
    from pipeline.step import SourceSpec

    sources: dict[str, SourceSpec] = {}
    for item in items:
        ref, location = parse_assignment(item, "--source")
        if ref not in spec.sources:
            declared = ", ".join(sorted(spec.sources)) or "none"
            raise CliError(
                f"--source {ref}: the pipeline declares no source {ref!r} (declared: {declared})",
                EXIT_USAGE,
            )
        path = Path(location)
        if not path.is_file():
            raise CliError(f"--source {ref}: no such file: {location}", EXIT_USAGE)
        kind = SOURCE_TYPES.get(path.suffix.lower())
        if kind is None:
            raise CliError(
                f"--source {ref}: cannot tell the type of {location} (use .h5, .nxs, .npy or .json)",
                EXIT_USAGE,
            )
        sources[ref] = SourceSpec(type=kind, location=str(path.resolve()))
    return sources


class Progress:
    """Progress on stderr: a one-line bar on a terminal, plain lines otherwise.

    On a terminal the bar also moves while a long step runs: its start and its progress
    reports (`fraction`, `message`) redraw the line, at most every `redraw_s` seconds so that
    a step reporting thousands of times a second does not spend its time on the terminal.
    Plain output has one line per finished step only (a log, not an animation).
    """

    def __init__(self, stream: IO[str], total: int, *, redraw_s: float = 0.1) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = max(total, 1)
        self.done = 0
        self.redraw_s = redraw_s
        self._last_draw = 0.0
        self.lock = threading.Lock()

    def _draw(self, units: float, label: str) -> None:
        width = 30
        filled = int(width * min(units, self.total) / self.total)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[:40]:<40}")

    def step_started(self, step_id: str, leaf: bool) -> None:
        if self.tty and leaf:
            with self.lock:
                self._draw(self.done, step_id)
                self.stream.flush()
                self._last_draw = time.monotonic()

    def step_progress(self, step_id: str, fraction: float | None, message: str | None) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last_draw < self.redraw_s:
            return  # throttled: the next report or the step's end redraws
        with self.lock:
            self._last_draw = now
            share = min(max(fraction, 0.0), 1.0) if fraction is not None else 0.0
            label = step_id + (f" {share:.0%}" if fraction is not None else "")
            if message:
                label += f" {message}"
            self._draw(self.done + share, label)
            self.stream.flush()

    def step_finished(
        self, step_id: str, status: str, duration_s: float, error: str | None, leaf: bool
    ) -> None:
        with self.lock:
            if leaf:
                self.done += 1
            if self.tty:
                self._draw(self.done, step_id)
                if error is not None:
                    self.stream.write(f"\n{step_id}: {status}: {error}\n")
            else:
                tail = f": {error}" if error is not None else ""
                self.stream.write(f"step {step_id} {status} ({duration_s:.3f} s){tail}\n")
            self.stream.flush()

    def end(self) -> None:
        if self.tty:
            with self.lock:
                self.stream.write("\n")
                self.stream.flush()


def make_observer(run_id: str, run_dir: RunDirectory, events_out: IO[bytes] | None, progress: Progress,
                  leaf_ids: set[str]) -> RunObserver:  # fmt: skip
    """The observer turning runner notifications into CloudEvents (session `local`)."""
    from service.contract.records import RunRecord
    from service.runtime.conversions import local_run_record, run_started_data, terminal_event_data
    from service.runtime.step_events import StepEventObserver
    from streaming import events as ev
    from streaming.envelope import Event

    class LocalEvents(StepEventObserver):
        def __init__(self) -> None:
            self.seq = 0
            self.lock = threading.Lock()

        def emit(self, type: str, data: dict[str, Any]) -> None:
            with self.lock:  # steps of a parallel group report from several threads
                self.seq += 1
                event = Event.create(epoch="local", seq=self.seq, type=type, session_id="local",
                                     data=data, run_id=run_id)  # fmt: skip
                run_dir.append_event(event.raw)
                if events_out is not None:
                    events_out.write(event.raw + b"\n")
                    events_out.flush()

        def on_run_started(self, info: RunInfo) -> None:
            planned = RunRecord(run_id=run_id, session_id="local", mode=info.mode, queued_utc="",
                                effective_mode=info.effective_mode,
                                dirty_steps=list(info.dirty_steps),
                                skipped_steps=list(info.skipped_steps))  # fmt: skip
            self.emit(ev.RUN_STARTED, run_started_data(planned))  # the service's payload

        def on_step_started(self, step_id: str) -> None:
            super().on_step_started(step_id)
            progress.step_started(step_id, step_id in leaf_ids)

        def on_step_progress(
            self, step_id: str, fraction: float | None, message: str | None
        ) -> None:
            super().on_step_progress(step_id, fraction, message)
            progress.step_progress(step_id, fraction, message)

        def on_step_finished(
            self, step_id: str, status: str, duration_s: float, error: str | None
        ) -> None:
            super().on_step_finished(step_id, status, duration_s, error)
            progress.step_finished(step_id, status, duration_s, error, step_id in leaf_ids)

        def on_run_finished(self, result: RunResult) -> None:
            # The service's run.finished / run.cancelled, from the same Run object.
            self.emit(*terminal_event_data(local_run_record(result, run_id)))

    return LocalEvents()


def summary_of(
    result: RunResult, run_id: str, spec: PipelineSpec, interrupted_by: str | None
) -> dict[str, Any]:
    """summary.json: the contract's Run object for a local run (session `local`), built by the
    service's own conversion (`service.runtime.conversions.local_run_record`), plus what only
    a local run states: its pipeline, exit status and who cancelled it."""
    import msgspec

    from service.runtime.conversions import local_run_record

    record = local_run_record(result, run_id, cancelled_by=interrupted_by)
    summary: dict[str, Any] = msgspec.to_builtins(record)
    summary["pipeline"] = {"name": spec.name, "version": spec.version}
    summary["exit_code"] = int(result.exit_code)
    summary["cancelled_by"] = interrupted_by if record.status == "cancelled" else None
    return summary


def quiet_logging(verbose: bool) -> None:
    """Without --verbose, the one-line `error:` is the whole story: keep Python's last-resort
    handler from printing the pipeline's warnings and tracebacks to stderr."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    elif not logging.getLogger().handlers:
        logger = logging.getLogger("pipeline")
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def run_command(args: argparse.Namespace) -> int:
    import json

    import msgspec

    from pipeline.cancel import CancelToken
    from pipeline.composite import leaves
    from pipeline.exitcodes import ExitCode
    from pipeline.rundir import RunDirectory, new_run_id
    from pipeline.runner import ProcessingRunner
    from service.runtime.conversions import dry_run_result

    quiet_logging(bool(getattr(args, "verbose", False)))
    spec, label = load_spec(args.pipeline, list(args.param))
    sources = parse_sources(list(args.source), spec)
    if args.dry_run:
        runner = ProcessingRunner(spec)
        result = runner.run(sources, mode="full", dry_run=True)
        print(json.dumps(msgspec.to_builtins(dry_run_result(result.plan)), indent=2))
        # The plan is printed either way; the status says whether the run could go ahead, as
        # the real run's would (1: a required source is missing), so scripts can check it.
        return 0 if result.plan.can_process else int(ExitCode.MISSING_REQUIREMENT)
    missing = [ref for ref, required in spec.sources.items() if required and ref not in sources]
    if missing:
        raise CliError(
            f"missing required source(s): {', '.join(missing)} (give --source REF=PATH)", 1
        )

    run_id = new_run_id()
    try:
        run_dir = RunDirectory(Path(args.out) / run_id).create()
    except OSError as exc:
        raise CliError(
            f"cannot create the run directory under {args.out}: {exc}", EXIT_USAGE
        ) from exc
    events_out: IO[bytes] | None = None
    if args.events == "-":
        events_out = sys.stdout.buffer
    elif args.events:
        try:
            events_out = open(args.events, "wb")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise CliError(f"--events {args.events}: {exc}", EXIT_USAGE) from exc
    run_dir.write_request({
        "run_id": run_id, "session_id": "local", "pipeline": label,
        "pipeline_name": spec.name, "pipeline_version": spec.version, "mode": "full",
        "sources": {ref: {"type": s.type, "location": s.location, "options": s.options}
                    for ref, s in sources.items()},
        "params": list(args.param), "argv": sys.argv[1:],
    })  # fmt: skip
    leaf_ids = {full_id for full_id, _ in leaves(spec.pipeline)}
    progress = Progress(sys.stderr, len(leaf_ids))
    observer = make_observer(run_id, run_dir, events_out, progress, leaf_ids)
    cancel = CancelToken()
    interrupted: list[str] = []

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted:  # a second Ctrl-C: stop waiting for the running step
            raise KeyboardInterrupt
        interrupted.append(signal.Signals(signum).name)
        cancel.cancel()

    # SIGTERM too (a batch system or `timeout` ending the job): the run is cancelled the same
    # way, so its directory still gets a summary saying so, instead of the process vanishing.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = (
        {sig: signal.signal(sig, on_sigint) for sig in handled}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    try:
        runner = ProcessingRunner(spec, observers=(observer,), artifacts_dir=run_dir.artifacts_dir)
        result = runner.run(sources, mode="full", cancel=cancel)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.end()
        if events_out is not None and events_out is not sys.stdout.buffer:
            events_out.close()
    run_dir.write_summary(summary_of(result, run_id, spec, interrupted[0] if interrupted else None))
    run_dir.write_manifest()
    run_dir.close()
    if result.error is not None:
        where = f"step {result.error.failed_step}: " if result.error.failed_step else ""
        print(f"error: {where}{result.error.message} ({result.error.code})", file=sys.stderr)
    elif result.status == "cancelled":
        print(
            f"error: run cancelled{' by ' + interrupted[0] if interrupted else ''}", file=sys.stderr
        )
    print(
        f"run {run_id} {result.status} in {result.elapsed_s:.3f} s: {run_dir.path}", file=sys.stderr
    )
    return int(result.exit_code)
