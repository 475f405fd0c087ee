"""The `pipeline` package's exceptions: one root, one class per way things go wrong."""

from __future__ import annotations

from dataclasses import dataclass


class PipelineError(Exception):
    """Root of every error the pipeline library raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem found while validating a pipeline file, with its location (`steps[2].inputs.b`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PipelineFileError(PipelineError):
    """A pipeline file (or pipeline definition) is invalid. Lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid pipeline")


class StepFailure(PipelineError):
    """Raised by a step for an expected failure with a clear message (missing dataset, bad units...).

    The runner records it like any exception (exit code 2) but logs no traceback for it.
    """


class SourceError(StepFailure):
    """A source file is missing, unreadable, or does not hold what the step needs."""


class CancelledError(PipelineError):
    """The run's cancel token was set; raised by `CancelToken.raise_if_cancelled()`."""
