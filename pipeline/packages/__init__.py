"""Pipeline packages (contract section 11): a folder or `.zip` with `runwire-package.yaml`,
its Python step modules, pipelines, optional `requirements.txt` vendored with pip into the
package's own `vendor/`, and optional `on_activate` / `on_after_run` hooks.

- `manifest`: `runwire-package.yaml` parsed and checked (`PackageManifest`).
- `archive`: safe unpacking of an uploaded zip (no escapes, no symlinks, size/count limits).
- `install`: copy or unpack into `<packages-dir>/<name>/<version>/`, vendor requirements with
  pip in a subprocess, write `install.json`; atomic (a staging directory renamed at the end).
- `activation`: import a package's modules with `vendor/` first on `sys.path`, run
  `on_activate`, all or nothing; `on_after_run` after each run.

Pure library code: no asyncio, no HTTP. The service adds routes, events and flags on top.
Packages run arbitrary code with the server's rights.
"""

from .errors import PackageError

__all__ = ["PackageError"]
