"""Example pipelines shipped with the package (`runwire examples`, `runwire run saxs`).

Each example is one `<name>.yaml` file in this folder, installed as package data.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["example_names", "example_path", "example_text"]


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def example_names() -> list[str]:
    """Names of the bundled examples, sorted (`saxs`, ...)."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def example_path(name: str) -> Path:
    """Path of the example's YAML file. Raises `KeyError` for an unknown name."""
    path = _folder() / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise KeyError(name)
    return path


def example_text(name: str) -> str:
    """The example's YAML text. Raises `KeyError` for an unknown name."""
    return example_path(name).read_text(encoding="utf-8")
