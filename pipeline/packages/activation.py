"""Activating an installed package in this process, all or nothing.

Activation puts the package's `vendor/` and then its own folder at the front of `sys.path`,
imports its `modules` (their steps register themselves), then calls `on_activate(ctx)`
synchronously. Any failure -- an import error, a step name already taken, an exception in the
hook, or a conflict with what is already loaded -- raises `ActivationError` naming the cause
after undoing everything: `sys.path`, the modules imported on the way and the registered steps
are back as they were.

A conflict is refused rather than half-worked-around, because one process has one
`sys.modules`: two active packages vendoring different versions of one distribution, a vendored
or package module already imported from somewhere else (the server's own environment, another
package), or another version of the same package already active.

Process-wide state, guarded by one lock: callers may activate from any thread.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..step import REGISTRY
from .errors import ActivationError
from .install import read_install_record

__all__ = [
    "ActivePackage",
    "PackageContext",
    "activate",
    "active_packages",
    "after_run",
    "deactivate",
]

log = logging.getLogger("pipeline.packages")


@dataclass(frozen=True)
class PackageContext:
    """What a hook receives: the package's name, version, folder and a logger."""

    name: str
    version: str
    path: Path
    log: logging.Logger


@dataclass
class ActivePackage:
    name: str
    version: str
    path: Path
    record: dict[str, Any]
    modules: tuple[str, ...] = ()  # every module imported while activating
    steps: tuple[str, ...] = ()
    on_after_run: Callable[..., Any] | None = None
    users: set[str] = field(default_factory=set)  # who asked for it (session ids)

    @property
    def context(self) -> PackageContext:
        return PackageContext(
            self.name, self.version, self.path, logging.getLogger(f"package.{self.name}")
        )

    def describe(self) -> dict[str, Any]:
        """`{name, version, vendored: {dist: version}}` for a run's manifest."""
        return {"name": self.name, "version": self.version,
                "vendored": {d["name"]: d["version"] for d in self.record.get("vendored", [])}}  # fmt: skip


