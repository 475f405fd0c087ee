"""A group of steps, optionally run concurrently in a thread pool.

Children of a parallel group cannot feed each other (they run at the same time), and two of them
may not provide the same key: which value won would depend on scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence

from .composite import check_unique_ids, collect_source_refs, infer_contract
from .errors import PipelineFileError, Problem
from .step import PipelineStep


class StepGroup(PipelineStep):
    """Children run in order, or concurrently (`parallel=True`, up to `max_workers` threads).

    `max_workers=None` uses one thread per child, capped at 8: steps are mostly numpy work that
    releases the GIL, and more threads than cores only adds contention.
    """

    def __init__(
        self,
        id: str,
        steps: Sequence[PipelineStep],
        *,
        parallel: bool = False,
        max_workers: int | None = None,
        idempotent: bool = True,
        continue_on_error: bool = False,
        version: str = "0",
    ) -> None:
        check_unique_ids(steps, "steps")
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.id = id
        self.steps: tuple[PipelineStep, ...] = tuple(steps)
        self.parallel = parallel
        self.max_workers = max_workers if max_workers is not None else min(8, max(1, len(steps)))
        self.idempotent = idempotent
        self.continue_on_error = continue_on_error
        self.version = version
        problems = overlapping_provides(self.steps) if parallel else []
        if problems:
            raise PipelineFileError(problems)
        self.requires, self.provides = infer_contract(self.steps, concurrent=parallel)

    def source_refs(self) -> tuple[str, ...]:
        return collect_source_refs(self.steps)

    def __repr__(self) -> str:
        kind = "parallel" if self.parallel else "sequential"
        return f"<StepGroup {self.id!r} ({kind}, {len(self.steps)} steps)>"


def overlapping_provides(steps: Sequence[PipelineStep], where: str = "steps") -> list[Problem]:
    """One problem per key provided by more than one child of a parallel group."""
    owner: dict[str, int] = {}
    problems: list[Problem] = []
    for index, step in enumerate(steps):
        for key in step.provides:
            if key in owner:
                problems.append(
                    Problem(
                        f"{where}[{index}]",
                        f"key {key!r} is also provided by {where}[{owner[key]}] in the same "
                        "parallel group",
                    )
                )
            else:
                owner[key] = index
    return problems
