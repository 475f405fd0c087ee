"""Installing a package into `<packages-dir>/<name>/<version>/`.

The package (a folder, or a zip unpacked by `archive.extract_zip`) is copied into a staging
directory under `<packages-dir>/.staging/`, its requirements vendored there with pip in a
subprocess (`pip install --target vendor/`, never into the running environment), its
`install.json` written, and only then is the staging directory renamed into place: a crash or a
failed pip leaves no half-filled package. A failed install leaves just `install.json` with
`"status": "failed"`, pip's log and the error, so that `GET /v1/packages` can say why.

Where pip may look:
- `wheelhouse` given: `--no-index --find-links WHEELHOUSE` (offline);
- else only when the manifest says `network: true` *and* the caller allows it (the server's
  `--allow-package-network`): the configured index;
- else the install fails with one message naming the requirement(s).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from .archive import MAX_FILES, MAX_UNPACKED_BYTES, extract_zip
from .errors import PackageError, UnsafeArchiveError
from .manifest import PackageManifest, read_manifest

__all__ = [
    "InstallOptions",
    "install_package",
    "list_installed",
    "read_install_record",
    "requirement_lines",
]

INSTALL_JSON = "install.json"
PIP_TIMEOUT_S = 300.0
_LOG_LIMIT = 64 * 1024  # pip's log kept in install.json (its tail)
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class InstallOptions:
    wheelhouse: Path | None = None
    allow_network: bool = False
    pip_timeout_s: float = PIP_TIMEOUT_S
    max_files: int = MAX_FILES
    max_bytes: int = MAX_UNPACKED_BYTES


Progress = Callable[[str, dict[str, Any]], None]


def _no_progress(stage: str, data: dict[str, Any]) -> None:
    return None


def requirement_lines(path: Path) -> list[str]:
    """The requirement specifiers of a requirements.txt (comments and blanks dropped). Options
    (`-e`, `-r`, `--index-url`, ...) are refused: they would bypass the wheelhouse rule."""
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise PackageError(f"requirements: option lines are not allowed ({line!r})")
        out.append(line)
    return out


def _copy_folder(src: Path, dest: Path, opts: InstallOptions) -> None:
    """Copy a package folder, refusing symlinks and honouring the archive limits."""
    count = 0
    total = 0
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in (*dirs, *files):
            p = Path(root) / name
            if p.is_symlink():
                raise UnsafeArchiveError(
                    f"{rel / name} is a symlink (packages may not contain links)"
                )
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "vendor", ".git")]
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            p = Path(root) / name
            count += 1
            total += p.stat().st_size
            if count > opts.max_files or total > opts.max_bytes:
                raise UnsafeArchiveError(
                    f"package folder {src} exceeds {opts.max_files} files or {opts.max_bytes} bytes"
                )
            shutil.copyfile(p, dest / rel / name)


def _vendored(vendor: Path) -> list[dict[str, Any]]:
    """Name, version and top-level modules of each distribution pip put in `vendor/`."""
    out = []
    for info in sorted(vendor.glob("*.dist-info")):
        try:
            meta = HeaderParser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        except OSError:
            continue
        top: list[str] = []
        if (info / "top_level.txt").is_file():
            top = [
                t.strip() for t in (info / "top_level.txt").read_text().splitlines() if t.strip()
            ]
        elif (info / "RECORD").is_file():
            for line in (info / "RECORD").read_text().splitlines():
                first = line.split(",", 1)[0].split("/", 1)[0]
                mod = first.removesuffix(".py")
                if (
                    mod
                    and not mod.endswith((".dist-info", ".data"))
                    and mod != "__pycache__"
                    and mod not in top
                ):
                    top.append(mod)
        out.append({"name": meta["Name"], "version": meta["Version"], "top_level": sorted(top)})
    return out


def _pip(requirements: Path, vendor: Path, manifest: PackageManifest,
         opts: InstallOptions, specs: list[str]) -> str:  # fmt: skip
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--no-warn-script-location", "--target", str(vendor), "-r", str(requirements)]  # fmt: skip
    env = dict(os.environ)
    if opts.wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(opts.wheelhouse)]
        # Offline means only the wheelhouse: no pip config or PIP_* variable adds an index.
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    elif not (manifest.network and opts.allow_network):
        why = ("the package does not say `network: true`" if not manifest.network
               else "the server does not run with --allow-package-network")  # fmt: skip
        raise PackageError(
            f"package {manifest.name} needs requirement {', '.join(repr(s) for s in specs)}: "
            f"no --wheelhouse to install it from, and {why}"
        )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.pip_timeout_s,
                              env=env, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise PackageError(f"pip did not finish within {opts.pip_timeout_s:g} s installing "
                           f"{', '.join(specs)}") from exc  # fmt: skip
    log = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        missing = re.findall(r"No matching distribution found for (\S+)", log)
        where = f"the wheelhouse {opts.wheelhouse}" if opts.wheelhouse is not None else "the index"
        if missing:
            msg = f"requirement {', '.join(repr(m) for m in missing)} not found in {where}"
        else:
            last = [ln for ln in log.splitlines() if ln.startswith("ERROR")] or log.splitlines()[
                -1:
            ]
            msg = f"pip failed installing {', '.join(specs)}: {' '.join(last)[:500]}"
        raise _PipFailed(msg, log)
    return log


class _PipFailed(PackageError):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def _record(manifest: PackageManifest, status: str, **extra: Any) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "status": status,
            "description": manifest.description, "pipelines": manifest.pipelines,
            "modules": manifest.modules, "network": manifest.network,
            "hooks": {"on_activate": manifest.hooks.on_activate, "on_after_run": manifest.hooks.on_after_run},
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}  # fmt: skip


def install_package(source: Path, packages_dir: Path, opts: InstallOptions = InstallOptions(),
                    progress: Progress = _no_progress) -> dict[str, Any]:  # fmt: skip
    """Install the package folder or zip at `source`; returns its `install.json` record.

    Raises `PackageError` when nothing could be installed (not a package, unsafe zip, already
    installed); a failed requirement install returns the `failed` record (also written)."""
    staging_root = packages_dir / ".staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = staging_root / secrets.token_hex(8)
    try:
        if source.is_file():
            folder = extract_zip(
                source, staging / "unpacked", max_files=opts.max_files, max_bytes=opts.max_bytes
            )
        elif source.is_dir():
            folder = staging / "unpacked"
            _copy_folder(source, folder, opts)
        else:
            raise PackageError(f"{source} is neither a package folder nor a zip")
        manifest = read_manifest(folder)
        final = packages_dir / manifest.name / manifest.version
        previous = read_install_record(final)
        if previous is not None and previous.get("status") == "installed":
            raise PackageError(f"package {manifest.name} {manifest.version} is already installed")
        progress("installing", {"name": manifest.name, "version": manifest.version})
        record: dict[str, Any]
        try:
            specs = (
                requirement_lines(folder / manifest.requirements) if manifest.requirements else []
            )
            log = ""
            vendored: list[dict[str, Any]] = []
            if specs:
                assert manifest.requirements is not None
                log = _pip(folder / manifest.requirements, folder / "vendor", manifest, opts, specs)
                vendored = _vendored(folder / "vendor")
            record = _record(
                manifest,
                "installed",
                requirements=specs,
                vendored=vendored,
                pip_log=log[-_LOG_LIMIT:],
            )
            write_json_atomic(folder / INSTALL_JSON, record)
            target = folder
        except PackageError as exc:
            log = getattr(exc, "log", "")
            record = _record(manifest, "failed", error=str(exc), pip_log=log[-_LOG_LIMIT:])
            target = staging / "failed"
            target.mkdir()
            write_json_atomic(target / INSTALL_JSON, record)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a failed install's record, replaced
            shutil.rmtree(final)
        os.rename(target, final)
        progress(record["status"], record)
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_install_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / INSTALL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_installed(packages_dir: Path) -> list[dict[str, Any]]:
    """Every install record under `packages_dir`, by name then version."""
    out: list[dict[str, Any]] = []
    if not packages_dir.is_dir():
        return out
    for name_dir in sorted(packages_dir.iterdir()):
        if name_dir.name.startswith(".") or not name_dir.is_dir():
            continue
        for version_dir in sorted(name_dir.iterdir()):
            record = read_install_record(version_dir)
            if record is not None:
                out.append(record)
    return out


def find_installed(
    packages_dir: Path, name: str, version: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The folder and record of an installed package (the newest installed version when
    `version` is None); `PackageError` when there is none."""
    candidates = [r for r in list_installed(packages_dir)
                  if r.get("name") == name and r.get("status") == "installed"
                  and (version is None or r.get("version") == version)]  # fmt: skip
    if not candidates:
        what = f"{name} {version}" if version else name
        raise PackageError(f"package {what} is not installed")
    record = max(candidates, key=lambda r: _version_key(str(r.get("version"))))
    return packages_dir / name / str(record["version"]), record


def _version_key(v: str) -> tuple[Any, ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", v))
