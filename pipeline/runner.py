"""The orchestrator: runs a pipeline's steps, records their states, notifies observers.

`ProcessingRunner.run` goes through `prepare -> on_prepare -> execute -> on_execute -> finalize
-> on_finalize`. The `on_*` hooks are no-ops for subclasses to override; they receive the
`RunContext` and may raise (an exception in a hook is a bug in the subclass and propagates).

The orchestrator alone owns timing, `step_states`, validation of what a step returned (every
mapped output present, no undeclared output), logging (`logging.getLogger("pipeline")`),
rollback (a failed nested pipeline's or group's partial outputs are removed from the context),
reuse of clean results from the `IncrementalCache`, and cancellation (the token is checked
before every step; long steps check it through `ctx`).

Failure semantics: a failing step stops the run (exit code from its failure) unless it has
`continue_on_error`, in which case it is recorded `failed` and the run goes on without its
outputs: a step that needs one of them then fails with `MISSING_REQUIREMENT`, naming the key.
A step that reads an optional source (`sources: {dark: {required: false}}`) which was not given
is `skipped` and its outputs are None, so optional inputs downstream receive None.

The hot path (one leaf step) is precompiled once per pipeline spec (`compile_leaves`): no deep
copies, no datetime (timestamps are one wall-clock anchor plus `perf_counter_ns` offsets,
formatted lazily), no log formatting unless DEBUG is enabled, no signatures unless a cache is
used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import hdf5io, provenance
from .cancel import CancelToken
from .composite import Pipeline, PipelineSpec
from .errors import CancelledError, StepFailure
from .exitcodes import ExitCode, exit_code_from
from .incremental import IncrementalCache, execution_signature, remember
from .observer import ObserverFanout, RunInfo, RunObserver
from .planning import LeafPlan, compile_leaves, pipeline_key, plan_run
from .rundir import ARTIFACTS, artifact_paths
from .runstate import RunContext, RunErrorInfo, RunResult
from .runtree import Composite, Leaf, build_tree
from .signatures import ABSENT
from .step import CompletedState, RunLabel, SourceSpec, StepContext, StepResult
from .steps.sources import HDF5_TYPES

log = logging.getLogger("pipeline")

__all__ = ["ProcessingRunner", "RunContext", "RunErrorInfo", "RunResult"]


# Outcome of running one node: continue, continue past a tolerated failure, stop.
_OK = 0
_TOLERATED = 1
_FAILED = 2
_CANCELLED = 3
_SUCCESS: tuple[int, None] = (_OK, None)
perf_counter_ns = time.perf_counter_ns


def _to_source_spec(value: Any) -> SourceSpec:
    if isinstance(value, SourceSpec):
        return value
    return SourceSpec(type=value.type, location=value.location, options=dict(value.options or {}))


class ProcessingRunner:
    """Runs one pipeline, as many times as asked (one run at a time per cache)."""

    def __init__(
        self,
        spec: PipelineSpec | Pipeline,
        *,
        observers: Sequence[RunObserver] = (),
        cache: IncrementalCache | None = None,
        artifacts_dir: Path | str | None = None,
        run_id: str | None = None,
    ) -> None:
        if isinstance(spec, Pipeline):
            spec = PipelineSpec.from_pipeline(spec)
        self.spec = spec
        self.observers = ObserverFanout(observers)
        self._observed = bool(observers)
        self.cache = cache
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else None
        self._artifacts_key = str(self.artifacts_dir) if self.artifacts_dir is not None else None
        if (
            run_id is None
            and self.artifacts_dir is not None
            and self.artifacts_dir.name == ARTIFACTS
        ):
            run_id = self.artifacts_dir.parent.name  # a run directory is named by its run id
        self.label = RunLabel(run_id, spec.name, spec.version)
        if spec.compiled is None:  # once per spec: ~0.25 ms of every run of a 30-step pipeline
            spec.compiled = compile_leaves(spec.pipeline, spec.version)
        self.leaves: list[LeafPlan] = spec.compiled
        optional_refs = {ref for ref, required in spec.sources.items() if not required}
        self._tree = build_tree(spec.pipeline, self.leaves, optional_refs)

    def read_ahead(
        self,
        sources: Mapping[str, Any],
        *,
        owner: str,
        refs: Collection[str] | None = None,
        keep: Collection[str] = (),
    ) -> bool:
        """Start reading, in the background, the HDF5 datasets a later run on `sources` reads
        whole (`Step.read_ahead_items`: frames, masks), for the sources named in `refs` (default:
        all). That run's reads then take the arrays already read, when they come from the very
        same files (`pipeline.hdf5io.read_ahead`); results are the same either way. The sha256
        of those files for the NXcanSAS provenance is started too (`pipeline.provenance`). Returns
        whether a read-ahead was started (at most one runs per `owner`). `keep`: the files of the
        run computing now, whose arrays read ahead earlier it still needs."""
        if not hdf5io.read_ahead_enabled():
            return False
        items: list[tuple[str, str, bool]] = []
        if any(getattr(type(leaf.step), "prefetch_source_hashes", False) for leaf in self.leaves):
            # The provenance's sha256 of the new files too (bounded queue, cached by identity).
            provenance.prefetch(
                _to_source_spec(spec).location
                for ref, spec in sources.items()
                if refs is None or ref in refs
            )
        for leaf in self.leaves:
            for ref, dataset, sum_frames in leaf.step.read_ahead_items():
                spec = sources.get(ref)
                if spec is None or (refs is not None and ref not in refs):
                    continue
                spec = _to_source_spec(spec)
                if spec.type in HDF5_TYPES:
                    item = (spec.location, dataset, sum_frames)
                    if item not in items:
                        items.append(item)
        return hdf5io.read_ahead(owner, items, keep=keep)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(
        self,
        sources: Mapping[str, Any],
        *,
        mode: str = "auto",
        changed_sources: Collection[str] = (),
        cancel: CancelToken | None = None,
        dry_run: bool = False,
        cache_lost: bool = False,
    ) -> RunResult:
        """Plan and (unless `dry_run`) execute one run. Never raises for a step's failure: the
        result says what happened. `sources` maps ref -> `SourceSpec` (or any object with
        `type`, `location`, `options`)."""
        run = RunContext(
            sources={ref: _to_source_spec(s) for ref, s in sources.items()},
            mode=mode,
            changed_sources=tuple(changed_sources),
            cancel=cancel if cancel is not None else CancelToken(),
            cache_lost=cache_lost,
            dry_run=dry_run,
        )
        self.prepare(run)
        self.on_prepare(run)
        if not dry_run:
            self.execute(run)
            self.on_execute(run)
        self.finalize(run)
        self.on_finalize(run)
        assert run.result is not None
        return run.result

    def prepare(self, run: RunContext) -> None:
        """Plan the run (source signatures, dirty steps, missing sources)."""
        run.anchor_wall_ns = time.time_ns()
        run.anchor_perf_ns = time.perf_counter_ns()
        run.wall_offset_ns = run.anchor_wall_ns - run.anchor_perf_ns
        run.plan = plan_run(
            self.spec,
            run.sources,
            self.cache,
            mode=run.mode,
            changed_sources=run.changed_sources,
            cache_lost=run.cache_lost,
            leaves=self.leaves,
        )
        run.force = run.plan.effective_mode == "full" or self.cache is None
        if run.plan.missing_required_sources:
            missing = ", ".join(run.plan.missing_required_sources)
            run.error = RunErrorInfo("MISSING_REQUIREMENT", f"missing required sources: {missing}")

    def execute(self, run: RunContext) -> None:
        """Run the steps (nothing when planning already failed)."""
        assert run.plan is not None
        plan = run.plan
        self.observers.on_run_started(
            RunInfo(
                pipeline_name=self.spec.name,
                pipeline_version=self.spec.version,
                mode=run.mode,
                effective_mode=plan.effective_mode,
                dirty_steps=tuple(plan.dirty_steps),
                skipped_steps=tuple(plan.skipped_steps),
                reasons=plan.reasons,
            )
        )
        if run.error is not None:
            return
        if self.cache is not None:
            self.cache.bind(pipeline_key(self.spec))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "run %s@%s: %s, %d dirty of %d steps",
                self.spec.name, self.spec.version, plan.effective_mode,
                len(plan.dirty_steps), len(self.leaves),
            )  # fmt: skip
        self._prefetch_source_hashes(run)
        try:
            with hdf5io.run_scope():  # one open per source file for the whole run
                outcome, error = self._run_nodes(self._tree, run)
        except KeyboardInterrupt:
            # Ctrl-C outside a step's `compute` (between steps, or while the main thread waits
            # for a parallel group): a cancellation like one inside a step, so the run still
            # ends with a result (and `runwire run` still writes its summary).
            run.cancel.cancel()
            outcome, error = _CANCELLED, None
        if outcome == _CANCELLED:
            run.cancelled = True
        elif outcome == _FAILED:
            run.error = error

    def _prefetch_source_hashes(self, run: RunContext) -> None:
        """When a step that runs records its sources' sha256 (NXcanSAS provenance), start
        hashing them now, so that it overlaps the reading and arithmetic."""
        assert run.plan is not None
        dirty = set(run.plan.dirty_steps)
        if any(
            getattr(type(leaf.step), "prefetch_source_hashes", False)
            for leaf in self.leaves
            if leaf.full_id in dirty
        ):
            provenance.prefetch(spec.location for spec in run.sources.values())

    def finalize(self, run: RunContext) -> None:
        """Build the `RunResult`, update the cache, list artifacts, notify observers."""
        assert run.plan is not None
        end_perf = time.perf_counter_ns()
        if run.cancelled:
            status, code = "cancelled", ExitCode.CANCELLED
        elif run.error is not None:
            status, code = "failed", ExitCode[run.error.code]
        else:
            status, code = "succeeded", ExitCode.OK
        state = CompletedState(
            success=status == "succeeded",
            status=status,
            duration_s=(end_perf - run.anchor_perf_ns) / 1e9,
            error=run.error.message if run.error else ("cancelled" if run.cancelled else None),
            exception_type=run.error.exception_type if run.error else None,
            meta={"code": code.name} if code != ExitCode.OK else {},
            started_ns=run.anchor_wall_ns,
            finished_ns=run.anchor_wall_ns + end_perf - run.anchor_perf_ns,
        )
        if self.cache is not None and not run.dry_run and run.error is None:
            self.cache.retain(leaf.full_id for leaf in self.leaves)
        run.result = RunResult(
            state=state,
            exit_code=exit_code_from(state),
            plan=run.plan,
            effective_mode=run.plan.effective_mode,
            dirty_steps=list(run.ran),
            skipped_steps=list(run.reused),
            step_states=dict(run.states),
            step_durations_s={k: s.duration_s for k, s in run.states.items()},
            values=run.values,
            artifacts=(
                artifact_paths(self.artifacts_dir)
                if self.artifacts_dir is not None and not run.dry_run
                else []
            ),
            error=run.error,
            dry_run=run.dry_run,
        )
        if not run.dry_run:
            if log.isEnabledFor(logging.INFO):
                log.info("run %s: %s in %.3f s", self.spec.name, status, state.duration_s)
            self.observers.on_run_finished(run.result)

    def on_prepare(self, run: RunContext) -> None:
        """Hook after planning."""

    def on_execute(self, run: RunContext) -> None:
        """Hook after the steps ran (not called for a dry run)."""

    def on_finalize(self, run: RunContext) -> None:
        """Hook after the result is built (`run.result`) and observers were told."""

    # -- execution ---------------------------------------------------------------------------

    def _run_nodes(
        self, nodes: Sequence[Leaf | Composite], run: RunContext
    ) -> tuple[int, RunErrorInfo | None]:
        for node in nodes:
            if isinstance(node, Leaf):
                outcome, error = self._run_leaf(node, run)
            else:
                outcome, error = self._run_composite(node, run)
            if outcome >= _FAILED:
                return outcome, error
        return _OK, None

    def _run_composite(self, node: Composite, run: RunContext) -> tuple[int, RunErrorInfo | None]:
        if run.is_cancelled():
            return _CANCELLED, None
        step_id = node.full_id
        observers = self.observers
        t0 = time.perf_counter_ns()
        if node.parallel and len(node.nodes) > 1:
            outcome, error = self._run_parallel(node, run)
        else:
            outcome, error = self._run_nodes(node.nodes, run)
        t1 = time.perf_counter_ns()
        duration = (t1 - t0) / 1e9
        start_ns = run.anchor_wall_ns + t0 - run.anchor_perf_ns
        end_ns = run.anchor_wall_ns + t1 - run.anchor_perf_ns
        provides = node.step.provides
        if outcome in (_OK, _TOLERATED):
            # Skipped when every child was (a child composite is skipped when all of its own
            # children were). Look up the children, never iterate `run.states`: siblings in a
            # parallel group insert into it concurrently.
            kids = [run.states.get(child.full_id) for child in node.nodes]
            skipped = all(s is not None and s.status == "skipped" for s in kids)
            status = "skipped" if skipped else "succeeded"
            run.states[step_id] = CompletedState(
                True, duration_s=duration, status=status, provides=provides,
                started_ns=start_ns, finished_ns=end_ns,
            )  # fmt: skip
            if self._observed:
                # A composite is announced by its first child that runs; all skipped: not at all.
                observers.on_step_finished(step_id, status, duration, None)
            return _OK, None
        # Roll back: the context must not keep a failed composite's partial outputs.
        for key in provides:
            run.values.pop(key, None)
            run.signatures.pop(key, None)
        cancelled = outcome == _CANCELLED
        message = "cancelled" if cancelled else (error.message if error else "failed")
        run.states[step_id] = CompletedState(
            False, duration_s=duration, status="cancelled" if cancelled else "failed",
            provides=provides, error=message,
            meta={"code": "CANCELLED" if cancelled else (error.code if error else "STEP_FAILED")},
            started_ns=start_ns, finished_ns=end_ns,
        )  # fmt: skip
        if self._observed:
            self._announce(run, node.ancestors, step_id)
            observers.on_step_finished(step_id, "failed", duration, message)
        if not cancelled and node.step.continue_on_error:
            return _TOLERATED, None
        return outcome, error

    def _announce(self, run: RunContext, ancestors: tuple[str, ...], step_id: str) -> None:
        """`on_step_started` for a step that runs (or fails), after its enclosing composites'
        not yet announced, outermost first. A skipped step is never announced: its
        `on_step_finished(status="skipped")` says it all. A composite is announced under the
        run's lock, so that children of a parallel group announce their parent once and before
        either of them; the step itself outside it (an observer that blocks holds up no one)."""
        with run.announce_lock:
            announced = run.announced
            if step_id in announced:
                return
            announced.add(step_id)
            for composite in ancestors:
                if composite not in announced:
                    announced.add(composite)
                    self.observers.on_step_started(composite)
        self.observers.on_step_started(step_id)

    def _run_parallel(self, node: Composite, run: RunContext) -> tuple[int, RunErrorInfo | None]:
        stop = threading.Event()  # set on a failure that stops the group: unstarted children skip

        def one(child: Leaf | Composite) -> tuple[int, RunErrorInfo | None]:
            if stop.is_set():
                return _FAILED, None
            result = self._run_nodes((child,), run)
            if result[0] >= _FAILED:
                stop.set()
            return result

        with ThreadPoolExecutor(
            node.max_workers, thread_name_prefix=f"group-{node.full_id}"
        ) as pool:
            try:
                results = list(pool.map(one, node.nodes))
            except KeyboardInterrupt:
                # Leaving the `with` waits for the running children: make them stop at their
                # next cancellation check instead of running to completion.
                run.cancel.cancel()
                raise
        # Report the first real failure (in child order); cancellation wins over failure.
        if any(outcome == _CANCELLED for outcome, _ in results):
            return _CANCELLED, None
        for outcome, error in results:
            if outcome == _FAILED and error is not None:
                return outcome, error
        return _OK, None

    def _run_leaf(self, node: Leaf, run: RunContext) -> tuple[int, RunErrorInfo | None]:
        # The hot path: keep attribute lookups and calls to a minimum (see the module docstring).
        if run.is_cancelled():
            return _CANCELLED, None
        leaf = node.plan
        step_id = leaf.full_id
        observers = self.observers if self._observed else None
        t0 = perf_counter_ns()
        values = run.values
        cache = self.cache
        # A reader of an optional source that was not given: skipped, outputs None.
        if node.optional_source_refs and any(
            r not in run.sources for r in node.optional_source_refs
        ):
            produced = {key: None for _, key in leaf.outputs}
            values.update(produced)
            run.signatures.update(dict.fromkeys(produced, ABSENT))
            run.reused.append(step_id)
            return self._finish(node, run, t0, "skipped", produced, None)
        try:
            inputs = {name: values[key] for name, key in leaf.inputs}
        except KeyError as exc:
            return self._fail(
                node,
                run,
                t0,
                "MISSING_REQUIREMENT",
                f"required key {exc.args[0]!r} has no value",
                None,
            )
        if node.has_optional:
            for name, key in leaf.optional:
                inputs[name] = values.get(key)
            for name in leaf.unmapped_optional:
                inputs[name] = None
        signature: str | None = None
        changed = False
        if cache is not None:
            changed = bool(run.changed_sources) and any(
                r in run.changed_sources for r in leaf.source_refs
            )
            psigs = run.plan.source_signatures if run.plan is not None else {}
            signature = execution_signature(leaf, run.signatures, values, psigs)
            entry = cache.get(step_id)
            if (
                not run.force
                and not leaf.always_run
                and entry is not None
                and entry.signature == signature
                and not (entry.wrote_artifacts and entry.artifacts_dir != self._artifacts_key)
                and not changed
            ):
                values.update(entry.outputs)
                run.signatures.update(entry.output_signatures)
                run.reused.append(step_id)
                return self._finish(node, run, t0, "skipped", entry.outputs, signature)
        if observers is not None:
            self._announce(run, node.ancestors, step_id)  # it runs: `step.started`

            def report(fraction: float | None, message: str | None) -> None:
                observers.on_step_progress(step_id, fraction, message)

            ctx = StepContext(
                step_id, run.sources, run.cancel, report, log, self.artifacts_dir, self.label
            )
        else:
            ctx = StepContext(
                step_id, run.sources, run.cancel, log=log, artifacts_dir=self.artifacts_dir,
                run=self.label,
            )  # fmt: skip
        run.ran.append(step_id)  # executed, whatever its outcome: a failed step was dirty too
        try:
            out = leaf.step.compute(inputs, ctx)
        except CancelledError:
            return self._fail(node, run, t0, "CANCELLED", "cancelled", "CancelledError")
        except KeyboardInterrupt:
            # Ctrl-C while a step runs (main thread only): a cancellation, with states recorded.
            run.cancel.cancel()
            return self._fail(node, run, t0, "CANCELLED", "interrupted", "KeyboardInterrupt")
        except StepFailure as exc:  # expected failure: its message says it all, no traceback
            return self._fail(node, run, t0, "STEP_EXCEPTION", str(exc), type(exc).__name__)
        except Exception as exc:
            log.error("step %s raised", step_id, exc_info=exc)
            return self._fail(
                node, run, t0, "STEP_EXCEPTION", f"{type(exc).__name__}: {exc}", type(exc).__name__
            )
        if type(out) is not dict:  # the common case (a plain dict) skips the checks below
            if isinstance(out, StepResult):
                if not out.success:
                    return self._fail(
                        node, run, t0, "STEP_FAILED", out.message or "step reported failure", None
                    )
                out = out.outputs
            if not isinstance(out, Mapping):
                return self._fail(
                    node, run, t0, "INVALID_RETURN",
                    f"returned {type(out).__name__}, expected a mapping of outputs", None,
                )  # fmt: skip
        try:
            produced = {key: out[name] for name, key in leaf.outputs}
        except KeyError as exc:
            return self._fail(
                node, run, t0, "INVALID_RETURN", f"did not return output {exc.args[0]!r}", None
            )
        if len(out) > len(produced):
            extra = sorted(str(n) for n in out if n not in node.output_names)
            if extra:
                return self._fail(
                    node, run, t0, "INVALID_RETURN", f"returned undeclared outputs {extra}", None
                )
        values.update(produced)
        if signature is not None:
            assert cache is not None and run.plan is not None
            remember(
                cache, leaf, signature, produced, run.signatures,
                source_signatures=run.plan.source_signatures,
                changed=changed,
                wrote_artifacts=ctx.wrote_artifacts, artifacts_dir=self._artifacts_key,
            )  # fmt: skip
        return self._finish(node, run, t0, "succeeded", produced, signature)

    def _finish(
        self, node: Leaf, run: RunContext, t0: int, status: str, produced: Mapping[str, Any],
        signature: str | None,
    ) -> tuple[int, RunErrorInfo | None]:  # fmt: skip
        t1 = perf_counter_ns()
        duration = (t1 - t0) / 1e9
        leaf = node.plan
        offset = run.wall_offset_ns
        run.states[leaf.full_id] = CompletedState(
            True, None, None, duration, status, leaf.step.provides, produced, None, None, None,
            signature, started_ns=offset + t0, finished_ns=offset + t1,
        )  # fmt: skip
        if self._observed:
            self.observers.on_step_finished(leaf.full_id, status, duration, None)
        return _SUCCESS

    def _fail(
        self, node: Leaf, run: RunContext, t0: int, code: str, message: str, exc_type: str | None
    ) -> tuple[int, RunErrorInfo | None]:
        t1 = perf_counter_ns()
        duration = (t1 - t0) / 1e9
        leaf = node.plan
        step_id = leaf.full_id
        if self.cache is not None:
            self.cache.discard(step_id)
        cancelled = code == "CANCELLED"
        offset = run.wall_offset_ns
        run.states[step_id] = CompletedState(
            False, duration_s=duration, status="cancelled" if cancelled else "failed",
            provides=leaf.step.provides, error=message, exception_type=exc_type,
            meta={"code": code}, started_ns=offset + t0, finished_ns=offset + t1,
        )  # fmt: skip
        if not cancelled:
            log.warning("step %s failed (%s): %s", step_id, code, message)
        if self._observed:
            self._announce(run, node.ancestors, step_id)  # failed before computing: started too
            self.observers.on_step_finished(step_id, "failed", duration, message)
        if cancelled:
            return _CANCELLED, None
        if leaf.step.continue_on_error:
            return _TOLERATED, None
        return _FAILED, RunErrorInfo(code, message, step_id, exc_type)
