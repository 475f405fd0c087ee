"""`SessionStore`: sessions, sources, sinks, runs and idempotency keys in SQLite.

One file, `<data_dir>/runwire.sqlite3`, in WAL mode with `synchronous=FULL`: a method that
saves returns only after its commit is on disk, so an HTTP answer that acknowledges a request
(201, 202) can be sent right after the save (a 202 means the run is on disk). Two hot-path
commits choose when their sync happens instead: `transaction(synced=False)` commits without it
(the commit is in the WAL, which the OS holds: a process crash loses nothing) and `sync()` then
does what `synchronous=FULL` would have done at that commit, an fdatasync of the WAL, once the
caller has done what should not wait for the disk (see `service.storage.io_thread`).

Threading: the store is synchronous and owns one connection, opened with
`check_same_thread=False` and guarded by a lock, so it may be called from any worker thread but
from one at a time (callers queue on the lock). It must never be called on the event loop; the
runtime reaches it through its one worker-thread boundary. `transaction()` holds the lock for
the whole block, so several saves become one commit and no other thread interleaves.

Failure policy: a store that cannot be opened, read, written or migrated raises
`StoreError(path, reason)` — at open for a corrupt file, a directory in its place, a read-only
file or a schema from a newer runwire. The file is never replaced or repaired silently; the
operator decides. Errors during later calls (disk full, I/O) are raised as `StoreError` too,
chained to the sqlite3 error (`service.contract.errors.is_storage_full` recognises a full disk in it).
"""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from service.contract.records import RunRecord, RunSource, SessionRecord, SourceRecord
from service.storage.migrations import SchemaTooNew, migrate

_encode = msgspec.json.Encoder().encode
_decode_session = msgspec.json.Decoder(SessionRecord).decode
_decode_run = msgspec.json.Decoder(RunRecord).decode
_decode_any = msgspec.json.Decoder().decode
_decode_options = msgspec.json.Decoder(dict[str, Any]).decode
_decode_run_sources = msgspec.json.Decoder(dict[str, RunSource]).decode

# How long a caller waits for SQLite's file lock held by another connection (another process
# on the same data directory, or an external reader) before failing.
BUSY_TIMEOUT_S = 10.0


class StoreError(Exception):
    """The store at `path` is unusable: `reason` says why (corrupt, unreadable, read-only...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"session store {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# The readiness probe also writes this much beside the database (then removes it): SQLite's own
# probe rolls back before anything reaches the disk, so it cannot see a full disk.
DISK_PROBE_BYTES = 4096
DISK_PROBE_NAME = ".runwire-write-probe"


# Below this much free space (for unprivileged writers) a write transaction is refused as if the
# disk were full. SQLite reuses its WAL file's pages, so a commit can succeed on a disk with no
# room for anything else (run directories, journals): without this margin a submit would be
# acknowledged whose run directory cannot be written, and a finishing run would have no room
# for its summary. Refusing early keeps the store and the run directories consistent.
MIN_FREE_BYTES = 1 << 20


def check_room(directory: Path) -> None:
    """Raise `OSError(ENOSPC)` when `directory`'s file system has less than `MIN_FREE_BYTES`
    free (one `statvfs`, no write)."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device ({free} bytes free, {MIN_FREE_BYTES} needed)",
            str(directory),
        )


def probe_disk(directory: Path) -> None:
    """Write `DISK_PROBE_BYTES` to a scratch file in `directory` and remove it; raises the
    `OSError` (ENOSPC on a full disk, EDQUOT over quota, EROFS...) when that is impossible."""
    check_room(directory)
    path = directory / DISK_PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * DISK_PROBE_BYTES)
        finally:
            os.close(fd)
    finally:
        with suppress(OSError):
            os.unlink(path)


