"""The tree a `ProcessingRunner` walks: a pipeline's steps as composites (nested pipelines and
groups) and leaves, built once per runner from the spec's compiled leaf plans. Each node knows
the ids of its enclosing composites, outermost first: a step that runs announces the ones not
yet announced before itself (`ProcessingRunner._announce`)."""

from __future__ import annotations

from collections.abc import Sequence

from .composite import children
from .group import StepGroup
from .planning import LeafPlan
from .step import PipelineStep

__all__ = ["Composite", "Leaf", "build_tree"]


class Composite:
    __slots__ = ("ancestors", "full_id", "max_workers", "nodes", "parallel", "step")

    def __init__(
        self,
        full_id: str,
        step: PipelineStep,
        nodes: list[Leaf | Composite],
        ancestors: tuple[str, ...],
    ) -> None:
        self.full_id = full_id
        self.ancestors = ancestors  # ids of the enclosing composites, outermost first
        self.step = step
        self.nodes = nodes
        self.parallel = isinstance(step, StepGroup) and step.parallel
        self.max_workers = step.max_workers if isinstance(step, StepGroup) else 1


class Leaf:
    __slots__ = (
        "ancestors", "full_id", "has_optional", "optional_source_refs", "output_names", "plan",
    )  # fmt: skip

    def __init__(
        self, plan: LeafPlan, optional_source_refs: tuple[str, ...], ancestors: tuple[str, ...]
    ) -> None:
        self.plan = plan
        self.full_id = plan.full_id
        self.ancestors = ancestors  # ids of the enclosing composites, outermost first
        self.has_optional = bool(plan.optional or plan.unmapped_optional)
        self.output_names = frozenset(type(plan.step).output_names)
        self.optional_source_refs = optional_source_refs


def build_tree(
    pipeline: PipelineStep, leaves: Sequence[LeafPlan], optional_refs: set[str]
) -> list[Leaf | Composite]:
    """The nodes of `pipeline` (its compiled `leaves` by full id; `optional_refs`: the sources
    a run may lack, whose readers are then skipped)."""
    by_id = {leaf.full_id: leaf for leaf in leaves}
    return _build(pipeline, (), by_id, optional_refs)


def _build(
    node: PipelineStep,
    ancestors: tuple[str, ...],
    by_id: dict[str, LeafPlan],
    optional: set[str],
) -> list[Leaf | Composite]:
    out: list[Leaf | Composite] = []
    prefix = ancestors[-1] + "." if ancestors else ""
    for child in children(node):
        full_id = prefix + child.id
        if children(child):
            kids = _build(child, (*ancestors, full_id), by_id, optional)
            out.append(Composite(full_id, child, kids, ancestors))
        else:
            plan = by_id[full_id]
            refs = tuple(r for r in plan.source_refs if r in optional)
            out.append(Leaf(plan, refs, ancestors))
    return out
