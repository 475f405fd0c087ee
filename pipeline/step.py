"""Steps: the unit of work, the state the orchestrator records for it, and the context it runs in.

A leaf step (`Step`) is a class registered under a name (`array.subtract`). It declares its
parameters as a msgspec `Struct`, its input and output names, and implements `compute`, which
receives its inputs by input name and returns its outputs by output name. The pipeline file maps
input names to context keys (`inputs: {a: sample.frame}`) and output names to context keys
(`outputs: {result: sample.corrected}`); those keys are the step's `requires` and `provides`.

Steps never mutate their input values in place: that is what makes a partial run equal a full run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from .cancel import CancelToken


class SourceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A registered input source: `ref -> {type, location, options}`."""

    type: str  # "hdf5" | "npy" | "json"
    location: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """Parameters of a step that takes none."""


ProgressFn = Callable[[float | None, str | None], None]


def _no_progress(fraction: float | None, message: str | None) -> None:
    return None


@dataclass
class StepContext:
    """What a running step may use besides its inputs."""

    step_id: str  # full dotted id
    sources: Mapping[str, SourceSpec]
    cancel: CancelToken = field(default_factory=CancelToken)
    report: ProgressFn = _no_progress
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipeline"))
    artifacts_dir: Path | None = None  # where writer steps put files (temp name, then rename)

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Emit a `step.progress` event (fraction in 0..1, and/or a message)."""
        self.report(fraction, message)

    def raise_if_cancelled(self) -> None:
        """Long steps call this between chunks of work; raises `CancelledError` once cancelled."""
        self.cancel.raise_if_cancelled()


@dataclass(frozen=True)
class StepResult:
    """Explicit outcome a step may return instead of a plain mapping of outputs.

    `success=False` reports failure without raising (exit code 4, `STEP_FAILED`).
    """

    success: bool = True
    outputs: Mapping[str, Any] = field(default_factory=dict)
    message: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class CompletedState:
    """What the orchestrator records for one step of one run (also for nested pipelines)."""

    success: bool
    started_utc: str | None = None
    finished_utc: str | None = None
    duration_s: float = 0.0
    status: str = "succeeded"  # "succeeded" | "skipped" | "failed" | "cancelled"
    provides: tuple[str, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)  # context key -> value
    error: str | None = None
    exception_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None


class PipelineStep:
    """Anything the orchestrator can run: a leaf `Step`, a nested `Pipeline` or a `StepGroup`."""

    id: str
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    idempotent: bool = True
    continue_on_error: bool = False
    version: str = "0"

    def source_refs(self) -> tuple[str, ...]:
        """Source refs whose files this step reads directly (their signatures feed its own)."""
        return ()


class Step(PipelineStep):
    """A registered leaf step. Subclasses set the class attributes and implement `compute`."""

    name: ClassVar[str]  # registry name, e.g. "array.subtract"
    Params: ClassVar[type[msgspec.Struct]] = NoParams
    input_names: ClassVar[tuple[str, ...]] = ()  # required inputs
    optional_inputs: ClassVar[tuple[str, ...]] = ()  # may be absent from `inputs` or None
    output_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        id: str,
        params: msgspec.Struct | None = None,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        *,
        idempotent: bool = True,
        continue_on_error: bool = False,
        version: str = "0",
    ) -> None:
        self.id = id
        self.params = params if params is not None else self.Params()
        self.inputs = dict(inputs or {})  # input name -> context key
        self.outputs = dict(outputs or {})  # output name -> context key
        self.requires = tuple(self.inputs.values())
        self.provides = tuple(self.outputs.values())
        self.idempotent = idempotent
        self.continue_on_error = continue_on_error
        self.version = version

    def source_refs(self) -> tuple[str, ...]:
        ref = getattr(self.params, "source", None)
        return (ref,) if isinstance(ref, str) else ()

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any] | StepResult:
        """Return outputs by output name (or a `StepResult`). Must not mutate `inputs` values."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} ({self.name})>"


REGISTRY: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    """Class decorator adding a step class to the registry under `cls.name`."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"step name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
