"""Steps from installed distributions: the `runwire.steps` entry-point group.

An installed distribution adds steps with no other configuration by declaring, in its
`pyproject.toml`::

    [project.entry-points."runwire.steps"]
    mysteps = "mypkg.steps"            # a module: every registered Step class defined in it
    # or "mypkg.steps:FitStep"          # one Step class, or a list/tuple of them

Discovery happens once per process (`load_plugins()`, called by the pipeline loader, `runwire
steps` and the service). A broken plugin (an import error, a step name already taken, an entry
point naming something that is not a step) is reported by its entry-point name in
`plugin_errors()` and registers nothing, but never stops the others from loading.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from .step import REGISTRY, Step, register_all, unregister

__all__ = ["GROUP", "PluginError", "PluginInfo", "load_plugins", "plugin_errors", "plugins"]

GROUP = "runwire.steps"
log = logging.getLogger("pipeline.plugins")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded entry point: its name, distribution and the step names it registered."""

    name: str
    distribution: str
    version: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class PluginError:
    """One entry point that could not be loaded, with the reason."""

    name: str
    distribution: str
    message: str


_lock = threading.Lock()
_loaded: list[PluginInfo] | None = None
_errors: list[PluginError] = []


def _step_classes(obj: Any, entry: str) -> list[type[Step]]:
    if isinstance(obj, ModuleType):
        # The classes a module defines (or decorates) itself, not ones it imported.
        return [
            v for v in vars(obj).values()
            if inspect.isclass(v) and issubclass(v, Step) and v is not Step
            and getattr(v, "name", None) and v.__module__ == obj.__name__
        ]  # fmt: skip
    if inspect.isclass(obj) and issubclass(obj, Step):
        return [obj]
    if (
        isinstance(obj, list | tuple)
        and obj
        and all(inspect.isclass(o) and issubclass(o, Step) for o in obj)
    ):
        return list(obj)
    raise TypeError(
        f"entry point {entry!r} names {obj!r}, not a step class, a list of them or a module"
    )


def _load_one(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    dist_name = dist.metadata["Name"] if dist is not None else "?"
    before = dict(REGISTRY)
    try:
        obj = ep.load()
        classes = _step_classes(obj, ep.name)
        # Step classes decorated with @register were registered at import: take them out again
        # so that the whole entry point registers atomically (or not at all) below.
        unregister([n for n in REGISTRY if n not in before])
        for cls in classes:
            if cls.name in before and before[cls.name] is not cls:
                raise ValueError(
                    f"step name {cls.name!r} is already registered by {before[cls.name].__module__}"
                )
        register_all(classes)
    except Exception:
        unregister([n for n in REGISTRY if n not in before])
        REGISTRY.update(before)
        raise
    return PluginInfo(ep.name, dist_name, dist.version if dist is not None else "?",
                      tuple(sorted(c.name for c in classes)))  # fmt: skip


def load_plugins(*, reload: bool = False) -> list[PluginInfo]:
    """Load every `runwire.steps` entry point once (again with `reload=True`, for a
    distribution installed since); returns those that loaded."""
    global _loaded
    with _lock:
        if _loaded is not None and not reload:
            return list(_loaded)
        # Again from scratch: a plugin uninstalled since no longer provides its steps.
        for previous in _loaded or []:
            unregister(previous.steps)
        loaded: dict[str, PluginInfo] = {}
        _errors.clear()
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in loaded:  # two distributions with one entry-point name
                dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
                _errors.append(
                    PluginError(ep.name, dist, f"entry point name {ep.name!r} is used twice")
                )
                continue
            try:
                loaded[ep.name] = _load_one(ep)
            except Exception as exc:  # a broken plugin: reported, never fatal to the others
                dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
                message = f"{type(exc).__name__}: {exc}"
                log.warning("step plugin %r (%s) not loaded: %s", ep.name, dist, message)
                _errors.append(PluginError(ep.name, dist, message))
        _loaded = list(loaded.values())
        return list(_loaded)


def plugins() -> list[PluginInfo]:
    """The loaded plugins (loading them first if needed)."""
    return load_plugins()


def plugin_errors() -> list[PluginError]:
    """Entry points that failed to load in the last discovery, with the reason."""
    load_plugins()
    return list(_errors)


def step_origin(name: str) -> str:
    """`builtin`, `plugin:<entry point>` or `package:<module>` for a registered step name."""
    for p in load_plugins():
        if name in p.steps:
            return f"plugin:{p.name}"
    cls = REGISTRY.get(name)
    if cls is not None and not cls.__module__.startswith("pipeline."):
        return f"module:{cls.__module__}"
    return "builtin"
