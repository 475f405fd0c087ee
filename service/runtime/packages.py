"""Pipeline packages in the server (contract section 11; the pure parts are `pipeline.packages`).

- install (`POST /v1/packages`): one at a time (a lock: pip is heavy), in a worker thread, with
  `package.installing`, then `package.installed` or `package.install_failed` events. Package
  events are server-wide: they carry the reserved session id `_packages` (no session id can
  start with `_`), so `GET /v1/events` (all sessions) and `?sessions=_packages` see them.
- activation: a session created with `{"pipeline": {"package": NAME}}` activates the package
  before its pipeline is validated (its steps must be registered for that); a failure is 409
  `PACKAGE_ACTIVATION_FAILED` and the session is not created. Which sessions use which package
  is kept in `<data-dir>/packages/sessions.json`, so that after a restart the packages are
  activated again before the sessions are recovered.
- after each run: the packages whose steps the pipeline uses go to the run's `manifest.json`
  (name, version, vendored distributions) and their `on_after_run(ctx, summary)` is called in
  the worker thread with `{session_id, run_id, status, error}`.

Packages run arbitrary code: every entry point here refuses unless the server runs with
`--allow-packages` (403 `FORBIDDEN`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from pipeline.atomic import write_json_atomic
from pipeline.composite import Pipeline
from pipeline.group import StepGroup
from pipeline.loader import PipelineSpec
from pipeline.packages.activation import (
    ActivePackage,
    activate,
    after_run,
    deactivate,
    package_of_step,
)
from pipeline.packages.errors import PackageError
from pipeline.packages.install import (
    InstallOptions,
    find_installed,
    install_package,
    list_installed,
)
from pipeline.step import PipelineStep, Step
from service.contract.errors import ServiceError
from service.runtime.config import Config

__all__ = ["PACKAGE_EVENTS_SESSION", "PackageRuntime", "packages_used", "restore_activations"]

log = logging.getLogger("runwire.packages")

PACKAGE_EVENTS_SESSION = "_packages"
PACKAGE_INSTALLING = "package.installing"
PACKAGE_INSTALLED = "package.installed"
PACKAGE_INSTALL_FAILED = "package.install_failed"
_SESSIONS_JSON = "sessions.json"
_lock = threading.Lock()  # sessions.json


def _require_allowed(config: Config) -> None:
    if not config.allow_packages:
        raise ServiceError(
            "FORBIDDEN",
            "pipeline packages run arbitrary code: this server does not accept them "
            "(start it with --allow-packages)",
        )


def _read_sessions(config: Config) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((config.packages_dir / _SESSIONS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(config: Config, sid: str, active: ActivePackage | None) -> None:
    with _lock:
        data = _read_sessions(config)
        if active is None:
            if data.pop(sid, None) is None:
                return
        else:
            data[sid] = {"name": active.name, "version": active.version}
        config.packages_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config.packages_dir / _SESSIONS_JSON, data)


def restore_activations(config: Config) -> None:
    """Activate again the packages of sessions that used one (at start, before recovery). A
    package that no longer activates is logged: its sessions then fail recovery as any session
    whose pipeline no longer validates."""
    if not config.allow_packages:
        return
    for sid, ref in _read_sessions(config).items():
        try:
            path, _ = find_installed(config.packages_dir, ref["name"], ref.get("version"))
            activate(path, user=sid)
        except PackageError as exc:
            log.error("session %s: package %s not re-activated: %s", sid, ref.get("name"), exc)


def _walk(steps: list[PipelineStep] | tuple[PipelineStep, ...]) -> list[str]:
    names: list[str] = []
    for s in steps:
        if isinstance(s, Pipeline | StepGroup):
            names += _walk(s.steps)
        elif isinstance(s, Step):
            names.append(s.name)
    return names


def packages_used(spec: PipelineSpec) -> list[ActivePackage]:
    """The active packages whose steps the pipeline uses."""
    seen: dict[str, ActivePackage] = {}
    for name in _walk(spec.pipeline.steps):
        pkg = package_of_step(name)
        if pkg is not None:
            seen[pkg.name] = pkg
    return [seen[k] for k in sorted(seen)]


def record_packages(spec: PipelineSpec, run_dir: Any) -> list[ActivePackage]:
    """Put the packages a run uses on its run directory (for `manifest.json`); worker thread."""
    used = packages_used(spec)
    run_dir.packages = [p.describe() for p in used]
    return used


def run_after_hooks(used: list[ActivePackage], summary: dict[str, Any]) -> None:
    """`on_after_run(ctx, summary)` of each package a finished run used; worker thread."""
    for pkg in used:
        after_run(pkg, summary)


class PackageRuntime:
    """Install, list and activate packages for the HTTP routes (see the module doc)."""

    def __init__(self, config: Config, emit: Any) -> None:
        self.config = config
        self._emit = emit  # async (type, session_id, data) -> None
        self._install_lock = anyio.Lock()

    def check_allowed(self) -> None:
        """403 FORBIDDEN unless the server runs with --allow-packages."""
        _require_allowed(self.config)

    @property
    def options(self) -> InstallOptions:
        return InstallOptions(wheelhouse=self.config.wheelhouse,
                              allow_network=self.config.allow_package_network)  # fmt: skip

    async def install(
        self, *, path: Path | None = None, zip_base64: str | None = None
    ) -> dict[str, Any]:
        """Install from a server-side folder or zip (`path`, already confined to the read
        roots) or an uploaded zip; returns the `install.json` record."""
        _require_allowed(self.config)
        upload: Path | None = None
        async with self._install_lock:
            try:
                if zip_base64 is not None:
                    try:
                        data = base64.b64decode(zip_base64, validate=True)
                    except (binascii.Error, ValueError):
                        raise ServiceError(
                            "INVALID_REQUEST", "zip_base64 is not valid base64"
                        ) from None
                    upload = self.config.packages_dir / ".uploads" / f"{secrets.token_hex(8)}.zip"
                    await anyio.to_thread.run_sync(_write_upload, upload, data)
                    path = upload
                assert path is not None
                await self._emit(
                    PACKAGE_INSTALLING,
                    PACKAGE_EVENTS_SESSION,
                    {"source": str(path) if upload is None else "upload"},
                )
                try:
                    record = await anyio.to_thread.run_sync(
                        install_package, path, self.config.packages_dir, self.options
                    )
                except PackageError as exc:
                    await self._emit(
                        PACKAGE_INSTALL_FAILED, PACKAGE_EVENTS_SESSION, {"error": str(exc)}
                    )
                    raise ServiceError("PACKAGE_INSTALL_FAILED", str(exc)) from None
            finally:
                if upload is not None:
                    await anyio.to_thread.run_sync(lambda: upload.unlink(missing_ok=True))
        summary = {k: record.get(k) for k in ("name", "version", "status", "error")}
        summary["vendored"] = {d["name"]: d["version"] for d in record.get("vendored", [])}
        if record["status"] != "installed":
            await self._emit(PACKAGE_INSTALL_FAILED, PACKAGE_EVENTS_SESSION, summary)
            raise ServiceError("PACKAGE_INSTALL_FAILED", str(record.get("error")))
        await self._emit(PACKAGE_INSTALLED, PACKAGE_EVENTS_SESSION, summary)
        return record

    async def list_public(self) -> list[dict[str, Any]]:
        return [
            _public(r)
            for r in await anyio.to_thread.run_sync(list_installed, self.config.packages_dir)
        ]

    async def show(self, name: str) -> dict[str, Any]:
        records = [r for r in await self.list_full() if r.get("name") == name]
        if not records:
            raise ServiceError("NOT_FOUND", f"package {name!r} is not installed")
        latest = records[-1]
        return {**latest, "versions": [r["version"] for r in records]}

    async def list_full(self) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(list_installed, self.config.packages_dir)

    async def pipeline_text(self, ref: str, file: str | None) -> tuple[str, str]:
        """Activate package `ref` (`NAME` or `NAME@VERSION`) for a session being created and
        return its pipeline's (text, filename). 409 PACKAGE_ACTIVATION_FAILED on failure."""
        _require_allowed(self.config)
        name, _, version = ref.partition("@")
        try:
            path, record = await anyio.to_thread.run_sync(
                find_installed, self.config.packages_dir, name, version or None
            )
        except PackageError as exc:
            raise ServiceError("NOT_FOUND", str(exc)) from None
        pipelines = list(record.get("pipelines", []))
        chosen = file or pipelines[0]
        if chosen not in pipelines:
            raise ServiceError(
                "INVALID_REQUEST",
                f"package {name} has no pipeline {chosen!r} (it has: {', '.join(pipelines)})",
            )
        try:
            # Synchronous by contract (the hook runs before the session exists), but off the loop.
            await anyio.to_thread.run_sync(activate, path)
        except PackageError as exc:
            raise ServiceError("PACKAGE_ACTIVATION_FAILED", str(exc)) from None
        text = await anyio.to_thread.run_sync(lambda: (path / chosen).read_text(encoding="utf-8"))
        return text, str(path / chosen)

    async def bind_session(self, sid: str, ref: str, created: bool) -> None:
        """Record that session `sid` uses package `ref` (or release it when its creation
        failed, unloading the package if nobody else uses it)."""
        name = ref.partition("@")[0]
        active = next((a for a in _active_list() if a.name == name), None)
        if active is None:
            return
        if created:
            active.users.add(sid)
            await anyio.to_thread.run_sync(_remember, self.config, sid, active)
        elif not active.users:
            await anyio.to_thread.run_sync(deactivate, name, None)

    async def release_session(self, sid: str) -> None:
        """A deleted session no longer keeps its package active."""
        for active in _active_list():
            if sid in active.users:
                await anyio.to_thread.run_sync(deactivate, active.name, sid)
        await anyio.to_thread.run_sync(_remember, self.config, sid, None)


def _active_list() -> list[ActivePackage]:
    from pipeline.packages.activation import active_packages

    return active_packages()


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A list entry: everything but pip's log."""
    return {k: v for k, v in record.items() if k != "pip_log"}


def _write_upload(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
