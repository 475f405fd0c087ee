"""How built-in steps find the file behind a source ref (`ctx.sources[ref]`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from ..step import StepContext

# Source types each reader accepts. An empty type is accepted by every reader (a caller that
# registered a bare path); anything else must match.
HDF5_TYPES = frozenset({"hdf5", "h5", "nexus", ""})
NPY_TYPES = frozenset({"npy", ""})
JSON_TYPES = frozenset({"json", ""})


def source_path(ctx: StepContext, ref: str, types: frozenset[str]) -> Path | None:
    """The file path of source `ref`, or None when the ref is not registered.

    A missing ref means an optional source was not given: the runner has already refused to
    start when a *required* source is missing, so readers turn absence into `None` outputs.
    """
    spec = ctx.sources.get(ref)
    if spec is None:
        return None
    if spec.type not in types:
        wanted = " or ".join(sorted(t for t in types if t))
        raise SourceError(f"source {ref!r} has type {spec.type!r}; this step reads {wanted}")
    return Path(spec.location)
