"""The `streaming` package's exceptions: one root, `StreamingError`.

The service translates them at its boundary: `InvalidEventId` -> 422 `INVALID_REQUEST`,
`ControlError` -> a WebSocket error reply with its own code.
"""

from __future__ import annotations


class StreamingError(Exception):
    """Root of every error raised by `streaming`."""


class InvalidEventId(StreamingError, ValueError):
    """A `Last-Event-ID` / `since` value that is not `"<epoch>-<seq>"` (nor `"0"`)."""

    def __init__(self, value: str) -> None:
        super().__init__(f"malformed event id {value!r}: expected '<epoch>-<seq>' or '0'")
        self.value = value
        # where the id came from ("header:Last-Event-ID", "query:since", ...), when known
        self.where: str | None = None


class ControlError(StreamingError):
    """Raised by a `ControlHandler` to answer a WebSocket op with an error reply.

    `code` is one of the contract's error codes (`SESSION_NOT_FOUND`, `QUEUE_FULL`, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BrokerClosed(StreamingError):
    """The broker was closed (`Broker.aclose`); no new subscriptions are accepted."""


class BrokerNotStarted(StreamingError):
    """`Broker.subscribe` was called before `await Broker.start()`."""
