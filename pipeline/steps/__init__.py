"""Built-in steps. Importing this package registers every one of them in `pipeline.step.REGISTRY`."""

from __future__ import annotations

from . import arrays, checks, curves, diag, geometry, integrate, io, masks, normalise, writers

__all__ = [
    "arrays",
    "checks",
    "curves",
    "diag",
    "geometry",
    "integrate",
    "io",
    "masks",
    "normalise",
    "writers",
]
