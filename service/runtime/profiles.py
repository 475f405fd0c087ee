"""Source profiles (`GET /v1/source-templates`): named sets of required and optional source refs.

A session created with `source_profile` requires the profile's required refs in addition to the
ones its pipeline marks `required: true`; a run is refused (409 MISSING_SOURCES) until they are
all set.
"""

from __future__ import annotations

from service.contract.errors import ServiceError
from service.contract.models import SourceTemplate

__all__ = ["TEMPLATES", "get_template", "required_refs", "source_templates"]

TEMPLATES: dict[str, SourceTemplate] = {
    "saxs": SourceTemplate(
        name="saxs",
        description=(
            "Small-angle scattering: a sample frame, optionally a background (e.g. empty "
            "capillary) and a dark frame, all NeXus-style HDF5."
        ),
        required=["sample"],
        optional=["background", "dark"],
    ),
    "generic": SourceTemplate(
        name="generic",
        description="No refs imposed: the pipeline's own `sources` declaration decides.",
        required=[],
        optional=[],
    ),
}


def source_templates() -> list[SourceTemplate]:
    """Every built-in profile, in a stable order."""
    return list(TEMPLATES.values())


def get_template(name: str) -> SourceTemplate:
    """The profile called `name`; an unknown name is a 422 naming the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise ServiceError(
            "INVALID_REQUEST",
            f"unknown source profile {name!r} (known: {known})",
            errors=[{"path": "$.source_profile", "message": f"unknown profile {name!r}"}],
        ) from None


def required_refs(pipeline_sources: dict[str, bool], profile: str | None) -> list[str]:
    """Refs a run needs: required by the pipeline, plus those the profile requires."""
    refs = [ref for ref, required in pipeline_sources.items() if required]
    if profile is not None:
        refs += [ref for ref in get_template(profile).required if ref not in refs]
    return refs
