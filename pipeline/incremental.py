"""The incremental cache: what a session keeps between runs so that clean steps are not rerun.

For every leaf step that succeeded, the cache keeps the signatures it ran with and the output
values it produced. The next run reuses those values for a step whose execution signature
(static part + actual input signatures) is unchanged. Steps never mutate their inputs, so a value
handed out again is exactly the value a full run would compute.

Memory: one entry per leaf step, holding references to its output values (no copies). Entries of
steps that are no longer in the pipeline are dropped at the end of each run (`retain`).
`nbytes()` is what the cache holds in arrays, the figure a memory budget is kept with (the
service evicts whole caches, least recently used first; see docs/memory.md).

A cache is used by one run at a time (the service runs a session's runs one after another);
children of a parallel group update distinct entries, which single dict operations make safe.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .signatures import ABSENT, combine, digest, output_signature


class LeafPlan(Protocol):
    """What signing and caching read of a `planning.LeafPlan` (declared here, not imported:
    planning imports this module)."""

    full_id: str
    inputs: tuple[tuple[str, str], ...]
    optional: tuple[tuple[str, str], ...]
    source_refs: tuple[str, ...]
    params_sig: str
    version_sig: str
    static_sig: str


@dataclass
class CacheEntry:
    """One leaf step's last successful execution."""

    signature: str  # execution signature (static part + actual input signatures)
    params: str  # signature of the params alone (for `params_changed`)
    version: str  # signature of the versions alone (for `version_changed`)
    static: str = ""  # name + params + versions + wiring (a rewiring counts as params_changed)
    sources: dict[str, str] = field(default_factory=dict)  # ref -> source signature
    outputs: dict[str, Any] = field(default_factory=dict)  # context key -> value
    output_signatures: dict[str, str] = field(default_factory=dict)  # context key -> signature
    # The step read `ctx.artifacts_dir` (a writer): its files exist only in `artifacts_dir`, so it
    # is rerun for a run with another artifacts directory.
    wrote_artifacts: bool = False
    artifacts_dir: str | None = None
    # `outputs`' array buffers, {id of the base array: bytes}: counted once per entry, on the
    # first `nbytes()` after the entry is made (an entry is never changed, only replaced).
    buffers: dict[int, int] | None = field(default=None, repr=False, compare=False)


class IncrementalCache:
    """Per-session values and signatures kept between runs."""

    def __init__(self) -> None:
        self.pipeline_key: str | None = None
        self.entries: dict[str, CacheEntry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def nbytes(self) -> int:
        """Bytes of the arrays the cache holds: each buffer counted once (a view counts as
        its base array; a value held by two entries counts once). Other values are small
        (dicts of scalars, paths) and not counted."""
        buffers: dict[int, int] = {}
        for entry in list(self.entries.values()):
            if entry.buffers is None:
                found: dict[int, int] = {}
                seen: set[int] = set()
                for value in list(entry.outputs.values()):
                    _array_buffers(value, seen, found, depth=0)
                entry.buffers = found
            buffers.update(entry.buffers)
        return sum(buffers.values())

    def clear(self) -> None:
        """Forget everything: the next `auto` run is full."""
        self.entries.clear()
        self.pipeline_key = None

    def usable_for(self, pipeline_key: str) -> bool:
        """True when the cache holds results of this pipeline (by name)."""
        return self.pipeline_key == pipeline_key and bool(self.entries)

    def bind(self, pipeline_key: str) -> None:
        """Prepare for a run of `pipeline_key`; results of another pipeline are dropped."""
        if self.pipeline_key != pipeline_key:
            self.entries.clear()
            self.pipeline_key = pipeline_key

    def get(self, step_id: str) -> CacheEntry | None:
        return self.entries.get(step_id)

    def put(self, step_id: str, entry: CacheEntry) -> None:
        self.entries[step_id] = entry

    def discard(self, step_id: str) -> None:
        self.entries.pop(step_id, None)

    def retain(self, step_ids: Iterable[str]) -> None:
        """Drop entries of steps not in `step_ids`."""
        keep = set(step_ids)
        for step_id in [s for s in self.entries if s not in keep]:
            del self.entries[step_id]


def _array_buffers(value: Any, seen: set[int], found: dict[int, int], depth: int) -> None:
    """Add the base arrays reachable from `value` to `found` ({id: nbytes})."""
    if isinstance(value, np.ndarray):
        root = value
        while isinstance(root.base, np.ndarray):
            root = root.base
        found[id(root)] = int(root.nbytes)
        return
    if depth >= 4 or value is None or isinstance(value, str | bytes | int | float | bool):
        return
    if isinstance(value, Mapping):
        children: Iterable[Any] = list(value.values())
    elif isinstance(value, list | tuple):
        children = value
    else:
        # Step values wrap their arrays in small objects (a curve, a masked array, binning):
        # dataclasses, msgspec Structs or plain objects, reached through their attributes.
        if id(value) in seen:
            return
        seen.add(id(value))
        children = [getattr(value, name, None) for name in _attribute_names(type(value), value)]
    for child in children:
        _array_buffers(child, seen, found, depth + 1)


def _attribute_names(cls: type, value: Any) -> list[str]:
    names: list[str] = list(getattr(value, "__dict__", {}))
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else [s for s in slots if s != "__dict__"]
        names += list(klass.__dict__.get("__struct_fields__", ()))
    return list(dict.fromkeys(names))


def execution_signature(
    leaf: LeafPlan,
    signatures: Mapping[str, str],
    values: Mapping[str, Any],
    source_signatures: Mapping[str, str],
) -> str:
    """A step's execution signature: its static part (name, params, versions, wiring), the
    actual signatures of its input values, and those of the sources it reads."""
    return combine(
        leaf.static_sig,
        [
            *(signatures[key] for _, key in leaf.inputs),
            *(signatures.get(key, ABSENT) if values.get(key) is not None else ABSENT for _, key in leaf.optional),
            *(source_signatures.get(ref, ABSENT) for ref in leaf.source_refs),
        ],
    )  # fmt: skip


def remember(
    cache: IncrementalCache,
    leaf: LeafPlan,
    signature: str,
    produced: dict[str, Any],
    signatures: dict[str, str],
    *,
    source_signatures: Mapping[str, str],
    changed: bool,
    wrote_artifacts: bool,
    artifacts_dir: str | None,
) -> None:
    """Sign a step's fresh outputs (into `signatures`) and keep them in the cache.

    `changed`: a source the step reads was declared changed although its identity may look the
    same, so its large outputs (signed by producer, not by content) must look new downstream.
    """
    salt = digest(signature, "changed", secrets.token_hex(8)) if changed else signature
    out_sigs = {key: output_signature(salt, key, value) for key, value in produced.items()}
    signatures.update(out_sigs)
    cache.put(
        leaf.full_id,
        CacheEntry(
            signature=signature, params=leaf.params_sig, version=leaf.version_sig,
            static=leaf.static_sig,
            sources={ref: source_signatures.get(ref, ABSENT) for ref in leaf.source_refs},
            outputs=produced, output_signatures=out_sigs,
            wrote_artifacts=wrote_artifacts, artifacts_dir=artifacts_dir,
        ),
    )  # fmt: skip
