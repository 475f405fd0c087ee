"""The one exception root of pipeline packages."""

from __future__ import annotations

from ..errors import PipelineError

__all__ = ["ActivationError", "PackageError", "UnsafeArchiveError"]


class PackageError(PipelineError):
    """A package cannot be read, installed or found (the message says which and why)."""


class UnsafeArchiveError(PackageError):
    """A zip refused before anything was written: an escaping path, a link, too many files,
    too large once unpacked."""


class ActivationError(PackageError):
    """A package could not be activated (hook exception, import error, version conflict);
    nothing of it stays active."""
