"""`RunDirectoryHistory`: the broker's `HistorySource` over the event logs in run directories.

Every event is appended to an NDJSON log before it is published (contract section 7):
events of a run to `runs/<sid>/<run_id>/events.ndjson`, session-level events (no run) to
`runs/<sid>/events.ndjson`. Replaying from these files lets a client resume past the broker's
in-memory buffers and across restarts (contract section 5.3).

Reading rules:
- Lines are returned raw (the exact bytes the broker published), with `seq > after`, in seq
  order, each seq once. A last line without its newline is a write in progress or torn by a
  crash, and is ignored; any other undecodable line is skipped.
- Cost: a file whose highest seq is known to be `<= after` is skipped after one `stat`. The
  range of seqs in each file is cached, keyed by path and validated by `(size, mtime_ns)`, so
  after the first read of a file only files that grew (or hold newer events) are read again.
  The cache holds at most `MAX_CACHED_FILES` entries (least recently used go first).
- Size: at most `max_events` lines are returned, the newest ones. The broker keeps the newest
  `replay_limit` events of a replay and announces a `stream.gap` when it had more, so keep
  `max_events` above the broker's `replay_limit` (the defaults are 200,000 and 100,000): then
  a truncation here always also shows up as a gap there.

Synchronous and thread-safe: the broker calls it in a worker thread.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable
from pathlib import Path

import msgspec

from pipeline.rundir import EVENTS
from service.storage.retained import DIR_ID

MAX_CACHED_FILES = 65_536
DEFAULT_MAX_EVENTS = 200_000


class _SeqOnly(msgspec.Struct):
    """Decodes just `seq` from an envelope line; msgspec skips the other fields quickly."""

    seq: int


_decode_seq = msgspec.json.Decoder(_SeqOnly).decode


def complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of `data` without their newlines; a last line lacking its
    newline (torn, or being written) is dropped, and so are blank lines."""
    end = data.rfind(b"\n")
    if end < 0:
        return []
    return [line for line in data[:end].split(b"\n") if line.strip()]


class RunDirectoryHistory:
    """Replays events from `runs_dir` (see the module docstring for rules and bounds)."""

    def __init__(self, runs_dir: Path | str, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.runs_dir = Path(runs_dir)
        self.max_events = max_events
        self._lock = threading.Lock()
        # path -> ((size, mtime_ns), lowest seq, highest seq) of its complete lines
        self._ranges: OrderedDict[Path, tuple[tuple[int, int], int, int]] = OrderedDict()

    def events_after(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> Iterable[bytes]:
        """Raw envelope lines with a seq above `seq`, in seq order, of `sessions` (None: all)
        or, with `run_id`, of that run only."""
        found: dict[int, bytes] = {}
        for path in self._files(sessions, run_id):
            for line_seq, line in self._read_after(path, seq):
                found.setdefault(line_seq, line)
        ordered = sorted(found)
        if len(ordered) > self.max_events:
            ordered = ordered[-self.max_events :]
        return [found[s] for s in ordered]

    # -- which files ------------------------------------------------------------------------

    def _session_dirs(self, sessions: Collection[str] | None) -> list[Path]:
        if sessions is not None:  # symlinked directories are never read (as in listings)
            dirs = [self.runs_dir / sid for sid in sessions if DIR_ID.fullmatch(sid)]
            return [d for d in dirs if not d.is_symlink()]
        try:
            with os.scandir(self.runs_dir) as it:
                return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def _files(self, sessions: Collection[str] | None, run_id: str | None) -> list[Path]:
        files: list[Path] = []
        if run_id is not None and not DIR_ID.fullmatch(run_id):
            return files
        for session_dir in self._session_dirs(sessions):
            if run_id is not None:
                if not (session_dir / run_id).is_symlink():
                    files.append(session_dir / run_id / EVENTS)
                continue
            files.append(session_dir / EVENTS)
            try:
                with os.scandir(session_dir) as it:
                    files.extend(
                        Path(e.path) / EVENTS
                        for e in it
                        if e.is_dir(follow_symlinks=False) and DIR_ID.fullmatch(e.name)
                    )
            except OSError:
                continue
        return files

    # -- reading one file -------------------------------------------------------------------

    def _read_after(self, path: Path, after: int) -> list[tuple[int, bytes]]:
        try:
            st = path.stat()
        except OSError:
            return []
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._ranges.get(path)
            if cached is not None and cached[0] == key:
                self._ranges.move_to_end(path)
                if cached[2] <= after:
                    return []  # everything in it is older: no need to read it
        try:
            data = path.read_bytes()
        except OSError:
            return []
        out: list[tuple[int, bytes]] = []
        low, high = 0, 0
        for line in complete_lines(data):
            try:
                line_seq = _decode_seq(line).seq
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # a foreign or damaged line: skipped, never fatal
            low = line_seq if not low else min(low, line_seq)
            high = max(high, line_seq)
            if line_seq > after:
                out.append((line_seq, line))
        # The key from before the read: if the file grew meanwhile, the next call reads again.
        with self._lock:
            self._ranges[path] = (key, low, high)
            self._ranges.move_to_end(path)
            while len(self._ranges) > MAX_CACHED_FILES:
                self._ranges.popitem(last=False)
        return out
