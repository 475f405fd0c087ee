"""Replay: `ReplayBuffer` (the most recent events of one session, kept in memory for resuming
clients), `HistorySource` (the events on disk) and the `stream.gap` announcement.

Bounded: it holds at most `size` events (the service's `--replay-size`); appending to a full
buffer evicts the oldest event and remembers its seq in `evicted_upto`, so that a resume from an
id older than that knows memory alone cannot serve it (the broker then asks its
`HistorySource`, or announces a `stream.gap`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterable
from typing import Protocol

import msgspec

from streaming.envelope import Event
from streaming.events import STREAM_GAP

log = logging.getLogger(__name__)


class ReplayBuffer:
    """The last `size` events of one session, in strictly increasing seq order.

    Loop-only (not thread-safe): the broker appends from its event-loop callback.
    """

    __slots__ = ("_events", "evicted_upto", "size")

    def __init__(self, size: int, *, evicted_upto: int = 0) -> None:
        if size < 1:
            raise ValueError("replay size must be >= 1")
        self.size = size
        # Highest seq this buffer no longer holds (0: nothing lost yet). A broker started after
        # a restart passes its floor here: memory never held anything before it.
        self.evicted_upto = evicted_upto
        self._events: deque[Event] = deque()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def newest_seq(self) -> int | None:
        return self._events[-1].seq if self._events else None

    def append(self, event: Event) -> None:
        """Add the newest event (its seq must exceed every held seq); evict the oldest if full."""
        if len(self._events) >= self.size:
            self.evicted_upto = self._events.popleft().seq
        self._events.append(event)

    def after(self, seq: int, run_id: str | None = None) -> list[Event]:
        """Held events with a seq above `seq` (only run `run_id`'s when given), oldest first."""
        out: list[Event] = []
        # Walk from the newest end: a resuming client usually misses only a few recent events.
        for event in reversed(self._events):
            if event.seq <= seq:
                break
            if run_id is None or event.run_id == run_id:
                out.append(event)
        out.reverse()
        return out

    def covers(self, seq: int) -> bool:
        """True when every event of this session after `seq` is still held."""
        return seq >= self.evicted_upto


class HistorySource(Protocol):
    """Events on disk, so that a resume reaches past the in-memory buffers and restarts."""

    def events_after(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> Iterable[bytes]:
        """Raw envelope lines with a seq above `seq`, in seq order, of `sessions` (None: all)
        or of run `run_id`. Synchronous: the broker calls it in a worker thread."""
        ...


def read_history(
    source: HistorySource,
    after: int,
    upto: int,
    sessions: Collection[str] | None,
    run_id: str | None,
) -> list[Event]:
    """Worker thread: decode history lines with `after < seq <= upto` (later ones arrive live
    or are in memory); undecodable lines are skipped (a torn write, a foreign file)."""
    out: list[Event] = []
    for raw in source.events_after(after, sessions, run_id):
        try:
            event = Event.from_raw(raw)
        except msgspec.MsgspecError:  # anything else is a bug, not a damaged file
            log.warning("skipping an unreadable history line")
            continue
        if after < event.seq <= upto:
            out.append(event)
    return out


def make_gap_event(
    epoch: str,
    top: int,
    target: tuple[str | None, int],
    sessions: Collection[str] | None,
    run_id: str | None,
    events: list[Event],
) -> Event:
    """The `stream.gap` announcement before `events` (what follows it, complete).

    Its seq is one below the first event that follows (`top` when none does), so a client
    resuming from the gap's id gets exactly what follows it, and ids stay increasing within
    the stream. `requested` echoes the resume point ("0" or the id)."""
    requested_epoch, requested_seq = target
    requested = "0" if requested_epoch is None else f"{requested_epoch}-{requested_seq}"
    oldest = events[0] if events else None
    session_id = next(iter(sessions)) if sessions is not None and len(sessions) == 1 else "*"
    return Event.create(
        epoch=epoch,
        seq=oldest.seq - 1 if oldest is not None else top,
        type=STREAM_GAP,
        session_id=session_id,
        run_id=run_id,
        data={
            "requested": requested,
            "oldest_available": oldest.id if oldest is not None else None,
            "epoch": epoch,
        },
    )
