"""Explicit state machines for sessions and runs: an enum plus a transition table.

The runtime changes a session's or a run's state only through `session_transition` and
`run_transition`; a transition missing from the table is a bug in the runtime, so it raises
`InvalidTransition` instead of silently producing a state a client could never explain.

Session states (contract section 4)::

    idle ──run starts──> running_partial | running_full
    running_* ──succeeded──> idle
    running_* ──failed──> error_partial | error_full       (by the run's effective mode)
    running_* ──cancelled / interrupted──> the state the session had before the run
    error_* ──run starts──> running_*          error_* ──reset──> idle
"""

from __future__ import annotations

from service.contract.records import RunStatus, SessionState

__all__ = [
    "RUN_TRANSITIONS",
    "SESSION_TRANSITIONS",
    "InvalidTransition",
    "error_state",
    "run_transition",
    "running_state",
    "session_transition",
]

S = SessionState
R = RunStatus

_RUNNING = frozenset({S.RUNNING_PARTIAL, S.RUNNING_FULL})
_RESTING = frozenset({S.IDLE, S.ERROR_PARTIAL, S.ERROR_FULL})

SESSION_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.IDLE: _RUNNING,
    S.ERROR_PARTIAL: _RUNNING | {S.IDLE},
    S.ERROR_FULL: _RUNNING | {S.IDLE},
    # A running session returns to a resting state when its run ends. There is no
    # running_partial -> running_full edge: a fallback run is a new run, started after the failed
    # partial run has put the session in error_partial.
    S.RUNNING_PARTIAL: _RESTING,
    S.RUNNING_FULL: _RESTING,
}

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # queued -> cancelling: a run a worker has already taken (it is planning, `run.started` not
    # yet out) cannot be cancelled at once; it stops at its first step boundary.
    R.QUEUED: frozenset({R.RUNNING, R.CANCELLING, R.CANCELLED, R.INTERRUPTED}),
    R.RUNNING: frozenset({R.CANCELLING, R.SUCCEEDED, R.FAILED, R.CANCELLED, R.INTERRUPTED}),
    # A run asked to stop may still finish its last step first: cancellation is cooperative, and
    # the record says what really happened.
    R.CANCELLING: frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED, R.INTERRUPTED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.CANCELLED: frozenset(),
    R.INTERRUPTED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change the transition table does not allow (a runtime bug, never a client error)."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        super().__init__(f"invalid {kind} transition {old} -> {new}")
        self.old = old
        self.new = new


def session_transition(old: SessionState, new: SessionState) -> SessionState:
    """Return `new` if `old -> new` is allowed, else raise `InvalidTransition`."""
    if new not in SESSION_TRANSITIONS[old]:
        raise InvalidTransition("session", old.value, new.value)
    return new


def run_transition(old: RunStatus, new: RunStatus) -> RunStatus:
    """Return `new` if `old -> new` is allowed, else raise `InvalidTransition`."""
    if new not in RUN_TRANSITIONS[old]:
        raise InvalidTransition("run", old.value, new.value)
    return new


def running_state(effective_mode: str) -> SessionState:
    """The session state while a run of this effective mode (`partial` | `full`) is active."""
    return S.RUNNING_PARTIAL if effective_mode == "partial" else S.RUNNING_FULL


def error_state(effective_mode: str) -> SessionState:
    """The session state after a failed run of this effective mode."""
    return S.ERROR_PARTIAL if effective_mode == "partial" else S.ERROR_FULL


def is_running(state: SessionState) -> bool:
    """True for running_partial and running_full."""
    return state in _RUNNING


def is_error(state: SessionState) -> bool:
    """True for error_partial and error_full."""
    return state in (S.ERROR_PARTIAL, S.ERROR_FULL)
