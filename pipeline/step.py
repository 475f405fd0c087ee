"""Steps: the unit of work, the state the orchestrator records for it, and the context it runs in.

A leaf step (`Step`) is a class registered under a name (`array.subtract`). It declares its
parameters as a msgspec `Struct`, its input and output names, and implements `compute`, which
receives its inputs by input name and returns its outputs by output name. The pipeline file maps
input names to context keys (`inputs: {a: sample.frame}`) and output names to context keys
(`outputs: {result: sample.corrected}`); those keys are the step's `requires` and `provides`.

Steps never mutate their input values in place: that is what makes a partial run equal a full run.
"""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class RunLabel:
    """Which run a step runs in: for writers that record provenance (NXcanSAS `run`,
    `sasprocess`). `run_id` is None outside a run directory."""

    run_id: str | None = None
    pipeline_name: str = ""
    pipeline_version: str = ""


_NO_LABEL = RunLabel()


class StepContext:
    """What a running step may use besides its inputs.

    Reading `artifacts_dir` marks the step as a writer (`wrote_artifacts`): every run has its
    own artifacts directory, so the runner never reuses a cached result of such a step for a
    run with another directory (its files would be missing from the new run).
    """

    __slots__ = ("_artifacts_dir", "cancel", "log", "report", "run", "sources", "step_id",
                 "wrote_artifacts")  # fmt: skip

    def __init__(
        self,
        step_id: str,  # full dotted id
        sources: Mapping[str, SourceSpec],
        cancel: CancelToken | None = None,
        report: ProgressFn = _no_progress,
        log: logging.Logger | None = None,
        artifacts_dir: Path | None = None,  # where writer steps put files (temp name, then rename)
        run: RunLabel = _NO_LABEL,
    ) -> None:
        self.step_id = step_id
        self.sources = sources
        self.cancel = cancel if cancel is not None else CancelToken()
        self.report = report
        self.log = log if log is not None else logging.getLogger("pipeline")
        self._artifacts_dir = artifacts_dir
        self.run = run
        self.wrote_artifacts = False

    @property
    def artifacts_dir(self) -> Path | None:
        """Where writer steps put their files (write a temp name, then rename)."""
        self.wrote_artifacts = True
        return self._artifacts_dir

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