_lock = threading.RLock()
_active: dict[str, ActivePackage] = {}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _resolve(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    fn: object = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ActivationError(f"hook {spec!r} is not a function")
    return fn


def _loaded_from_elsewhere(module: str, inside: tuple[Path, ...]) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        return None
    where: str | None = getattr(mod, "__file__", None)
    if where is None:
        return "a built-in module"
    if any(Path(where).resolve().is_relative_to(p) for p in inside):
        return None
    return where


def _check_conflicts(path: Path, record: dict[str, Any]) -> None:
    name, version = str(record["name"]), str(record["version"])
    same = _active.get(name)
    if same is not None and same.version != version:
        raise ActivationError(
            f"package {name} {same.version} is active; {version} cannot be active at the same time"
        )
    inside = (path.resolve(),)
    for dist in record.get("vendored", []):
        for other in _active.values():
            for theirs in other.record.get("vendored", []):
                if (
                    _norm(theirs["name"]) == _norm(dist["name"])
                    and theirs["version"] != dist["version"]
                ):
                    raise ActivationError(
                        f"version conflict: package {name} needs {dist['name']} {dist['version']} but "
                        f"active package {other.name} uses {dist['name']} {theirs['version']}"
                    )
        for top in dist.get("top_level", []):
            if any(top in o.modules for o in _active.values()):
                continue  # the same version, shared with an active package (checked above)
            where = _loaded_from_elsewhere(top, inside)
            if where is not None:
                raise ActivationError(
                    f"version conflict: package {name} vendors {dist['name']} {dist['version']} but "
                    f"module {top!r} is already loaded from {where}"
                )
    for module in record.get("modules", []):
        where = _loaded_from_elsewhere(module.split(".", 1)[0], inside)
        if where is not None:
            raise ActivationError(
                f"package {name}: module {module!r} is already loaded from {where}"
            )


def _own_modules(names: set[str], path: Path) -> tuple[str, ...]:
    """The modules among `names` loaded from the package folder (its own and `vendor/`).
    Others it happened to import first (stdlib, the server's numpy) stay loaded: unloading a
    C extension and importing it again does not work."""
    root = path.resolve()
    own = []
    for name in names:
        where = getattr(sys.modules.get(name), "__file__", None)
        if where is not None and Path(where).resolve().is_relative_to(root):
            own.append(name)
    return tuple(sorted(own))


def activate(path: Path, user: str | None = None) -> ActivePackage:
    """Activate the installed package in `path` (see module doc); `user` (a session id) is
    recorded so that `deactivate` only unloads it once nobody uses it."""
    record = read_install_record(path)
    if record is None or record.get("status") != "installed":
        raise ActivationError(f"{path} is not an installed package")
    name = str(record["name"])
    with _lock:
        current = _active.get(name)
        if current is not None and current.version == str(record["version"]):
            if user is not None:
                current.users.add(user)
            return current
        _check_conflicts(path, record)
        saved_path = list(sys.path)
        saved_modules = set(sys.modules)
        saved_registry = dict(REGISTRY)
        try:
            vendor = path / "vendor"
            sys.path[:0] = [str(p) for p in (vendor, path) if p.is_dir()]
            importlib.invalidate_caches()
            for module in record.get("modules", []):
                try:
                    importlib.import_module(module)
                except Exception as exc:
                    raise ActivationError(
                        f"package {name}: importing {module!r} failed: {type(exc).__name__}: {exc}"
                    ) from exc
            hooks = record.get("hooks") or {}
            after = _resolve(hooks["on_after_run"]) if hooks.get("on_after_run") else None
            active = ActivePackage(
                name, str(record["version"]), path, record,
                modules=_own_modules(set(sys.modules) - saved_modules, path),
                steps=tuple(sorted(n for n in REGISTRY if saved_registry.get(n) is not REGISTRY[n])),
                on_after_run=after,
            )  # fmt: skip
            if hooks.get("on_activate"):
                hook = _resolve(hooks["on_activate"])
                try:
                    hook(active.context)
                except Exception as exc:
                    raise ActivationError(
                        f"package {name}: on_activate raised {type(exc).__name__}: {exc}"
                    ) from exc
        except BaseException as exc:
            sys.path[:] = saved_path
            for module in _own_modules(set(sys.modules) - saved_modules, path):
                sys.modules.pop(module, None)
            REGISTRY.clear()
            REGISTRY.update(saved_registry)
            importlib.invalidate_caches()
            if isinstance(exc, ActivationError) or not isinstance(exc, Exception):
                raise
            raise ActivationError(f"package {name}: {type(exc).__name__}: {exc}") from exc
        if user is not None:
            active.users.add(user)
        _active[name] = active
        log.info(
            "package %s %s active (steps: %s)",
            name,
            active.version,
            ", ".join(active.steps) or "none",
        )
        return active


def deactivate(name: str, user: str | None = None) -> None:
    """Drop `user`'s use of a package; once nobody uses it, unload it (steps, modules, path)."""
    with _lock:
        active = _active.get(name)
        if active is None:
            return
        active.users.discard(user or "")
        if active.users:
            return
        del _active[name]
        for step_name in active.steps:
            REGISTRY.pop(step_name, None)
        for module in active.modules:
            sys.modules.pop(module, None)
        drop = {str(active.path / "vendor"), str(active.path)}
        sys.path[:] = [p for p in sys.path if p not in drop]
        importlib.invalidate_caches()


def active_packages() -> list[ActivePackage]:
    with _lock:
        return sorted(_active.values(), key=lambda a: a.name)


def package_of_step(step_name: str) -> ActivePackage | None:
    with _lock:
        return next((a for a in _active.values() if step_name in a.steps), None)


def after_run(active: ActivePackage, summary: dict[str, Any]) -> None:
    """Call the package's `on_after_run(ctx, summary)`; an exception in it is logged, never
    raised (the run is over)."""
    if active.on_after_run is None:
        return
    try:
        active.on_after_run(active.context, summary)
    except Exception:
        log.exception("package %s: on_after_run failed", active.name)
