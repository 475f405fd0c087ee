"""The one error type CLI commands raise: printed as one line, exit status non-zero."""

from __future__ import annotations

EXIT_USAGE = 64


class CliError(Exception):
    """`error: <message>` on stderr and `exit_code`; never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
