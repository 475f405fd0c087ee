"""The contract's event type names (section 5), spelled once. Standard library only.

Everything that names an event type imports it from here: the broker and its envelope, the
AsyncAPI document, the service that emits them and the CLI that prints them. Kept free of
third-party imports so the CLI (and any client) can use it without loading the server.
"""

from __future__ import annotations

from typing import Final

SESSION_CREATED: Final = "session.created"
SESSION_UPDATED: Final = "session.updated"
SESSION_DELETED: Final = "session.deleted"
SESSION_STATE_CHANGED: Final = "session.state_changed"
SOURCES_CHANGED: Final = "sources.changed"
RUN_QUEUED: Final = "run.queued"
RUN_STARTED: Final = "run.started"
STEP_STARTED: Final = "step.started"
STEP_PROGRESS: Final = "step.progress"
STEP_FINISHED: Final = "step.finished"
RUN_FINISHED: Final = "run.finished"
RUN_CANCELLED: Final = "run.cancelled"
RUN_INTERRUPTED: Final = "run.interrupted"
STREAM_GAP: Final = "stream.gap"

EVENT_TYPES: Final = (
    SESSION_CREATED, SESSION_UPDATED, SESSION_DELETED, SESSION_STATE_CHANGED, SOURCES_CHANGED,
    RUN_QUEUED, RUN_STARTED, STEP_STARTED, STEP_PROGRESS, STEP_FINISHED, RUN_FINISHED,
    RUN_CANCELLED, RUN_INTERRUPTED, STREAM_GAP,
)  # fmt: skip
# Exactly one of these ends every run.
TERMINAL_RUN_TYPES: Final = frozenset({RUN_FINISHED, RUN_CANCELLED, RUN_INTERRUPTED})
