"""`runwire` console script: one argparse tree, each command group in its own module.

Command modules import only the standard library at module level, so that building the parser
stays cheap (client commands must start in under 0.3 s); heavy imports happen inside the
function that runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from service.cli.errors import EXIT_BROKEN_PIPE, EXIT_USAGE, CliError

# Modules contributing commands; each defines `add_parsers(subparsers)` and sets `func` on
# every parser it adds (`func(args) -> int` returns the exit status).
COMMAND_MODULES = (
    "service.cli.serve",  # serve
    "service.cli.run",  # run
    "service.cli.local",  # steps, examples, demo-data
    "service.cli.session",  # session
    "service.cli.client_commands",  # events, runs
    "service.cli.package",  # package install|list|show
    "service.cli.worker",  # worker (runs from the Redis run queue)
)


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class _VersionAction(argparse.Action):
    """`runwire --version`: the installed distribution's version, read from its metadata only
    when asked (nothing of the server stack is imported)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        print(f"runwire {installed_version()}")
        parser.exit(0)


def installed_version() -> str:
    """The version of the installed `runwire` distribution (`unknown` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runwire")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runwire", description="Real-time runtime for data-processing pipelines.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != name:
                raise
            continue
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`runwire steps | head`): not an error worth a message.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        # The contract promises one-line errors, never a traceback. A failure nobody mapped
        # to a CliError is a bug: say so on one line; RUNWIRE_DEBUG=1 shows the traceback.
        if os.environ.get("RUNWIRE_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (RUNWIRE_DEBUG=1 shows where)",
              file=sys.stderr)  # fmt: skip
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
