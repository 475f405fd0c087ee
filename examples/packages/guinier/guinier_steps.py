"""The `guinier.fit` step: radius of gyration Rg and forward intensity I0 from the low-q part
of a reduced curve, ln I(q) = ln I0 - (Rg^2 / 3) q^2, valid while q Rg stays below ~1.3.

Written as a decorated function (`pipeline.step.step`); docs/writing-steps.md walks through it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Annotated, Any

import msgspec
import numpy as np

from pipeline.errors import StepFailure
from pipeline.step import StepContext, step
from pipeline.uarray import Curve


@step("guinier.fit", inputs=("curve",), outputs=("fit",), version="1", writes_artifacts=True)
def guinier_fit(
    curve: Curve,
    *,
    q_rg_max: Annotated[float, msgspec.Meta(gt=0, description="Upper limit of q*Rg of the fitted range.")] = 1.3,
    min_points: Annotated[int, msgspec.Meta(ge=3, description="Fewest points a fit may use.")] = 5,
    iterations: Annotated[int, msgspec.Meta(ge=1, le=50, description="Refinements of the q range.")] = 10,
    ctx: StepContext,
) -> dict[str, Any]:
    """Guinier fit of a reduced curve: Rg and I0 with their standard uncertainties.

    Fits ln I against q^2 by weighted least squares (weights from `idev`) over the lowest-q
    points with positive intensity, then shrinks the range to q*Rg <= `q_rg_max` and refits
    until it no longer changes. Output `fit`: `{rg, rg_err, i0, i0_err, q_min, q_max,
    n_points}` (Rg in the curve's inverse q unit, nm for q in 1/nm).
    """
    if not isinstance(curve, Curve):
        raise StepFailure("guinier.fit needs a curve from integrate.azimuthal")
    good = (curve.i > 0) & (curve.idev > 0) & np.isfinite(curve.i)
    q, i, idev = curve.q[good], curve.i[good], curve.idev[good]
    if len(q) < min_points:
        raise StepFailure(f"guinier.fit: only {len(q)} points with positive intensity (need {min_points})")
    n = max(min_points, len(q) // 4)
    for k in range(iterations):
        ctx.raise_if_cancelled()
        ctx.progress(k / iterations, f"fitting {n} points")
        slope, intercept, cov = _weighted_line(q[:n] ** 2, np.log(i[:n]), idev[:n] / i[:n])
        if slope >= 0:
            raise StepFailure("guinier.fit: ln I does not fall with q^2 at low q (no Guinier region)")
        rg = math.sqrt(-3.0 * slope)
        new_n = max(min_points, int(np.searchsorted(q, q_rg_max / rg, side="right")))
        if new_n == n:
            break
        n = min(new_n, len(q))
    rg_err = math.sqrt(cov[0, 0]) * 3.0 / (2.0 * rg)
    i0 = math.exp(intercept)
    fit = {"rg": rg, "rg_err": rg_err, "i0": i0, "i0_err": i0 * math.sqrt(cov[1, 1]),
           "q_min": float(q[0]), "q_max": float(q[n - 1]), "n_points": int(n)}  # fmt: skip
    if ctx.artifacts_dir is not None:  # guinier.json among the run's artifacts (dashboard, API)
        tmp = ctx.artifacts_dir / "guinier.json.tmp"
        tmp.write_text(json.dumps(fit, indent=2))
        os.replace(tmp, ctx.artifacts_dir / "guinier.json")
    return {"fit": fit}


def _weighted_line(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Slope, intercept and their covariance of y = a x + b weighted by 1/sigma^2."""
    w = 1.0 / np.square(sigma)
    design = np.stack([x, np.ones_like(x)], axis=1)
    normal = design.T @ (design * w[:, None])
    cov = np.linalg.inv(normal)
    a, b = cov @ (design.T @ (w * y))
    return float(a), float(b), cov


def on_activate(ctx: Any) -> None:
    """Runs once when a session first uses the package: a place to check the environment."""
    ctx.log.info("guinier %s active from %s", ctx.version, ctx.path)


def on_after_run(ctx: Any, summary: dict[str, Any]) -> None:
    """Runs after every run of the package's pipeline with its status and error."""
    ctx.log.info("run %s finished %s", summary["run_id"], summary["status"])
