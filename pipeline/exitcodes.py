"""Exit codes of a run: the process exit status of `runwire run` and the `error.code` of a run."""

from __future__ import annotations

import enum

from .step import CompletedState


class ExitCode(enum.IntEnum):
    """How a run ended. The name is the run's `error.code`; the value is `runwire run`'s status."""

    OK = 0
    MISSING_REQUIREMENT = 1  # a required context key or source had no value
    STEP_EXCEPTION = 2  # a step raised (including StepFailure / SourceError)
    INVALID_RETURN = 3  # a step returned something else than its declared outputs
    STEP_FAILED = 4  # a step returned StepResult(success=False)
    CANCELLED = 5  # the cancel token was set (also Ctrl-C in `runwire run`)
    USAGE = 64  # bad arguments or an invalid pipeline file (sysexits EX_USAGE)


def exit_code_from(state: CompletedState) -> ExitCode:
    """The exit code for a step's or a run's recorded state.

    A succeeded or skipped state is `OK`; a cancelled one `CANCELLED`; a failed one carries its
    code in `state.meta["code"]` (set by the runner), defaulting to `STEP_EXCEPTION`.
    """
    if state.status == "cancelled":
        return ExitCode.CANCELLED
    if state.success:
        return ExitCode.OK
    code = state.meta.get("code")
    if isinstance(code, str) and code in ExitCode.__members__:
        return ExitCode[code]
    return ExitCode.STEP_EXCEPTION
