"""Cooperative cancellation: a token checked between steps and by long steps."""

from __future__ import annotations

import threading

from .errors import CancelledError


class CancelToken:
    """Set once from any thread; checked (cheaply) by the runner and by long steps."""

    __slots__ = ("_event", "is_cancelled")

    def __init__(self) -> None:
        self._event = threading.Event()
        # The event's own bound method: the runner calls it before every step, and a direct
        # C-level call is several times cheaper than the `cancelled` property.
        self.is_cancelled = self._event.is_set

    def cancel(self) -> None:
        """Request cancellation (idempotent, any thread)."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `CancelledError` once cancelled."""
        if self._event.is_set():
            raise CancelledError("run cancelled")

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel. Returns True if cancelled."""
        return self._event.wait(timeout)
