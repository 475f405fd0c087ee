"""Composition: a `Pipeline` is itself a step made of steps, nested pipelines and groups.

Its contract is inferred from its children: it provides everything its children provide, and
requires what its children need that no earlier sibling provides. Full step ids are dotted paths
(`reduce.integrate`), so a nested step's state never collides with a top-level one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PipelineFileError, Problem
from .step import PipelineStep


def infer_contract(
    steps: Sequence[PipelineStep], *, concurrent: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`(requires, provides)` of a sequence of children, keys in first-seen order.

    Sequentially, a child's requirement is met by any earlier sibling; concurrently (a parallel
    group) siblings cannot feed each other, so every child's requirement is the group's.
    """
    requires: dict[str, None] = {}
    provided: dict[str, None] = {}
    for step in steps:
        for key in step.requires:
            if concurrent or key not in provided:
                requires.setdefault(key, None)
        for key in step.provides:
            provided.setdefault(key, None)
    return tuple(requires), tuple(provided)


def collect_source_refs(steps: Sequence[PipelineStep]) -> tuple[str, ...]:
    """Source refs read by any of `steps`, in first-seen order (a composite's `source_refs`)."""
    refs: dict[str, None] = {}
    for step in steps:
        refs.update(dict.fromkeys(step.source_refs()))
    return tuple(refs)


def check_unique_ids(steps: Sequence[PipelineStep], where: str) -> None:
    """Raise `PipelineFileError` when two siblings share an id or an id contains a dot."""
    seen: set[str] = set()
    problems: list[Problem] = []
    for index, step in enumerate(steps):
        if not step.id or "." in step.id:
            problems.append(Problem(f"{where}[{index}].id", f"invalid step id {step.id!r}"))
        elif step.id in seen:
            problems.append(Problem(f"{where}[{index}].id", f"duplicate step id {step.id!r}"))
        seen.add(step.id)
    if problems:
        raise PipelineFileError(problems)


class Pipeline(PipelineStep):
    """An ordered sequence of steps that is itself a step (so pipelines nest)."""

    def __init__(
        self,
        id: str,
        steps: Sequence[PipelineStep],
        *,
        version: str = "0.0.0",
        name: str | None = None,
        idempotent: bool = True,
        continue_on_error: bool = False,
    ) -> None:
        check_unique_ids(steps, "steps")
        self.id = id
        self.steps: tuple[PipelineStep, ...] = tuple(steps)
        self.version = version
        self.name = name if name is not None else id
        self.idempotent = idempotent
        self.continue_on_error = continue_on_error
        self.requires, self.provides = infer_contract(self.steps)

    def source_refs(self) -> tuple[str, ...]:
        return collect_source_refs(self.steps)

    def __repr__(self) -> str:
        return f"<Pipeline {self.id!r} ({len(self.steps)} steps)>"


def children(step: PipelineStep) -> tuple[PipelineStep, ...]:
    """The children of a composite step (`Pipeline` or `StepGroup`), () for a leaf."""
    kids = getattr(step, "steps", None)
    return tuple(kids) if isinstance(kids, tuple | list) else ()


def walk(step: PipelineStep, prefix: str = "") -> Iterator[tuple[str, PipelineStep]]:
    """Every step below `step` (not `step` itself), depth first, with its full dotted id."""
    for child in children(step):
        full_id = f"{prefix}{child.id}"
        yield full_id, child
        yield from walk(child, full_id + ".")


def leaves(step: PipelineStep) -> Iterator[tuple[str, PipelineStep]]:
    """The leaf steps below `step` in execution order, with their full dotted ids."""
    for full_id, child in walk(step):
        if not children(child):
            yield full_id, child


@dataclass
class PipelineSpec:
    """A loaded pipeline file: its name, version, declared sources and the root `Pipeline`.

    `sources` maps each declared source ref to whether it is required. `text` is the file as
    given (the service stores it with the session).

    A spec is not changed once made: runners compile its steps once (`compiled`, their memo).
    """

    name: str
    version: str
    pipeline: Pipeline
    sources: dict[str, bool] = field(default_factory=dict)
    text: str = ""
    # `pipeline.runner`'s compiled leaf plans of this spec, made by the first runner of it.
    compiled: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_pipeline(
        cls, pipeline: Pipeline, sources: dict[str, bool] | None = None
    ) -> PipelineSpec:
        """Wrap a pipeline built in code. Without `sources`, every ref a step reads is required."""
        if sources is None:
            sources = dict.fromkeys(pipeline.source_refs(), True)
        return cls(name=pipeline.name, version=pipeline.version, pipeline=pipeline, sources=sources)
