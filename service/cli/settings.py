"""Command-line flags generated from settings tables (`service.runtime.config.Setting`).

`add_setting_flags(parser, settings)` declares one flag per setting, its help naming the
environment variable and the default; `settings_from(args, env, settings)` resolves flags over
environment over defaults and turns a bad value into a one-line usage error (exit 64).
`runwire serve` passes `SETTINGS` plus its own `--log-level`; a command with fewer settings
passes a subset plus its own entries.

Standard library only at module level (`service.runtime.config` is stdlib-only).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from service.cli.errors import EXIT_USAGE, CliError
from service.runtime.config import Setting, SettingError, resolve_settings

__all__ = ["add_setting_flags", "settings_from"]


def add_setting_flags(parser: argparse.ArgumentParser, settings: Iterable[Setting]) -> None:
    """One flag per setting that has one, `dest` the setting's name, default None (so that
    an absent flag falls through to the environment)."""
    for item in settings:
        if item.flag is None:
            continue
        options: dict[str, Any] = {"dest": item.name, "help": item.help_text()}
        if item.choices is None and item.kind != "switch":
            options["metavar"] = item.flag.lstrip("-").replace("-", "_").upper()
        if item.kind == "switch":
            options.update(action="store_true", default=None)
        elif item.kind == "append":
            options.update(action="append")
        if item.number is not None:
            options["type"] = item.number
        if item.choices is not None:
            options["choices"] = item.choices
        parser.add_argument(item.flag, **options)


def settings_from(
    args: argparse.Namespace, env: Mapping[str, str], settings: Iterable[Setting]
) -> dict[str, Any]:
    """The given settings' values (flag, else environment; defaults left out); `CliError`
    (exit 64) naming the flag or variable for a bad value."""
    try:
        return resolve_settings(settings, vars(args), env)
    except SettingError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
