"""Steps of an installed distribution (entry-point group `runwire.steps`) appear in `runwire
steps`, `GET /v1/steps` and validation with no other configuration; a broken plugin is
reported by name and does not take the others down.

The distribution is "installed" the way pip leaves one: a `.dist-info` with `entry_points.txt`
next to its module on a `sys.path` entry (added for the test, removed after), so the test
venv itself is never changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from package_builders import running_api

from pipeline.loader import load_pipeline_text
from pipeline.plugins import load_plugins, plugin_errors
from pipeline.step import REGISTRY
from service.runtime.config import Config

GOOD = '''
from pipeline.step import step

@step("rwplug.double", inputs=("x",), outputs=("y",), auto_register=False)
def double(x: float, *, offset: float = 0.0) -> float:
    """Twice x plus an offset."""
    return 2 * x + offset
'''
DUPLICATE = '''
from pipeline.step import step

@step("array.subtract", auto_register=False)
def subtract() -> None:
    """Claims a built-in's name."""
'''


def _site(root: Path) -> Path:
    root.mkdir()
    (root / "rwplug_good.py").write_text(GOOD)
    (root / "rwplug_dup.py").write_text(DUPLICATE)
    info = root / "rwplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rwplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [runwire.steps]
        good = rwplug_good
        duplicate = rwplug_dup
        broken = rwplug_not_there
    """)
    )
    return root


@pytest.fixture
def plugin_site(tmp_path: Path) -> Iterator[Path]:
    site = _site(tmp_path / "site")
    sys.path.insert(0, str(site))
    try:
        load_plugins(reload=True)
        yield site
    finally:
        sys.path.remove(str(site))
        for module in ("rwplug_good", "rwplug_dup"):
            sys.modules.pop(module, None)
        load_plugins(reload=True)
        assert "rwplug.double" not in REGISTRY


def test_plugin_steps_validate_and_broken_plugins_are_named(plugin_site: Path) -> None:
    assert "rwplug.double" in REGISTRY
    errors = {e.name: e.message for e in plugin_errors()}
    assert set(errors) == {"duplicate", "broken"}
    assert "'array.subtract' is already registered" in errors["duplicate"]
    assert "No module named 'rwplug_not_there'" in errors["broken"]
    assert REGISTRY["array.subtract"].__module__ == "pipeline.steps.arrays"  # untouched
    steps = [{"id": "d", "use": "rwplug.double", "params": {"offset": 1.0},
              "inputs": {"x": "a"}, "outputs": {"y": "b"}}]  # fmt: skip
    spec = load_pipeline_text(
        yaml.safe_dump(
            {
                "name": "p",
                "steps": [
                    {
                        "id": "a",
                        "use": "diag.emit",
                        "params": {"count": 1},
                        "outputs": {"done": "a"},
                    },
                    *steps,
                ],
            }
        )
    )
    assert [s.id for s in spec.pipeline.steps] == ["a", "d"]


@pytest.mark.anyio
async def test_get_steps_lists_plugin_steps_and_plugin_errors(
    plugin_site: Path, tmp_path: Path
) -> None:
    async with running_api(Config(data_dir=tmp_path / "data")) as (_, client):
        body = (await client.get("/v1/steps")).json()
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["rwplug.double"]["origin"] == "plugin:good"
    assert steps["rwplug.double"]["params"][0]["name"] == "offset"
    assert steps["array.subtract"]["origin"] == "builtin"
    assert {e["name"] for e in body["plugin_errors"]} == {"duplicate", "broken"}


def test_runwire_steps_shows_an_installed_plugin_with_no_configuration(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-m", "service.cli", "steps", "--json", "rwplug.double"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (doc,) = json.loads(done.stdout)["steps"]
    assert doc["name"] == "rwplug.double" and doc["summary"] == "Twice x plus an offset."
    assert "step plugin 'broken' (rwplug) not loaded: ModuleNotFoundError" in done.stderr
    assert "step plugin 'duplicate' (rwplug) not loaded" in done.stderr
