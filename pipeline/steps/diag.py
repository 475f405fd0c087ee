"""Diagnostic steps for testing deployments: sleep, fail, emit progress, do nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from ..errors import CancelledError, StepFailure
from ..step import Step, StepContext, StepResult, register


@register
class DiagNoop(Step):
    """Do nothing; passes its optional input `value` through to output `value`."""

    name = "diag.noop"
    optional_inputs = ("value",)
    output_names = ("value",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        return {"value": inputs.get("value")}


@register
class DiagSleep(Step):
    """Sleep `seconds` in `ticks` equal slices, emitting a progress event after each slice.

    Cancellable between ticks: a cancel wakes the sleep at once and the step raises
    `CancelledError`.
    """

    name = "diag.sleep"
    output_names = ("done",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        seconds: Annotated[float, msgspec.Meta(ge=0, description="Total time to sleep.")] = 1.0
        ticks: Annotated[int, msgspec.Meta(ge=1, le=100_000, description="Progress events.")] = 10

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, DiagSleep.Params)
        slice_s = p.seconds / p.ticks
        for tick in range(1, p.ticks + 1):
            if ctx.cancel.wait(slice_s):
                raise CancelledError(f"{ctx.step_id}: cancelled after {tick - 1}/{p.ticks} ticks")
            ctx.progress(tick / p.ticks, f"tick {tick}/{p.ticks}")
        return {"done": True}


@register
class DiagFail(Step):
    """Fail on purpose: `mode: raise` raises `StepFailure(message)`; `return` reports failure."""

    name = "diag.fail"
    output_names = ("done",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        message: Annotated[str, msgspec.Meta(description="The failure message.")] = "diag.fail"
        mode: Annotated[
            Literal["raise", "return"],
            msgspec.Meta(description="`raise` an exception or `return` a failed StepResult."),
        ] = "raise"

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any] | StepResult:
        p = self.params
        assert isinstance(p, DiagFail.Params)
        if p.mode == "return":
            return StepResult(success=False, message=p.message)
        raise StepFailure(p.message)


@register
class DiagEmit(Step):
    """Emit `count` progress events as fast as possible, each carrying `payload_bytes` of text."""

    name = "diag.emit"
    output_names = ("done",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        count: Annotated[int, msgspec.Meta(ge=0, le=10_000_000, description="Events to emit.")] = (
            100
        )
        payload_bytes: Annotated[
            int, msgspec.Meta(ge=0, le=1_000_000, description="Message length of each event.")
        ] = 0

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, DiagEmit.Params)
        payload = "x" * p.payload_bytes if p.payload_bytes else None
        count = p.count
        for n in range(1, count + 1):
            ctx.progress(n / count, payload)
            if n % 1024 == 0:
                ctx.raise_if_cancelled()  # cheap check, but not per event: this step is a load test
        return {"done": True}
