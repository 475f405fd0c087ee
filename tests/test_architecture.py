"""The layout is the architecture: imports point one way only (service -> streaming, pipeline)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Collection
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages of ours it must never import
FORBIDDEN = {
    "pipeline": {"service", "streaming"},
    "streaming": {"service", "pipeline"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if imported_top_levels(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_pipeline_has_no_asyncio_or_http() -> None:
    banned = {"asyncio", "anyio", "starlette", "uvicorn", "httpx", "websockets"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & banned)
        for path in (ROOT / "pipeline").rglob("*.py")
        if imported_top_levels(path) & banned
    }
    assert offenders == {}


# --- inner rules ------------------------------------------------------------------------------

PACKAGES = ("pipeline", "streaming", "service")
# What a server/framework import looks like: the broker core must work without any of them.
WEB_LIBRARIES = {"starlette", "uvicorn", "websockets", "sse_starlette", "httpx"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(path: Path, known: Collection[str]) -> set[str]:
    """The modules among `known` that `path` imports, anywhere in the file (function-local and
    TYPE_CHECKING imports included: a cycle through them is still a knot in the design).
    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {name for name in found if name in known and name != this}


def import_cycles(package: str) -> list[list[str]]:
    """Every set of modules of `package` that import each other in a circle (Tarjan's SCCs),
    each as a sorted list; empty when the imports form a DAG."""
    modules = modules_of(package)
    return graph_cycles({name: imported_modules(path, modules) for name, path in modules.items()})


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The finder itself must work, or the rule below would pass on anything.
    pkg = tmp_path / "knot"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from knot.b import x\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    (pkg / "c.py").write_text("import knot.a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_cycles("knot") == [["knot.a", "knot.b"]]


@pytest.mark.parametrize(
    "package",
    [
        "pipeline",
        "streaming",
        # service/: test_service_has_no_import_cycles below (its packages' __init__ re-exports
        # are not cycles of the design).
    ],
)
def test_no_import_cycles(package: str) -> None:
    assert import_cycles(package) == []


def test_the_streaming_core_imports_no_web_framework() -> None:
    """The broker core (everything outside `streaming/channels/`) is usable without Starlette,
    uvicorn or any HTTP library; only the channels speak ASGI."""
    channels = ROOT / "streaming" / "channels"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & WEB_LIBRARIES)
        for path in (ROOT / "streaming").rglob("*.py")
        if channels not in path.parents and imported_top_levels(path) & WEB_LIBRARIES
    }
    assert offenders == {}


def test_event_type_names_live_in_a_stdlib_only_module() -> None:
    """`streaming.events` is the one place event types are spelled; the CLI imports it, so it
    must not pull in anything beyond the standard library."""
    imported = imported_top_levels(ROOT / "streaming" / "events.py")
    assert imported <= sys.stdlib_module_names | {"__future__"}


def test_subscription_uses_only_public_broker_methods() -> None:
    """`Subscription` reaches its broker through `SubscriptionHost`, public methods only: no
    `broker._anything` (nor `self._broker._anything`) in streaming/subscription.py."""
    path = ROOT / "streaming" / "subscription.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def is_broker(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "broker"
        return isinstance(node, ast.Attribute) and node.attr == "_broker"

    private = sorted(
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and is_broker(node.value)
    )
    assert private == []


# -- service/ in wings: cli -> http -> runtime -> storage, all of them may use contract --------

SERVICE = ROOT / "service"
WINGS = ("contract", "storage", "runtime", "http", "cli")
# wing -> wings of service/ it must never import (anywhere in a module, lazy imports included)
WING_FORBIDDEN = {
    "contract": {"storage", "runtime", "http", "cli"},
    "storage": {"runtime", "http", "cli"},
    "runtime": {"http", "cli"},
    "http": {"cli"},
}


def service_module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def service_modules() -> dict[str, Path]:
    return {service_module_name(path): path for path in SERVICE.rglob("*.py")}


def service_imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of ours `path` imports, at any depth of the file (lazy imports too).

    `from service.runtime import lifecycle` names the module `service.runtime.lifecycle`;
    `from service.runtime.scheduler import Scheduler` names `service.runtime.scheduler`.
    """
    module = service_module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known or name.split(".")[0] not in {"service"}}


def wing_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "service" and parts[1] in WINGS else None


def test_every_service_module_lives_in_a_wing() -> None:
    strays = sorted(
        name for name in service_modules() if name != "service" and wing_of(name) is None
    )
    assert strays == []


@pytest.mark.parametrize("wing", sorted(WING_FORBIDDEN))
def test_service_wings_import_one_way(wing: str) -> None:
    modules = service_modules()
    known = set(modules)
    offenders = {
        name: sorted(
            target
            for target in service_imported_modules(path, known)
            if wing_of(target) in WING_FORBIDDEN[wing]
        )
        for name, path in modules.items()
        if wing_of(name) == wing
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_contract_imports_only_stdlib_and_msgspec() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"msgspec", "__future__"}
    modules = service_modules()
    known = set(modules)
    offenders = {}
    for name, path in modules.items():
        if wing_of(name) != "contract":
            continue
        bad = sorted(
            target
            for target in service_imported_modules(path, known)
            if target.split(".")[0] not in allowed and wing_of(target) != "contract"
        )
        if bad:
            offenders[name] = bad
    assert offenders == {}


def graph_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_import_cycle_finder_sees_a_cycle() -> None:
    assert graph_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_service_has_no_import_cycles() -> None:
    modules = service_modules()
    known = set(modules)
    graph = {
        name: {
            target
            for target in service_imported_modules(path, known)
            # a package's __init__ re-exporting its own modules is not a cycle of the design
            if target in known and target != name and not name.startswith(target + ".")
        }
        for name, path in modules.items()
    }
    assert graph_cycles(graph) == []


def test_app_state_is_read_and_written_only_through_service_state() -> None:
    """One typed `ServiceState` (service/http/state.py) instead of Starlette's untyped
    `app.state` grab-bag: no other module of service/ or tests/ touches `app.state`."""
    own = ROOT / "service" / "http" / "state.py"
    offenders = {
        str(path.relative_to(ROOT)): lineno
        for folder in ("service", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != own
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and isinstance(node.value, ast.Attribute | ast.Subscript | ast.Name)
        and _names_app(node.value)
        for lineno in [node.lineno]
    }
    assert offenders == {}


def _names_app(node: ast.expr) -> bool:
    """`app`, `x.app`, `self.app` or `scope["app"]`."""
    if isinstance(node, ast.Name):
        return node.id == "app"
    if isinstance(node, ast.Attribute):
        return node.attr == "app"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "app"
    return False


# Starting a task by hand: a failure nobody awaits is lost, and the task may outlive its owner.
TASK_STARTERS = {"create_task", "ensure_future"}


def test_no_bare_create_task_in_service_or_streaming() -> None:
    """Every background task belongs to an anyio task group or a `TaskSupervisor`
    (streaming/tasks.py, the one module allowed to call `create_task`)."""
    allowed = ROOT / "streaming" / "tasks.py"
    offenders = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in ("service", "streaming")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != allowed
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and _called_name(node.func) in TASK_STARTERS
    )
    assert offenders == []


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None