def _probe_write(conn: sqlite3.Connection) -> None:
    """Write a row and roll it back: raises when the file cannot be written (read-only file,
    full or failing disk, a lock held elsewhere). Taking the lock alone is not enough: SQLite
    opens a file it cannot write read-only and still grants `BEGIN IMMEDIATE`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', '')")
    finally:
        conn.execute("ROLLBACK")


class SessionStore:
    """The durable home of sessions and runs (see the module docstring for threading rules)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction(); only the outermost one commits
        self._wal: tuple[int, int] | None = None  # (fd, inode) of the WAL file, for `sync`
        self._conn = self._open()
        self._epoch = self._init_meta()

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and not self.path.is_file():
            raise StoreError(self.path, "exists but is not a regular file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(self.path, f"cannot create its directory: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot open: {exc}") from exc
        try:
            # Reading the schema detects a file that is not a database; quick_check detects
            # damaged pages inside one (O(size), a fraction of a second for a large store).
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StoreError(self.path, "corrupt: " + "; ".join(problems))
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(self.path, f"cannot switch to WAL (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
            # Probe for writing now, so a read-only file is reported at start and not at the
            # first client request.
            _probe_write(conn)
        except SchemaTooNew as exc:
            conn.close()
            raise StoreError(self.path, str(exc)) from exc
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(self.path, f"unusable: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return conn

    def _init_meta(self) -> str:
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is not None:
                return str(row[0])
            # Seconds plus six random digits: two data directories made in the same second
            # (tests, a fleet provisioned at once) must not hand out look-alike event ids.
            epoch = f"{int(time.time())}{secrets.randbelow(10**6):06d}"
            conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('seq_reserved', '0')")
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_utc', ?)", (_utc_now(),)
            )
            return epoch

    def close(self) -> None:
        """Close the connection (a WAL checkpoint happens on the last close). Idempotent."""
        with self._lock:
            self._conn.close()
            if self._wal is not None:
                os.close(self._wal[0])
                self._wal = None

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def transaction(
        self, *, writing: bool = True, synced: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """Group several saves into one commit; nested uses join the outer transaction.

        The lock is held for the whole block, so other threads wait rather than interleave.
        An exception rolls the whole transaction back. sqlite3 errors surface as `StoreError`.
        A `writing` transaction is refused (`StoreError` from ENOSPC) when the disk has less
        than `MIN_FREE_BYTES` free (see `check_room`). `synced=False` (outermost only): the
        commit returns before the WAL is synced; the caller calls `sync()` after.
        """
        with self._lock:
            outermost = self._depth == 0
            if outermost and writing:
                try:
                    check_room(self.path.parent)
                except OSError as exc:
                    raise StoreError(self.path, str(exc)) from exc
            deferred = outermost and not synced
            try:
                if deferred:
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                if outermost:
                    self._conn.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                if outermost:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(outermost)
                raise StoreError(self.path, str(exc)) from exc
            except BaseException:
                self._rollback(outermost)
                raise
            finally:
                if deferred:
                    with suppress(sqlite3.Error):  # a broken connection: the next call says so
                        self._conn.execute("PRAGMA synchronous=FULL")

    def sync(self) -> None:
        """Make every commit so far durable: fdatasync the WAL, as `synchronous=FULL` does at
        each commit (for commits made with `transaction(synced=False)`). Raises `StoreError`."""
        wal = f"{self.path}-wal"
        try:
            with self._lock:
                inode = os.stat(wal).st_ino
                if self._wal is None or self._wal[1] != inode:
                    if self._wal is not None:
                        os.close(self._wal[0])
                        self._wal = None
                    self._wal = (os.open(wal, os.O_RDONLY), inode)
                fd = self._wal[0]
            os.fdatasync(fd)  # outside the lock: readers need not wait for the disk
        except OSError as exc:
            raise StoreError(self.path, f"cannot sync the WAL: {exc}") from exc

    def _rollback(self, outermost: bool) -> None:
        # If even this fails the connection is gone; the next call reports it.
        with suppress(sqlite3.Error):
            if outermost and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(self.path, str(exc)) from exc

    def writable(self) -> bool:
        """True when a write transaction can start now and the disk has room for a page
        (readiness probe; takes the lock)."""
        with self._lock:
            if self._depth:
                return True
            try:
                _probe_write(self._conn)
                probe_disk(self.path.parent)
            except (sqlite3.Error, OSError):
                return False
            return True

    # -- event ids -------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """Made once when the data directory's store is created; event ids start with it."""
        return self._epoch

    def seq_floor(self) -> int:
        """The first seq usable now: one above the highest seq ever reserved."""
        rows = self._query("SELECT value FROM meta WHERE key = 'seq_reserved'")
        return int(rows[0][0]) + 1 if rows else 1

    def reserve_seq(self, upto: int) -> None:
        """Durably record that seqs up to `upto` may have been handed out (never lowers it)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('seq_reserved', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER),"
                " CAST(excluded.value AS INTEGER))",
                (str(int(upto)),),
            )

    # -- sessions --------------------------------------------------------------------------

    def save_session(self, record: SessionRecord, pipeline_text: str) -> None:
        """Insert or replace a session, its sources and its sinks (one commit)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions (session_id, record, pipeline_text) VALUES (?, ?, ?)"
                " ON CONFLICT(session_id) DO UPDATE SET record = excluded.record,"
                " pipeline_text = excluded.pipeline_text",
                (record.session_id, _encode(record).decode(), pipeline_text),
            )
            for table, refs in (("sources", record.sources), ("sinks", record.sinks)):
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (record.session_id,))
                conn.executemany(
                    f"INSERT INTO {table} (session_id, ref, type, location, options)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (record.session_id, ref, s.type, s.location, _encode(s.options).decode())
                        for ref, s in refs.items()
                    ],
                )

    def delete_session(self, session_id: str) -> None:
        """Forget a session: its row, sources, sinks, idempotency keys and run rows.

        Its run directories (retained runs) are untouched. A run saved again afterwards (a
        worker finishing late) is stored as an orphan; `list_runs` still returns it, so the
        runtime can mark it final on the next start.
        """
        with self.transaction() as conn:
            for table in ("sources", "sinks", "idempotency", "runs", "sessions"):
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

    def load_sessions(self) -> list[tuple[SessionRecord, str]]:
        """Every session with its pipeline text, oldest first; sources and sinks come from
        their own tables (the authority), not from the copy inside the record."""
        with self.transaction(writing=False) as conn:
            rows = conn.execute(
                "SELECT session_id, record, pipeline_text FROM sessions ORDER BY rowid"
            ).fetchall()
            refs: dict[str, dict[str, dict[str, SourceRecord]]] = {"sources": {}, "sinks": {}}
            for table, by_session in refs.items():
                for sid, ref, type_, location, options in conn.execute(
                    f"SELECT session_id, ref, type, location, options FROM {table} ORDER BY rowid"
                ):
                    by_session.setdefault(sid, {})[ref] = SourceRecord(
                        type=type_, location=location, options=_decode_options(options)
                    )
        result = []
        for sid, record_text, pipeline_text in rows:
            record = _decode_session(record_text)
            record.sources = refs["sources"].get(sid, {})
            record.sinks = refs["sinks"].get(sid, {})
            result.append((record, pipeline_text))
        return result

    # -- runs ------------------------------------------------------------------------------

    def save_run(
        self,
        record: RunRecord,
        request: Any = None,
        sources: dict[str, RunSource] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """Insert or update a run. Its queue position is fixed by the first save; `request`
        (the submitted body, any JSON value), `sources` (the inputs fixed at acceptance) and
        `manifest` (its `manifest.json`, saved with the final record) are kept from the last
        save that gives them (a coalescing merge replaces the first two)."""
        request_text = None if request is None else _encode(request).decode()
        sources_text = None if sources is None else _encode(sources).decode()
        manifest_text = None if manifest is None else _encode(manifest).decode()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, session_id, status, queued_utc, record, request,"
                " sources, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET session_id = excluded.session_id,"
                " status = excluded.status, record = excluded.record,"
                " request = COALESCE(excluded.request, runs.request),"
                " sources = COALESCE(excluded.sources, runs.sources),"
                " manifest = COALESCE(excluded.manifest, runs.manifest)",
                (
                    record.run_id,
                    record.session_id,
                    str(record.status),
                    record.queued_utc,
                    _encode(record).decode(),
                    request_text,
                    sources_text,
                    manifest_text,
                ),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query("SELECT record FROM runs WHERE run_id = ?", (run_id,))
        return _decode_run(rows[0][0]) if rows else None

    def get_run_request(self, run_id: str) -> Any:
        """The request saved with the run (decoded JSON), or None."""
        rows = self._query("SELECT request FROM runs WHERE run_id = ?", (run_id,))
        return _decode_any(rows[0][0]) if rows and rows[0][0] is not None else None

    def get_run_sources(self, run_id: str) -> dict[str, RunSource] | None:
        """The sources the run was accepted with, or None (a run stored before schema v5)."""
        rows = self._query("SELECT sources FROM runs WHERE run_id = ?", (run_id,))
        return _decode_run_sources(rows[0][0]) if rows and rows[0][0] is not None else None

    def get_run_manifest(self, run_id: str) -> dict[str, Any] | None:
        """The manifest saved with the run's final record, or None (none saved: a run that
        never reached the end of execution, or one stored before schema v6)."""
        rows = self._query("SELECT manifest FROM runs WHERE run_id = ?", (run_id,))
        if not rows or rows[0][0] is None:
            return None
        manifest = _decode_any(rows[0][0])
        return manifest if isinstance(manifest, dict) else None

    def page_runs(self, session_id: str, limit: int, before: str | None) -> list[RunRecord] | None:
        """Up to `limit` of the session's runs, newest first, older than run `before` when it
        is given; None when `before` is not a run of this session."""
        if before is None:
            rows = self._query(
                "SELECT record FROM runs WHERE session_id = ? ORDER BY queue_order DESC LIMIT ?",
                (session_id, limit),
            )
            return [_decode_run(row[0]) for row in rows]
        anchor = self._query(
            "SELECT queue_order FROM runs WHERE run_id = ? AND session_id = ?",
            (before, session_id),
        )
        if not anchor:
            return None
        rows = self._query(
            "SELECT record FROM runs WHERE session_id = ? AND queue_order < ? "
            "ORDER BY queue_order DESC LIMIT ?",
            (session_id, anchor[0][0], limit),
        )
        return [_decode_run(row[0]) for row in rows]

    def list_runs(
        self, session_id: str | None = None, statuses: Iterable[str] | None = None
    ) -> list[RunRecord]:
        """Runs in queue (submission) order, optionally of one session and/or some statuses."""
        sql = "SELECT record FROM runs"
        clauses: list[str] = []
        params: list[Any] = []
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        if statuses is not None:
            wanted = [str(s) for s in statuses]
            if not wanted:
                return []
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY queue_order"
        return [_decode_run(row[0]) for row in self._query(sql, params)]

    def run_figures(self) -> list[tuple[str, float | None]]:
        """`(status, elapsed_s)` of every stored run, for `/metrics`.

        Read with `json_extract` rather than by decoding each record: a scrape every few
        seconds must stay cheap as the run history grows.
        """
        rows = self._query("SELECT status, json_extract(record, '$.elapsed_s') FROM runs", [])
        return [
            (str(status), None if elapsed is None else float(elapsed)) for status, elapsed in rows
        ]

    def run_figures_after(
        self, after: int, pending: Iterable[int] = ()
    ) -> list[tuple[int, str, float | None]]:
        """`(queue_order, status, elapsed_s)` of the runs stored after queue position `after`
        and of the runs at the `pending` positions: what `/metrics` reads per scrape to bring
        its in-memory figures up to date (new runs, and runs it last saw unfinished)."""
        rows = self._query(
            "SELECT queue_order, status, json_extract(record, '$.elapsed_s') FROM runs"
            " WHERE queue_order > ? OR queue_order IN (SELECT value FROM json_each(?))",
            (after, msgspec.json.encode(sorted(pending)).decode()),
        )
        return [
            (int(order), str(status), None if elapsed is None else float(elapsed))
            for order, status, elapsed in rows
        ]

    def delete_runs(self, run_ids: Iterable[str]) -> None:
        """Forget these runs (and the Idempotency-Keys naming them), in one commit; for the
        demo, which keeps a bounded history (`service.runtime.demo`)."""
        rows = [(run_id,) for run_id in run_ids]
        with self.transaction() as conn:
            conn.executemany("DELETE FROM idempotency WHERE run_id = ?", rows)
            conn.executemany("DELETE FROM runs WHERE run_id = ?", rows)

    # -- idempotency keys ------------------------------------------------------------------

    def idempotent_run(self, session_id: str, key: str) -> str | None:
        """The run a previous submit with this `Idempotency-Key` created, if any."""
        rows = self._query(
            "SELECT run_id FROM idempotency WHERE session_id = ? AND key = ?", (session_id, key)
        )
        return str(rows[0][0]) if rows else None

    def save_idempotency(self, session_id: str, key: str, run_id: str) -> None:
        """Remember `key -> run_id`; the first run saved for a key wins."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO idempotency (session_id, key, run_id, created_utc)"
                " VALUES (?, ?, ?, ?)",
                (session_id, key, run_id, _utc_now()),
            )

    def prune_idempotency(self, older_than_utc: str) -> int:
        """Drop keys created before `older_than_utc` (RFC 3339); returns how many went."""
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM idempotency WHERE created_utc < ?", (older_than_utc,))
            return cur.rowcount
