"""A run's inputs, fixed when it is accepted: its sources with each file's identity then.

A run reduces what it was submitted with, not whatever the session's sources are when a worker
gets to it: a burst of N samples queued behind a busy worker is N runs of N samples. So at
acceptance (the 202) the runtime freezes the session's sources (`accept_sources`: confined,
checked readable, and `os.stat`ed), stores them with the run, and the worker reads exactly those.

A file rewritten between acceptance and the end of the run is not the data the run was given:
`changed_inputs` compares the identity recorded at acceptance with the file now, and the run
fails with `SOURCE_CHANGED` rather than report success on other data (checked before the runner
reads anything and again after it is done, before sinks deliver anything). Everything here is
synchronous file-system work, called from the I/O thread or a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.step import SourceSpec
from service.contract.records import FileIdentity, RunSource, SampleRef, SourceRecord
from service.runtime.validation import validate_sources

__all__ = [
    "SOURCE_CHANGED",
    "accept_sources",
    "as_run_sources",
    "changed_inputs",
    "file_identity",
    "sample_of",
    "source_specs",
]

SOURCE_CHANGED = "SOURCE_CHANGED"


def file_identity(location: str) -> FileIdentity | None:
    """The file's identity now, or None when it cannot be stat'ed."""
    try:
        st = os.stat(location)
    except OSError:
        return None
    return FileIdentity(
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
    )


def accept_sources(
    sources: Mapping[str, SourceRecord], read_roots: Iterable[Path]
) -> dict[str, RunSource]:
    """Validate sources as a submit does (403/422 `ServiceError`) and freeze them for a run."""
    checked = validate_sources(sources, read_roots)
    return {
        ref: RunSource(
            type=s.type,
            location=s.location,
            options=dict(s.options),
            identity=file_identity(s.location),
        )
        for ref, s in checked.items()
    }


def changed_inputs(sources: Mapping[str, RunSource]) -> str | None:
    """A message naming the first source whose file is not the one accepted, or None."""
    for ref, source in sources.items():
        if source.identity is None:
            continue
        now = file_identity(source.location)
        if now is None:
            return f"source {ref!r}: {source.location} was removed after the run was accepted"
        if now != source.identity:
            return (
                f"source {ref!r}: {source.location} was rewritten after the run was accepted"
                f" (size {source.identity.size} -> {now.size}, inode {source.identity.inode}"
                f" -> {now.inode}); submit it again to reduce the new content"
            )
    return None


def source_specs(sources: Mapping[str, RunSource]) -> dict[str, SourceSpec]:
    """The frozen sources as the runner takes them (copies)."""
    return {
        ref: SourceSpec(type=s.type, location=s.location, options=dict(s.options))
        for ref, s in sources.items()
    }


def sample_of(sources: Mapping[str, SourceRecord]) -> SampleRef | None:
    """The `sample` source as the Run object names it, or None."""
    sample = sources.get("sample")
    if sample is None:
        return None
    return SampleRef(location=sample.location, type=sample.type)


def as_run_sources(sources: Mapping[str, SourceRecord]) -> dict[str, RunSource]:
    """Sources without identities (runs stored before identities were recorded)."""
    return {
        ref: RunSource(type=s.type, location=s.location, options=dict(s.options))
        for ref, s in sources.items()
    }
