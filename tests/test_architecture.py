"""The layout is the architecture: imports point one way only (service -> streaming, pipeline)."""

from __future__ import annotations

import ast
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
