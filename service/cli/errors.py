"""The one error type CLI commands raise (printed as one line, exit status non-zero), and
every exit status of the `runwire` CLI, spelled once (docs/cli.md lists them).

Standard library only. A run's own statuses (0-5, 64) are `pipeline.exitcodes.ExitCode`'s.
"""

from __future__ import annotations

EXIT_API_ERROR = 1  # the server answered with an error (problem+json)
EXIT_USAGE = 64  # EX_USAGE: a bad command line or a bad file named on it
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the server could not be reached
EXIT_DATA_DIR_IN_USE = 69  # `runwire serve`: another server holds the data directory
EXIT_RUN_INTERRUPTED = 75  # EX_TEMPFAIL: the run was interrupted by a restart; retry it
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting for a run whose outcome is then unknown
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer killed by SIGPIPE


class CliError(Exception):
    """`error: <message>` on stderr and `exit_code`; never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
