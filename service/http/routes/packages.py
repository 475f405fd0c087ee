"""Routes for steps and pipeline packages (contract section 11):

- `GET /v1/steps` -> `{"steps": [{name, summary, details, inputs, optional_inputs, outputs,
  params: [{name, type, default, description}], origin}], "plugin_errors": [{name,
  distribution, message}]}`: the registry (built-ins, entry-point plugins, active packages).
- `GET /v1/packages` -> `{"packages": [install record without pip's log]}`.
- `GET /v1/packages/{name}` -> the newest version's `install.json` with pip's log, plus
  `versions`.
- `POST /v1/packages` `{"path"}` (a package folder or zip under `--read-root`) or
  `{"zip_base64"}` (an uploaded zip; this route's body limit is
  `Config.max_package_upload_bytes`, 64 MiB, instead of 1 MiB) -> 201 the install record;
  403 without `--allow-packages`; 422 `PACKAGE_INSTALL_FAILED` naming the cause.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.contract.models import Location
from service.http.codec import decode_body, json_response
from service.http.openapi import OperationTable
from service.http.state import service_state
from service.runtime.packages import PackageRuntime
from service.runtime.validation import confine

__all__ = ["InstallPackageRequest", "table"]


class InstallPackageRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/packages`: a server-side `path` or an uploaded `zip_base64`; exactly one."""

    path: Location | None = None
    zip_base64: Annotated[str, msgspec.Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.zip_base64 is None):
            raise ValueError("exactly one of `path` or `zip_base64` is required")


class StepList(msgspec.Struct, kw_only=True):
    steps: list[dict[str, Any]]
    plugin_errors: list[dict[str, Any]]


class PackageRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A package's `install.json` (`status`: `installed` or `failed`)."""

    name: str
    version: str
    status: str
    description: str = ""
    pipelines: list[str] = msgspec.field(default_factory=list)
    modules: list[str] = msgspec.field(default_factory=list)
    network: bool = False
    hooks: dict[str, str | None] = msgspec.field(default_factory=dict)
    requirements: list[str] = msgspec.field(default_factory=list)
    vendored: list[dict[str, Any]] = msgspec.field(
        default_factory=list
    )  # {name, version, top_level}
    error: str | None = None
    finished_utc: str | None = None
    pip_log: str | None = None  # GET /v1/packages/{name} only
    versions: list[str] | None = None  # GET /v1/packages/{name} only: every installed version


class PackageList(msgspec.Struct, kw_only=True):
    packages: list[PackageRecord]


def _record(raw: dict[str, Any]) -> PackageRecord:
    return msgspec.convert(
        {k: v for k, v in raw.items() if k in PackageRecord.__struct_fields__}, PackageRecord
    )


table = OperationTable("packages")


def _packages(request: Request) -> PackageRuntime:
    runtime: PackageRuntime = service_state(request.app).packages
    return runtime


def _steps() -> StepList:
    from pipeline.docs import step_docs
    from pipeline.plugins import load_plugins, plugin_errors, step_origin

    load_plugins()
    steps = [{**dataclasses.asdict(d), "origin": step_origin(d.name)} for d in step_docs()]
    errors = [dataclasses.asdict(e) for e in plugin_errors()]
    return StepList(steps=steps, plugin_errors=errors)


@table.route("GET", "/steps", response=StepList)
async def list_steps(request: Request) -> Response:
    """Every registered step with its documentation, and plugins that failed to load."""
    return json_response(await anyio.to_thread.run_sync(_steps))


@table.route("GET", "/packages", response=PackageList)
async def list_packages(request: Request) -> Response:
    """Installed (and failed) packages, by name and version."""
    return json_response(
        PackageList(packages=[_record(r) for r in await _packages(request).list_public()])
    )


@table.route("GET", "/packages/{name}", response=PackageRecord, errors=("NOT_FOUND",),
             path_descriptions={"name": "package name"})  # fmt: skip
async def show_package(request: Request) -> Response:
    """A package's newest install record (with pip's log) and its installed versions."""
    return json_response(_record(await _packages(request).show(request.path_params["name"])))


@table.route("POST", "/packages", request=InstallPackageRequest, response=PackageRecord, status=201,
             errors=("FORBIDDEN", "PACKAGE_INSTALL_FAILED", "PAYLOAD_TOO_LARGE"))  # fmt: skip
async def install_package(request: Request) -> Response:
    """Install a package folder or zip (runs arbitrary code: needs --allow-packages)."""
    runtime = _packages(request)
    runtime.check_allowed()  # before looking at any path: 403 says why, whatever the body
    body = await decode_body(request, InstallPackageRequest)
    if body.path is not None:
        path: Path = confine(
            body.path, service_state(request.app).config.read_roots, what="package path"
        )
        record = await runtime.install(path=path)
    else:
        record = await runtime.install(zip_base64=body.zip_base64)
    return json_response(_record({k: v for k, v in record.items() if k != "pip_log"}), 201)
