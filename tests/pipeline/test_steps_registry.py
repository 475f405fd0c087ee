"""Every built-in step the contract names is registered and documented from its class."""

from __future__ import annotations

import msgspec
import pytest

import pipeline.steps  # noqa: F401
from pipeline.step import REGISTRY, Step

CONTRACT_STEPS = {
    "hdf5.read", "hdf5.attr", "npy.read", "json.read", "nexus.detector_geometry",
    "array.add", "array.subtract", "array.multiply", "array.divide", "array.scale",
    "mask.read", "mask.threshold", "mask.combine",
    "normalise.dark", "normalise.time", "normalise.flux", "normalise.transmission",
    "normalise.solid_angle", "geometry.q_map", "integrate.prepare_bins", "integrate.azimuthal",
    "curve.subtract_background", "write.nxcansas", "write.csv",
    "diag.sleep", "diag.fail", "diag.emit", "diag.noop",
}  # fmt: skip


def test_all_contract_steps_are_registered() -> None:
    assert not CONTRACT_STEPS - set(REGISTRY)


@pytest.mark.parametrize("name", sorted(CONTRACT_STEPS))
def test_step_is_documented_and_strict(name: str) -> None:
    cls: type[Step] = REGISTRY[name]
    assert cls.__doc__ and cls.__doc__.strip().splitlines()[0].strip()
    info = msgspec.inspect.type_info(cls.Params)
    assert isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields
    # `runwire steps` and docs/steps.md show each param's description: none may be missing.
    _, components = msgspec.json.schema_components([cls.Params])
    (schema,) = components.values()
    for param, prop in schema.get("properties", {}).items():
        assert prop.get("description"), f"{name}: param {param} has no description"
