"""Real pipeline packages and wheels built by the tests themselves (no network).

`build_wheel` runs `pip wheel --no-build-isolation --no-deps` on a tiny source tree: a real
wheel of distribution `rwtiny` whose module says its own version. `write_package` writes a
package folder whose step imports a vendored module and whose hooks record what they saw.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from starlette.applications import Starlette

from service.http.app import create_app
from service.runtime.config import Config

PIP_TIMEOUT_S = 300


def offline_env() -> dict[str, str]:
    """The environment without pip settings that would add an index or find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build_wheel(workdir: Path, wheelhouse: Path, name: str, version: str) -> Path:
    src = workdir / f"{name}-{version}"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "{version}"
        [tool.setuptools]
        py-modules = ["{name}"]
    """)
    )
    (src / f"{name}.py").write_text(f'VERSION = "{version}"\n')
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
         "-q", "-w", str(wheelhouse), str(src)],
        check=True, env=offline_env(), timeout=PIP_TIMEOUT_S, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheelhouse.glob(f"{name}-{version}-*.whl")
    return wheel


STEP_MODULE = '''
import json

from pipeline.step import step
{imports}

@step("{name}.version", outputs=("version",), version="1")
def vendored_version(*, fail: bool = False) -> str:
    """The version string of the vendored module (or fail on purpose)."""
    if fail:
        raise RuntimeError("failing on purpose")
    return {version_expr}


def on_activate(ctx):
    {on_activate}


def on_after_run(ctx, summary):
    with open(ctx.path / "after_run.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(summary) + "\\n")
'''


def write_package(
    folder: Path,
    name: str,
    *,
    version: str = "1.0.0",
    requirements: list[str] | None = None,
    on_activate: str = "ctx.log.info('active')",
    fail_step: bool = False,
    extra_manifest: dict[str, Any] | None = None,
) -> Path:
    """A package folder `folder/name` with module `<name>_steps` and pipeline `pipe.yaml`."""
    pkg = folder / name
    pkg.mkdir(parents=True)
    module = f"{name.replace('-', '_')}_steps"
    uses_tiny = bool(requirements)
    (pkg / f"{module}.py").write_text(STEP_MODULE.format(
        name=name,
        imports="import rwtiny" if uses_tiny else "",
        version_expr="rwtiny.VERSION" if uses_tiny else '"none"',
        on_activate=on_activate,
    ))  # fmt: skip
    steps = [{"id": "v", "use": f"{name}.version", "params": {"fail": fail_step},
              "outputs": {"version": "tiny.version"}}]  # fmt: skip
    (pkg / "pipe.yaml").write_text(yaml.safe_dump({"name": f"{name}-pipe", "steps": steps}))
    manifest: dict[str, Any] = {
        "name": name, "version": version, "pipelines": ["pipe.yaml"], "modules": [module],
        "hooks": {"on_activate": f"{module}:on_activate", "on_after_run": f"{module}:on_after_run"},
    }  # fmt: skip
    if requirements:
        (pkg / "requirements.txt").write_text("\n".join(requirements) + "\n")
        manifest["requirements"] = "requirements.txt"
    manifest.update(extra_manifest or {})
    (pkg / "runwire-package.yaml").write_text(yaml.safe_dump(manifest))
    return pkg


@asynccontextmanager
async def running_api(config: Config) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app for `config` in-process (lifespan started) and a client over ASGI."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield app, client
