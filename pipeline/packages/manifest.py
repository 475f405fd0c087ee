"""`runwire-package.yaml`: what a package is made of.

name: guinier                 # letters, digits, '_' or '-'
version: "0.1.0"
description: Guinier fit      # optional
pipelines: [guinier.yaml]     # pipeline files, relative to the package folder
modules: [guinier_steps]      # Python modules (files next to the manifest) defining steps
requirements: requirements.txt   # optional: vendored into vendor/ with pip
hooks:                        # optional, each "module:function"
  on_activate: guinier_steps:on_activate
  on_after_run: guinier_steps:on_after_run
network: false                # optional: true allows pip to use the index (see install)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .errors import PackageError

__all__ = ["MANIFEST_NAME", "PackageManifest", "read_manifest"]

MANIFEST_NAME = "runwire-package.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HOOK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_MAX_MANIFEST = 64 * 1024


class Hooks(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    on_activate: str | None = None
    on_after_run: str | None = None


class PackageManifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A parsed, checked `runwire-package.yaml`."""

    name: str
    version: str
    pipelines: list[str]
    modules: list[str] = msgspec.field(default_factory=list)
    description: str = ""
    requirements: str | None = None
    hooks: Hooks = msgspec.field(default_factory=Hooks)
    network: bool = False


def _relative(value: str, what: str, root: Path) -> None:
    p = Path(value)
    if p.is_absolute() or ".." in p.parts or not value:
        raise PackageError(f"{MANIFEST_NAME}: {what} {value!r} must be a path inside the package")
    if not (root / p).is_file():
        raise PackageError(f"{MANIFEST_NAME}: {what} {value!r} does not exist in the package")


def read_manifest(folder: Path) -> PackageManifest:
    """Read and check `folder/runwire-package.yaml`; `PackageError` naming the problem."""
    path = folder / MANIFEST_NAME
    try:
        if path.is_symlink() or not path.is_file():
            raise PackageError(f"{folder} has no {MANIFEST_NAME} (not a runwire package)")
        if path.stat().st_size > _MAX_MANIFEST:
            raise PackageError(f"{MANIFEST_NAME} is larger than {_MAX_MANIFEST} bytes")
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PackageError(f"cannot read {path}: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("version"), int | float):
        raw["version"] = str(raw["version"])
    try:
        manifest = msgspec.convert(raw, PackageManifest)
    except msgspec.ValidationError as exc:
        raise PackageError(f"{MANIFEST_NAME}: {exc}") from None
    if not _NAME.match(manifest.name):
        raise PackageError(
            f"{MANIFEST_NAME}: name {manifest.name!r} must be letters, digits, '_' or '-'"
        )
    if not _VERSION.match(manifest.version):
        raise PackageError(f"{MANIFEST_NAME}: version {manifest.version!r} is not a version")
    if not manifest.pipelines:
        raise PackageError(f"{MANIFEST_NAME}: pipelines must list at least one pipeline file")
    for pipeline in manifest.pipelines:
        _relative(pipeline, "pipeline", folder)
    for module in manifest.modules:
        if not _MODULE.match(module):
            raise PackageError(f"{MANIFEST_NAME}: module {module!r} is not a Python module name")
    if manifest.requirements is not None:
        _relative(manifest.requirements, "requirements", folder)
    for hook in (manifest.hooks.on_activate, manifest.hooks.on_after_run):
        if hook is not None and not _HOOK.match(hook):
            raise PackageError(f"{MANIFEST_NAME}: hook {hook!r} must be module:function")
    return manifest
