"""Dirty planning: which steps a run must execute, and why.

`compile_leaves` turns a pipeline into a flat list of `LeafPlan`s once (static signatures,
wiring, who provides what); `plan_run` compares them with an `IncrementalCache` and the current
source signatures. Reasons, per dirty leaf step (full dotted id):

- `never_run`: the cache has no result for the step;
- `source_changed:REF`: a source the step reads has a new signature, or REF is in
  `changed_sources`;
- `params_changed`: its params (or its input/output wiring) differ from the cached run's;
- `version_changed`: its code version, its `version` in the file or a pipeline version differs;
- `upstream_dirty:STEP`: a step providing one of its inputs is dirty;
- `forced`: a `full` run, or a step that always runs (`idempotent: false`, or a writer);
- `cache_lost`: the service lost its caches (restart): every step, and the run is full.

The plan is a static prediction. At execution time the runner compares actual input signatures
(early cutoff), so a step planned `upstream_dirty` whose inputs came out unchanged is skipped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .composite import PipelineSpec, children
from .incremental import CacheEntry, IncrementalCache
from .signatures import ABSENT, digest, encode_params, source_signature
from .step import PipelineStep, SourceSpec, Step

MODES = ("auto", "partial", "full")


@dataclass(slots=True)
class LeafPlan:
    """Everything about one leaf step that does not change between runs of a runner.

    Treated as immutable (not frozen only because a frozen dataclass is slower to build).
    """

    full_id: str
    step: Step
    inputs: tuple[tuple[str, str], ...]  # required: (input name, context key)
    optional: tuple[tuple[str, str], ...]  # optional: (input name, context key)
    outputs: tuple[tuple[str, str], ...]  # (output name, context key)
    source_refs: tuple[str, ...]
    params_sig: str
    version_sig: str
    static_sig: str
    always_run: bool  # not idempotent, or writes artifacts: never reused from the cache
    unmapped_optional: tuple[str, ...] = ()  # optional inputs the file does not map: None


@dataclass
class Plan:
    """The outcome of planning (the contract's dry-run answer, plus the source signatures)."""

    effective_mode: str  # partial | full
    dirty_steps: list[str]
    skipped_steps: list[str]
    reasons: dict[str, list[str]]
    missing_required_sources: list[str]
    warnings: list[str]
    can_process: bool
    source_signatures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The contract's dry-run object."""
        return {
            "effective_mode": self.effective_mode,
            "dirty_steps": list(self.dirty_steps),
            "skipped_steps": list(self.skipped_steps),
            "reasons": {k: list(v) for k, v in self.reasons.items()},
            "missing_required_sources": list(self.missing_required_sources),
            "warnings": list(self.warnings),
            "can_process": self.can_process,
        }


def step_name(step: Step) -> str:
    """Registry name of a step, or its class's qualified name for an unregistered one."""
    return getattr(type(step), "name", None) or type(step).__qualname__


def compile_leaves(root: PipelineStep, root_version: str = "0.0.0") -> list[LeafPlan]:
    """The leaf steps of `root` in execution order, with their static signatures."""
    out: list[LeafPlan] = []
    _compile(root, "", (root_version,), out)
    return out


def _compile(
    node: PipelineStep, prefix: str, versions: tuple[str, ...], out: list[LeafPlan]
) -> None:
    for child in children(node):
        full_id = prefix + child.id
        if children(child):
            # A nested pipeline's version is part of its steps' signatures; a group's is too.
            _compile(child, full_id + ".", (*versions, str(child.version)), out)
            continue
        if not isinstance(child, Step):
            raise TypeError(f"leaf step {full_id!r} is a {type(child).__name__}, not a Step")
        out.append(_leaf_plan(child, full_id, versions))


def _leaf_plan(step: Step, full_id: str, versions: tuple[str, ...]) -> LeafPlan:
    optional_names = set(type(step).optional_inputs)
    inputs = tuple((n, k) for n, k in step.inputs.items() if n not in optional_names)
    optional = tuple((n, k) for n, k in step.inputs.items() if n in optional_names)
    outputs = tuple(step.outputs.items())
    params_sig = digest(encode_params(step.params))
    version_sig = digest(str(type(step).version), str(step.version), *versions)
    wiring = repr((inputs, optional, outputs))
    static_sig = digest(step_name(step), params_sig, version_sig, wiring)
    always_run = (not step.idempotent) or type(step).writes_artifacts or not type(step).output_names
    return LeafPlan(
        full_id=full_id,
        step=step,
        inputs=inputs,
        optional=optional,
        outputs=outputs,
        source_refs=tuple(step.source_refs()),
        params_sig=params_sig,
        version_sig=version_sig,
        static_sig=static_sig,
        always_run=always_run,
        unmapped_optional=tuple(n for n in type(step).optional_inputs if n not in step.inputs),
    )


def pipeline_key(spec: PipelineSpec) -> str:
    """What a cache must have been filled by to be reused: a pipeline of the same name.

    Not the version: a new version keeps the cache, and every step whose signature includes the
    old version is dirty with `version_changed` (which is every step).
    """
    return spec.name


def current_source_signatures(
    leaves: list[LeafPlan], sources: Mapping[str, SourceSpec]
) -> dict[str, str]:
    """Signatures of the sources the steps read (`absent` for a ref not given)."""
    refs = {ref for leaf in leaves for ref in leaf.source_refs}
    sigs: dict[str, str] = {}
    for ref in sorted(refs):
        spec = sources.get(ref)
        sigs[ref] = source_signature(spec) if spec is not None else ABSENT
    return sigs


def plan_run(
    spec: PipelineSpec,
    sources: Mapping[str, SourceSpec],
    cache: IncrementalCache | None,
    *,
    mode: str = "auto",
    changed_sources: Collection[str] = (),
    cache_lost: bool = False,
    leaves: list[LeafPlan] | None = None,
) -> Plan:
    """Plan a run: effective mode, dirty steps with reasons, missing sources.

    `leaves` (from `compile_leaves`) may be passed to avoid recompiling the pipeline.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if leaves is None:
        leaves = compile_leaves(spec.pipeline, spec.version)
    warnings: list[str] = []
    missing = sorted(
        ref for ref, required in spec.sources.items() if required and ref not in sources
    )
    unknown = sorted(ref for ref in sources if ref not in spec.sources)
    if unknown:
        warnings.append(f"sources not declared by the pipeline are ignored: {', '.join(unknown)}")
    unknown_changed = sorted(set(changed_sources) - set(spec.sources))
    if unknown_changed:
        warnings.append(
            f"changed_sources not declared by the pipeline: {', '.join(unknown_changed)}"
        )
    source_sigs = current_source_signatures(leaves, sources)

    cached = cache is not None and cache.usable_for(pipeline_key(spec))
    if cache_lost or mode == "full":
        effective = "full"
    elif cached:
        effective = "partial"
    else:
        effective = "full"
        if mode == "partial":
            warnings.append("no cached results for this pipeline: the run is full")

    reasons: dict[str, list[str]] = {}
    if cache_lost or mode == "full" or not cached:
        # Everything is dirty for one reason: no need to trace dependencies.
        reason = "cache_lost" if cache_lost else ("forced" if mode == "full" else "never_run")
        reasons = {leaf.full_id: [reason] for leaf in leaves}
        dirty, skipped = list(reasons), []
    else:
        assert cache is not None
        producer: dict[str, str] = {}
        for leaf in leaves:
            why = _reasons(
                leaf, cache.get(leaf.full_id), source_sigs, changed_sources, producer, reasons
            )
            if why:
                reasons[leaf.full_id] = why
            for _, key in leaf.outputs:
                producer[key] = leaf.full_id
        dirty = [leaf.full_id for leaf in leaves if leaf.full_id in reasons]
        skipped = [leaf.full_id for leaf in leaves if leaf.full_id not in reasons]
    return Plan(
        effective_mode=effective,
        dirty_steps=dirty,
        skipped_steps=skipped,
        reasons=reasons,
        missing_required_sources=missing,
        warnings=warnings,
        can_process=not missing,
        source_signatures=source_sigs,
    )


def _reasons(
    leaf: LeafPlan,
    entry: CacheEntry | None,
    source_sigs: Mapping[str, str],
    changed_sources: Collection[str],
    producer: Mapping[str, str],
    dirty: Mapping[str, list[str]],
) -> list[str]:
    if entry is None:
        return ["never_run"]
    why: list[str] = []
    if leaf.always_run or entry.wrote_artifacts:
        why.append("forced")
    for ref in leaf.source_refs:
        if ref in changed_sources or entry.sources.get(ref) != source_sigs.get(ref):
            why.append(f"source_changed:{ref}")
    if entry.params != leaf.params_sig or (
        entry.static != leaf.static_sig and entry.version == leaf.version_sig
    ):
        why.append("params_changed")
    if entry.version != leaf.version_sig:
        why.append("version_changed")
    for _, key in (*leaf.inputs, *leaf.optional):
        upstream = producer.get(key)
        if upstream is not None and upstream in dirty:
            reason = f"upstream_dirty:{upstream}"
            if reason not in why:
                why.append(reason)
    return why
