"""Cooperative cancellation: a token checked between steps and by long steps."""

from __future__ import annotations

import threading

from .errors import CancelledError


class CancelToken:
    """Set once from any thread; checked (cheaply) by the runner and by long steps."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("run cancelled")

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel. Returns True if cancelled."""
        return self._event.wait(timeout)
