"""`runwire package install|list|show`: pipeline packages in a data directory, no server needed.

`install` writes into `<data-dir>/packages/` directly, holding the data directory's lock
(`service.datalock`) while it does: when a server already serves that directory, the command
refuses with one line saying so, and the package is installed through the server instead
(`POST /v1/packages`, which also publishes the `package.*` events). `list` and `show` only read
the directory. Only the standard library is imported at module level (see service/cli.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.cli.errors import EXIT_USAGE, CliError

__all__ = ["add_parsers"]

EXIT_DATA_DIR_IN_USE = 69  # as `runwire serve`


def _data_dir(args: argparse.Namespace) -> Path:
    raw = args.data_dir or os.environ.get("RUNWIRE_DATA_DIR") or "./runwire-data"
    return Path(raw).expanduser()


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("package", help="install, list and show pipeline packages (they run arbitrary code)",
                       description="Pipeline packages in a data directory (docs/packages.md).")  # fmt: skip
    cmds = p.add_subparsers(dest="package_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="data directory (RUNWIRE_DATA_DIR, default ./runwire-data)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    inst = cmds.add_parser("install", parents=[common], help="install a package folder or .zip")
    inst.add_argument("path", metavar="PATH")
    inst.add_argument("--wheelhouse", help="install requirements offline from this directory of wheels "
                      "(RUNWIRE_WHEELHOUSE)")  # fmt: skip
    inst.add_argument("--allow-package-network", action="store_true",
                      help="let pip use the index if the package says network: true")  # fmt: skip
    inst.set_defaults(func=install_command)
    ls = cmds.add_parser("list", parents=[common], help="list installed packages")
    ls.set_defaults(func=list_command)
    show = cmds.add_parser("show", parents=[common], help="show a package's install record")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=show_command)


def install_command(args: argparse.Namespace) -> int:
    from pipeline.packages.errors import PackageError
    from pipeline.packages.install import InstallOptions, install_package
    from service.storage.datalock import DataDirLock, DataDirLocked

    data_dir = _data_dir(args)
    source = Path(args.path).expanduser()
    if not source.exists():
        raise CliError(f"{source}: no such package folder or zip", EXIT_USAGE)
    wheelhouse = args.wheelhouse or os.environ.get("RUNWIRE_WHEELHOUSE")
    opts = InstallOptions(wheelhouse=Path(wheelhouse).resolve() if wheelhouse else None,
                          allow_network=bool(args.allow_package_network))  # fmt: skip
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with DataDirLock(data_dir).acquire():
            record = install_package(source.resolve(), data_dir / "packages", opts)
    except DataDirLocked as exc:
        raise CliError(
            f"{exc}: install through that server (POST /v1/packages)", EXIT_DATA_DIR_IN_USE
        ) from None
    except PackageError as exc:
        raise CliError(f"package not installed: {exc}") from None
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "pip_log"}, indent=2))
    if record["status"] != "installed":
        raise CliError(
            f"package {record['name']} {record['version']} not installed: {record.get('error')}"
        )
    if not args.json:
        vendored = ", ".join(f"{d['name']} {d['version']}" for d in record.get("vendored", []))
        print(
            f"installed {record['name']} {record['version']}"
            + (f" (vendored: {vendored})" if vendored else "")
        )
    return 0


def list_command(args: argparse.Namespace) -> int:
    from pipeline.packages.install import list_installed

    records = list_installed(_data_dir(args) / "packages")
    if args.json:
        print(
            json.dumps(
                {"packages": [{k: v for k, v in r.items() if k != "pip_log"} for r in records]},
                indent=2,
            )
        )
        return 0
    for r in records:
        print(f"{r.get('name')}\t{r.get('version')}\t{r.get('status')}\t{r.get('description', '')}")
    if not records:
        print("no packages installed", file=sys.stderr)
    return 0


def show_command(args: argparse.Namespace) -> int:
    from pipeline.packages.install import list_installed

    records = [
        r for r in list_installed(_data_dir(args) / "packages") if r.get("name") == args.name
    ]
    if not records:
        raise CliError(f"package {args.name!r} is not installed in {_data_dir(args)}", EXIT_USAGE)
    record = records[-1]
    if args.json:
        print(json.dumps({**record, "versions": [r["version"] for r in records]}, indent=2))
        return 0
    print(f"{record['name']} {record['version']} ({record['status']})")
    for key in ("description", "pipelines", "modules", "requirements", "error"):
        if record.get(key):
            print(f"  {key}: {record[key]}")
    for d in record.get("vendored", []):
        print(f"  vendored: {d['name']} {d['version']}")
    print(f"  versions: {', '.join(r['version'] for r in records)}")
    return 0
