"""Session and run state machines: every allowed edge works, every other edge raises."""

from __future__ import annotations

import itertools

import pytest

from service.contract.records import RunStatus, SessionState
from service.runtime.transitions import (
    SESSION_TRANSITIONS,
    InvalidTransition,
    error_state,
    run_transition,
    running_state,
    session_transition,
)

S = SessionState
R = RunStatus


def test_a_session_runs_then_rests_by_outcome() -> None:
    state = session_transition(S.IDLE, running_state("partial"))
    assert state is S.RUNNING_PARTIAL
    state = session_transition(state, error_state("partial"))
    assert state is S.ERROR_PARTIAL
    state = session_transition(state, running_state("full"))  # the fallback run
    assert state is S.RUNNING_FULL
    assert session_transition(state, S.IDLE) is S.IDLE


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.IDLE, S.ERROR_FULL),  # an error needs a run
        (S.IDLE, S.IDLE),
        (S.RUNNING_PARTIAL, S.RUNNING_FULL),  # a fallback is a new run, not an upgrade
        (S.RUNNING_FULL, S.RUNNING_PARTIAL),
        (S.ERROR_PARTIAL, S.ERROR_FULL),
    ],
)
def test_invalid_session_transitions_raise(old: SessionState, new: SessionState) -> None:
    with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
        session_transition(old, new)


def test_session_table_is_total_and_consistent() -> None:
    for old, new in itertools.product(S, S):
        if new in SESSION_TRANSITIONS[old]:
            assert session_transition(old, new) is new
        else:
            with pytest.raises(InvalidTransition):
                session_transition(old, new)


def test_final_run_states_have_no_way_out() -> None:
    for final in (R.SUCCEEDED, R.FAILED, R.CANCELLED, R.INTERRUPTED):
        for new in R:
            with pytest.raises(InvalidTransition):
                run_transition(final, new)


def test_run_lifecycle_edges() -> None:
    assert run_transition(R.QUEUED, R.CANCELLED) is R.CANCELLED
    assert run_transition(R.QUEUED, R.RUNNING) is R.RUNNING
    assert run_transition(R.QUEUED, R.CANCELLING) is R.CANCELLING  # taken by a worker, planning
    assert run_transition(R.RUNNING, R.CANCELLING) is R.CANCELLING
    assert run_transition(R.CANCELLING, R.CANCELLED) is R.CANCELLED
    with pytest.raises(InvalidTransition):
        run_transition(R.QUEUED, R.SUCCEEDED)  # a run must start before it ends
    with pytest.raises(InvalidTransition):
        run_transition(R.CANCELLING, R.RUNNING)