def format_utc_ns(epoch_ns: int) -> str:
    """RFC 3339 UTC timestamp with microseconds for nanoseconds since the epoch."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


class CompletedState:
    """What the orchestrator records for one step of one run (also for nested pipelines).

    Timestamps are kept as integer nanoseconds since the epoch (`started_ns`, `finished_ns`) and
    formatted to RFC 3339 only when `started_utc` / `finished_utc` are read: the runner records a
    state per step on its hot path and formatting a date costs more than running a no-op step.
    """

    __slots__ = (
        "_finished_utc",
        "_started_utc",
        "duration_s",
        "error",
        "exception_type",
        "finished_ns",
        "meta",
        "outputs",
        "provides",
        "signature",
        "started_ns",
        "status",
        "success",
    )

    def __init__(
        self,
        success: bool,
        started_utc: str | None = None,
        finished_utc: str | None = None,
        duration_s: float = 0.0,
        status: str = "succeeded",  # "succeeded" | "skipped" | "failed" | "cancelled"
        provides: tuple[str, ...] = (),
        outputs: Mapping[str, Any] | None = None,  # context key -> value
        error: str | None = None,
        exception_type: str | None = None,
        meta: dict[str, Any] | None = None,
        signature: str | None = None,
        *,
        started_ns: int = 0,
        finished_ns: int = 0,
    ) -> None:
        self.success = success
        self._started_utc = started_utc
        self._finished_utc = finished_utc
        self.duration_s = duration_s
        self.status = status
        self.provides = provides
        self.outputs: Mapping[str, Any] = outputs if outputs is not None else {}
        self.error = error
        self.exception_type = exception_type
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self.signature = signature
        self.started_ns = started_ns
        self.finished_ns = finished_ns

    @property
    def started_utc(self) -> str | None:
        if self._started_utc is None and self.started_ns:
            self._started_utc = format_utc_ns(self.started_ns)
        return self._started_utc

    @property
    def finished_utc(self) -> str | None:
        if self._finished_utc is None and self.finished_ns:
            self._finished_utc = format_utc_ns(self.finished_ns)
        return self._finished_utc

    @property
    def code(self) -> str | None:
        """The `ExitCode` name of a failure (`STEP_EXCEPTION`, ...), None when it did not fail."""
        code = self.meta.get("code")
        return code if isinstance(code, str) else None

    def as_dict(self) -> dict[str, Any]:
        """The contract's `step_states` entry: `{status, duration_s, error?}`."""
        out: dict[str, Any] = {"status": self.status, "duration_s": self.duration_s}
        if self.error is not None:
            out["error"] = self.error
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompletedState):
            return NotImplemented
        return all(
            getattr(self, name) == getattr(other, name)
            for name in ("success", "status", "provides", "error", "exception_type", "signature")
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = f", error={self.error!r}" if self.error else ""
        return f"CompletedState(status={self.status!r}, duration_s={self.duration_s:.6f}{extra})"


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
    # True for steps that write files under `ctx.artifacts_dir` (sinks): the runner always runs
    # them, because every run has its own artifacts directory and a skipped writer would leave
    # the new run without its files. A step without outputs is treated as a writer too.
    writes_artifacts: ClassVar[bool] = False

    def __init__(
        self,
        id: str,
        params: msgspec.Struct | None = None,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        *,
        idempotent: bool = True,
        continue_on_error: bool = False,
        version: str | None = None,
    ) -> None:
        self.id = id
        self.params = params if params is not None else self.Params()
        self.inputs = dict(inputs or {})  # input name -> context key
        self.outputs = dict(outputs or {})  # output name -> context key
        self.requires = tuple(self.inputs.values())
        self.provides = tuple(self.outputs.values())
        self.idempotent = idempotent
        self.continue_on_error = continue_on_error
        # The class attribute is the code's version; a pipeline file may override it per step.
        self.version = version if version is not None else type(self).version

    def source_refs(self) -> tuple[str, ...]:
        ref = getattr(self.params, "source", None)
        return (ref,) if isinstance(ref, str) else ()

    def read_ahead_items(self) -> tuple[tuple[str, str, bool], ...]:
        """HDF5 datasets this step reads whole, as `(source ref, dataset, sum_frames)`: what
        `ProcessingRunner.read_ahead` may read for a queued run before it starts."""
        return ()

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


def register_all(classes: list[type[Step]]) -> None:
    """Register several step classes at once, or none of them: a duplicate name (between
    them or with a step already registered) raises `ValueError` naming it and leaves the
    registry as it was. Plugins and packages register through this."""
    seen: dict[str, type[Step]] = {}
    for cls in classes:
        other = seen.get(cls.name) or REGISTRY.get(cls.name)
        if other is not None and other is not cls:
            raise ValueError(
                f"step name {cls.name!r} registered twice ({_where(other)} and {_where(cls)})"
            )
        seen[cls.name] = cls
    REGISTRY.update(seen)


def unregister(names: Iterable[str]) -> None:
    """Remove steps from the registry (a package deactivated or rolled back)."""
    for name in names:
        REGISTRY.pop(name, None)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def step(
    name: str,
    *,
    inputs: tuple[str, ...] | list[str] = (),
    outputs: tuple[str, ...] | list[str] = (),
    optional_inputs: tuple[str, ...] | list[str] = (),
    version: str = "1",
    writes_artifacts: bool = False,
    auto_register: bool = True,
) -> Callable[[Callable[..., Any]], type[Step]]:
    """Turn a plain function into a registered `Step` class (a decorated-function step).

    The function's parameters named in `inputs`/`optional_inputs` receive the input values;
    its keyword-only parameters are the step's params, typed by their annotations with their
    defaults (use `Annotated[float, msgspec.Meta(description=...)]` to document one); a
    parameter named `ctx` receives the `StepContext`. It returns a mapping by output name,
    a tuple in `outputs` order, or, with one output, the value itself. The docstring is the
    step's documentation. Validation, planning, signatures, progress and cancellation are
    those of any `Step`: the decorator only writes the class for you.
    """

    def wrap(fn: Callable[..., Any]) -> type[Step]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: list[Any] = []
        input_params: list[str] = []
        wants_ctx = False
        for pname, p in sig.parameters.items():
            if pname == "ctx":
                wants_ctx = True
            elif p.kind is inspect.Parameter.KEYWORD_ONLY:
                ptype = hints.get(pname, Any)
                if p.default is inspect.Parameter.empty:
                    fields.append((pname, ptype))
                else:
                    fields.append((pname, ptype, p.default))
            elif pname in inputs or pname in optional_inputs:
                input_params.append(pname)
            else:
                raise TypeError(
                    f"step {name!r}: parameter {pname!r} of {fn.__qualname__} is neither an input "
                    "(list it in inputs=) nor keyword-only (a param) nor ctx"
                )
        missing = [i for i in (*inputs, *optional_inputs) if i not in input_params]
        if missing:
            raise TypeError(
                f"step {name!r}: {fn.__qualname__} has no parameter for input(s) {missing}"
            )
        params_cls = msgspec.defstruct(
            f"{fn.__name__}_Params", fields, forbid_unknown_fields=True, kw_only=True,
            module=fn.__module__,
        )  # fmt: skip
        output_tuple = tuple(outputs)

        def compute(
            self: Step, values: dict[str, Any], ctx: StepContext
        ) -> Mapping[str, Any] | StepResult:
            kwargs = {k: values.get(k) for k in input_params}
            kwargs.update(msgspec.structs.asdict(self.params))
            if wants_ctx:
                kwargs["ctx"] = ctx
            result = fn(**kwargs)
            if isinstance(result, StepResult | Mapping):
                return result
            if isinstance(result, tuple) and len(output_tuple) > 1:
                return dict(zip(output_tuple, result, strict=True))
            if len(output_tuple) == 1:
                return {output_tuple[0]: result}
            raise TypeError(f"step {name!r} returned {type(result).__name__}, expected a mapping")

        cls = type(
            fn.__name__,
            (Step,),
            {
                "__doc__": fn.__doc__,
                "__module__": fn.__module__,
                "__qualname__": fn.__qualname__,
                "name": name,
                "Params": params_cls,
                "input_names": tuple(inputs),
                "optional_inputs": tuple(optional_inputs),
                "output_names": output_tuple,
                "version": version,
                "writes_artifacts": writes_artifacts,
                "compute": compute,
                "function": staticmethod(fn),
            },
        )
        return register(cls) if auto_register else cls

    return wrap
