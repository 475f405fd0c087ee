"""`RepeatFilter`: a logging filter that collapses repeated identical warnings and errors.

A failing disk makes the same error happen for every event and every retry: thousands of
identical tracebacks would bury the one line that matters. The first record of a kind is
logged in full; identical ones within `window_s` are dropped and counted; the first one after
the window is logged again, without its traceback, saying how many were dropped. Records are
identical when they come from the same logger and level, with the same message template (not
its arguments: "cannot journal event %s" is one kind whatever the event), and the same
exception type and text.

Bounded: at most `max_kinds` kinds are remembered (least recently seen forgotten first).
Records below WARNING pass untouched (an access log line is never "a repeat").
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

__all__ = ["RepeatFilter"]


class RepeatFilter(logging.Filter):
    """See the module docstring. Thread-safe enough for logging: handlers call filters under
    their own lock, and a lost count under a race only misreports a number."""

    def __init__(self, window_s: float = 60.0, max_kinds: int = 256) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_kinds = max_kinds
        # kind -> [time the kind was last logged, records dropped since]
        self._seen: OrderedDict[tuple[object, ...], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        kind = (
            record.name,
            record.levelno,
            str(record.msg),
            type(exc).__name__ if exc else None,
            str(exc) if exc else None,
        )
        now = time.monotonic()
        seen = self._seen.get(kind)
        if seen is None:
            self._seen[kind] = [now, 0]
            while len(self._seen) > self.max_kinds:
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(kind)
        logged_at, dropped = seen
        if now - logged_at < self.window_s:
            seen[1] = dropped + 1
            return False
        seen[0], seen[1] = now, 0
        if dropped:
            record.msg = (
                f"{record.msg} (repeated {int(dropped) + 1} times in {now - logged_at:.0f} s)"
            )
            if exc is not None:
                record.msg = f"{record.msg}: {type(exc).__name__}: {exc}"
            record.exc_info = None
            record.exc_text = None
        return True
