"""Element-wise array arithmetic with propagated uncertainties (see `pipeline.uarray`).

Operands may be `UArray`s (value + variance), plain arrays or numbers (exact). An absent `b`
(an optional source that was not given) leaves `a` unchanged, so `array.subtract` of an optional
dark frame is a no-op without one; an absent `a` gives an absent result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from ..errors import StepFailure
from ..step import Step, StepContext, register
from ..uarray import UArray, as_uarray


class _Binary(Step):
    input_names = ("a",)
    optional_inputs = ("b",)
    output_names = ("result",)
    operation: ClassVar[str]

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        a, b = inputs.get("a"), inputs.get("b")
        if a is None:
            return {"result": None}
        ua = as_uarray(a, "input a")
        if b is None:
            return {"result": ua}
        ub = as_uarray(b, "input b")
        if ub.value.ndim and ua.value.ndim and ub.shape != ua.shape:
            raise StepFailure(f"shapes differ: a is {ua.shape}, b is {ub.shape}")
        return {"result": getattr(ua, self.operation)(ub)}


@register
class ArrayAdd(_Binary):
    """`a + b`; variances add."""

    name = "array.add"
    operation = "add"


@register
class ArraySubtract(_Binary):
    """`a - b`; variances add."""

    name = "array.subtract"
    operation = "subtract"


@register
class ArrayMultiply(_Binary):
    """`a * b`; relative variances add (first order)."""

    name = "array.multiply"
    operation = "multiply"


@register
class ArrayDivide(_Binary):
    """`a / b`; relative variances add (first order)."""

    name = "array.divide"
    operation = "divide"


@register
class ArrayScale(Step):
    """`a * factor + offset` for exact numbers `factor` and `offset`."""

    name = "array.scale"
    input_names = ("a",)
    output_names = ("result",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        factor: Annotated[float, msgspec.Meta(description="Multiplier.")] = 1.0
        offset: Annotated[float, msgspec.Meta(description="Added after scaling.")] = 0.0

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, ArrayScale.Params)
        a = inputs.get("a")
        if a is None:
            return {"result": None}
        result = as_uarray(a, "input a").scale(p.factor)
        if p.offset:
            result = result.add(p.offset)
        return {"result": result}


@register
class ArrayPoisson(Step):
    """Counts as a `UArray` with Poisson variance (variance = counts)."""

    name = "array.poisson"
    input_names = ("counts",)
    output_names = ("result",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        counts = inputs.get("counts")
        if counts is None:
            return {"result": None}
        if isinstance(counts, UArray):
            counts = counts.value
        return {"result": UArray.poisson(counts)}
