"""Checks on what a request names, done before anything is queued (contract section 4).

Everything here is synchronous (it touches the file system or parses YAML) and is called by the
runtime from its I/O thread, never on the event loop. Each check raises a `ServiceError` with the
contract's code: FORBIDDEN (403) for a location outside the configured roots, INVALID_REQUEST
(422) for an unreadable file or a path that cannot name one (NUL byte, unknown `~user`, a
segment over 255 bytes), PIPELINE_INVALID (422) with every problem of a pipeline file,
PAYLOAD_TOO_LARGE (413) for a pipeline file over 1 MiB.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.errors import PipelineFileError
from pipeline.loader import PipelineSpec, load_pipeline_text
from pipeline.safeio import FileTooLargeError, NotRegularFileError, open_regular, read_regular_bytes
from service.contract.errors import ServiceError
from service.contract.models import PipelineInput
from service.contract.records import SourceRecord

__all__ = [
    "check_readable",
    "confine",
    "load_pipeline",
    "validate_sinks",
    "validate_sources",
]

# A pipeline file is YAML text; the HTTP layer already caps bodies at 1 MiB, and a file named by
# path gets the same cap so that `path` is not a way around it.
MAX_PIPELINE_BYTES = 1 << 20


def confine(location: str | os.PathLike[str], roots: Iterable[Path], *, what: str) -> Path:
    """Resolve `location` (symlinks included) and require it inside one of `roots`.

    No roots configured means no confinement. Raises FORBIDDEN naming `what` and the location.
    """
    resolved = _resolved(location, what=what)
    roots = tuple(roots)
    if not roots:
        return resolved
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve(strict=False)):
            return resolved
    raise ServiceError("FORBIDDEN", f"{what} {str(location)!r} is outside the allowed roots")


# Linux limits (NAME_MAX, PATH_MAX): a longer name can never be opened, so it is a bad request,
# not an OSError deep in a later open().
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096


def _resolved(location: str | os.PathLike[str], *, what: str) -> Path:
    """`location` with `~` expanded and symlinks resolved; INVALID_REQUEST (422) for a path that
    cannot name a file: a NUL byte, an unknown `~user`, a segment over 255 bytes or a whole
    path over 4096, a symlink loop."""

    def bad(reason: str) -> ServiceError:
        return ServiceError("INVALID_REQUEST", f"{what} {str(location)!r}: {reason}")

    text = os.fspath(location)
    if "\0" in text:
        raise bad("a path cannot contain a NUL byte")
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        raise bad("the path cannot be encoded for this file system") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise bad(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if any(len(segment) > MAX_SEGMENT_BYTES for segment in encoded.split(b"/")):
        raise bad(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        raise bad("cannot expand '~': no such user or no home directory") from None
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        raise bad(f"cannot resolve the path: {getattr(exc, 'strerror', None) or exc}") from None


def check_readable(path: Path, *, what: str) -> None:
    """Raise INVALID_REQUEST naming the file if it is missing, not a regular file (a FIFO, a
    device, a directory: `pipeline.safeio`), or unreadable. Never blocks on what it opens."""
    try:
        with open_regular(path) as handle:
            handle.read(1)
    except OSError as exc:
        raise unreadable(path, exc, what=what) from None


def unreadable(path: Path, exc: OSError, *, what: str) -> ServiceError:
    """The INVALID_REQUEST (422) for a file that could not be opened or read."""
    if isinstance(exc, NotRegularFileError):
        return ServiceError("INVALID_REQUEST", f"{what}: {exc}")
    reason = exc.strerror or type(exc).__name__
    return ServiceError("INVALID_REQUEST", f"{what}: cannot read {path}: {reason}")


def load_pipeline(pipeline: PipelineInput, read_roots: Iterable[Path]) -> tuple[PipelineSpec, str]:
    """Load a pipeline given inline or by path; returns the spec and its text.

    Every problem of the file is listed in `errors` as `{"path", "message"}`.
    """
    if pipeline.path is not None:
        path = confine(pipeline.path, read_roots, what="pipeline path")
        try:
            # One open, checked on its descriptor (a regular file, at most 1 MiB) and read with
            # a bound: a FIFO or /dev/zero is refused at once instead of blocking or flooding.
            data = read_regular_bytes(path, MAX_PIPELINE_BYTES)
        except FileTooLargeError:
            # The contract's 1 MiB limit covers pipeline YAML however it arrives: a file named
            # by `path` gets the same 413 as inline `yaml_text` in an over-long body.
            raise ServiceError(
                "PAYLOAD_TOO_LARGE", f"pipeline file {path} is larger than 1 MiB"
            ) from None
        except OSError as exc:
            raise unreadable(path, exc, what="pipeline") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceError("PIPELINE_INVALID", f"pipeline file {path} is not UTF-8") from exc
        filename = str(path)
    else:
        assert pipeline.yaml_text is not None  # PipelineInput enforces exactly one
        text = pipeline.yaml_text
        filename = "<pipeline>"
    return parse_pipeline(text, filename=filename), text


def parse_pipeline(text: str, *, filename: str = "<pipeline>") -> PipelineSpec:
    """`load_pipeline_text`, with its problems turned into a PIPELINE_INVALID error."""
    try:
        return load_pipeline_text(text, filename=filename)
    except PipelineFileError as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        raise ServiceError(
            "PIPELINE_INVALID",
            f"pipeline is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''})",
            errors=problems,
        ) from None


def validate_sources(
    sources: Mapping[str, SourceRecord], read_roots: Iterable[Path]
) -> dict[str, SourceRecord]:
    """Confine and check every source file; returns them with resolved absolute locations."""
    roots = tuple(read_roots)
    checked: dict[str, SourceRecord] = {}
    for ref, source in sources.items():
        what = f"source {ref!r}"
        path = confine(source.location, roots, what=what)
        check_readable(path, what=what)
        checked[ref] = SourceRecord(type=source.type, location=str(path), options=source.options)
    return checked


def validate_sinks(
    sinks: Mapping[str, SourceRecord], write_roots: Iterable[Path]
) -> dict[str, SourceRecord]:
    """Confine every sink location to the write roots; returns them with resolved locations.

    The file itself is written after a successful run; here we only check that its directory
    exists (or is the location itself), so a typo is reported now and not as a failed run.
    """
    roots = tuple(write_roots)
    checked: dict[str, SourceRecord] = {}
    for ref, sink in sinks.items():
        path = confine(sink.location, roots, what=f"sink {ref!r}")
        try:
            directory = path if path.is_dir() else path.parent
            exists = directory.is_dir()
        except OSError as exc:  # e.g. ENAMETOOLONG once `~` expanded or symlinks resolved
            raise ServiceError(
                "INVALID_REQUEST", f"sink {ref!r}: cannot use {path}: {exc.strerror or exc}"
            ) from None
        if not exists:
            raise ServiceError(
                "INVALID_REQUEST", f"sink {ref!r}: directory {directory} does not exist"
            )
        checked[ref] = SourceRecord(type=sink.type, location=str(path), options=sink.options)
    return checked
