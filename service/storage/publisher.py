"""`EventPublisher`: the one path every service event takes — stamp, journal, broadcast.

For each event: `broker.stamp(...)` assigns the next server-wide seq, the raw line is appended to
its journal and flushed (the run's `events.ndjson`, or `runs/<sid>/events.ndjson` for an event
without a run), and only then `broker.publish(event)` hands it to subscribers. So an event a
client has seen is always in a journal, and replay from disk (`service.storage.history`) can serve it
after a restart.

Thread-safety and order: `emit` may be called from any thread (the event loop's I/O thread, the
run worker threads). One lock covers stamp -> append -> publish, so events reach both the
journals and the broker in seq order; the lock is held for a buffered write and a flush only
(no fsync: the journal is a log of what was said, the store is the durable truth).

`emit` does file I/O, so the event loop never calls it directly: the runtime calls it from its
I/O thread (`DurableIO.emit`) or from a worker thread (the run observer).

Open files: a run's journal stays open while the run is active (`open_run`/`close_run`), because
a run can emit thousands of progress events; session journals are opened per event (they see a
few events per run). At most `max_open` run journals are kept open (one per active run is the
normal case); past that the least recently opened is closed and reopened on its next event.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Protocol

from pipeline.atomic import write_bytes_atomic
from pipeline.rundir import EVENTS, open_for_append
from streaming.envelope import Event

__all__ = ["EventPublisher", "EventSink"]

log = logging.getLogger("service.storage.publisher")


class EventSink(Protocol):
    """The two broker methods the publisher needs (`streaming.broker.Broker` has both)."""

    def stamp(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event: ...

    def publish(self, event: Event) -> None: ...


class EventPublisher:
    """Stamps, journals and publishes events; thread-safe (see the module docstring)."""

    def __init__(self, broker: EventSink, runs_dir: Path, *, max_open: int = 64) -> None:
        self._broker = broker
        self._runs_dir = Path(runs_dir)
        self._lock = threading.Lock()
        self._max_open = max_open
        self._run_files: OrderedDict[str, IO[bytes]] = OrderedDict()
        self._run_paths: dict[str, Path] = {}  # run_id -> events.ndjson of runs registered

    def run_journal(self, session_id: str, run_id: str) -> Path:
        """The run's `events.ndjson`."""
        return self._runs_dir / session_id / run_id / EVENTS

    def session_journal(self, session_id: str) -> Path:
        """`runs/<sid>/events.ndjson`: events without a run."""
        return self._runs_dir / session_id / EVENTS

    def open_run(self, session_id: str, run_id: str) -> None:
        """Register a run whose events will be journalled (opened lazily on its first event)."""
        with self._lock:
            self._run_paths[run_id] = self.run_journal(session_id, run_id)

    def close_run(self, run_id: str) -> None:
        """The run emitted its terminal event: close its journal."""
        with self._lock:
            self._run_paths.pop(run_id, None)
            handle = self._run_files.pop(run_id, None)
        if handle is not None:
            handle.close()

    def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event:
        """Stamp, append to the journal (flushed), then publish. Returns the event.

        A journal that cannot be written (disk full) is logged and the event is still
        published: a live client should not lose the event because the disk did.
        """
        with self._lock:
            event = self._broker.stamp(type, session_id, data, run_id)
            try:
                self._append(event, session_id, run_id)
            except OSError:
                log.exception("cannot journal event %s of session %s", event.id, session_id)
            self._broker.publish(event)
        return event

    def trim_session_journal(self, session_id: str, max_bytes: int) -> int:
        """Bound `runs/<sid>/events.ndjson`: past `max_bytes`, keep only its newest whole lines
        within half of it (so a trim happens once per `max_bytes / 2` of new events, not at
        every event). The file is replaced atomically under the journal lock, so no event is
        appended meanwhile. Returns the bytes removed (0: nothing to do). Used for the demo
        session only (`service.runtime.demo`): replay past the cut gets what is kept."""
        path = self.session_journal(session_id)
        with self._lock:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return 0
            if size <= max_bytes:
                return 0
            data = path.read_bytes()
            # The tail starts at the first line that begins within the newest max_bytes / 2.
            newline = data.find(b"\n", len(data) - max_bytes // 2 - 1)
            cut = len(data) if newline < 0 else newline + 1
            write_bytes_atomic(path, data[cut:])
            return cut

    def close(self) -> None:
        """Close every open journal (shutdown)."""
        with self._lock:
            handles = list(self._run_files.values())
            self._run_files.clear()
            self._run_paths.clear()
        for handle in handles:
            handle.close()

    def _append(self, event: Event, session_id: str, run_id: str | None) -> None:
        line = event.raw + b"\n"
        if run_id is None:
            path = self.session_journal(session_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open_for_append(path) as session_file:
                session_file.write(line)
            return
        handle: IO[bytes] | None = self._run_files.get(run_id)
        if handle is None:
            path = self._run_paths.get(run_id) or self.run_journal(session_id, run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open_for_append(path)  # kept open across events, closed in close_run
            if run_id in self._run_paths:
                self._run_files[run_id] = handle
                while len(self._run_files) > self._max_open:
                    _, oldest = self._run_files.popitem(last=False)
                    oldest.close()
            else:
                # An event of a run that is not active (cancelled while queued, interrupted at
                # restart): one line, no reason to keep the file open.
                try:
                    handle.write(line)
                    handle.flush()
                finally:
                    handle.close()
                return
        handle.write(line)
        handle.flush()
