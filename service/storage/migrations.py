"""Schema versions of `runwire.sqlite3` as a list of forward migrations.

The schema version lives in `PRAGMA user_version`: version N means the first N entries of
`MIGRATIONS` have been applied. Opening a store applies the missing ones in order, each in its
own transaction together with the `user_version` bump, so a crash mid-migration leaves the file
at the previous version and the next start simply tries again. Migrations only ever go forward;
a store written by a newer runwire (a version above `CURRENT_VERSION`) is refused rather than
guessed at.

Rules for adding a version: append a function, never edit a released one; it must carry data
forward (tests build a store at every earlier version, fill it, and open it with the current
code — `tests/service/test_migrations.py`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]


def _v1_initial(conn: sqlite3.Connection) -> None:
    """Meta values, sessions with their record and pipeline text, runs keyed by id."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE sessions ("
        " session_id TEXT PRIMARY KEY,"
        " record TEXT NOT NULL,"  # SessionRecord as JSON
        " pipeline_text TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE runs ("
        " run_id TEXT PRIMARY KEY,"
        " session_id TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " record TEXT NOT NULL,"  # RunRecord as JSON
        " request TEXT)"  # the submitted request as JSON
    )


def _create_ref_table(conn: sqlite3.Connection, table: str) -> None:
    conn.execute(
        f"CREATE TABLE {table} ("
        " session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,"
        " ref TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " location TEXT NOT NULL,"
        " options TEXT NOT NULL DEFAULT '{}',"
        " PRIMARY KEY (session_id, ref))"
    )


def _v2_sources_and_sinks(conn: sqlite3.Connection) -> None:
    """Sources and sinks as one row per ref (so they can be queried and updated one at a time),
    filled from the session records that used to be their only home."""
    _create_ref_table(conn, "sources")
    _create_ref_table(conn, "sinks")
    rows = conn.execute("SELECT session_id, record FROM sessions").fetchall()
    for session_id, record_text in rows:
        record = json.loads(record_text)
        for table in ("sources", "sinks"):
            for ref, spec in (record.get(table) or {}).items():
                conn.execute(
                    f"INSERT INTO {table} (session_id, ref, type, location, options)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        session_id,
                        ref,
                        spec["type"],
                        spec["location"],
                        json.dumps(spec.get("options") or {}),
                    ),
                )


def _v3_run_queue_order(conn: sqlite3.Connection) -> None:
    """Runs get an explicit queue position (an autoincrement key), so that queued runs come back
    after a restart in the order they were submitted even when clocks or ids do not sort."""
    conn.execute(
        "CREATE TABLE runs_v3 ("
        " queue_order INTEGER PRIMARY KEY AUTOINCREMENT,"
        " run_id TEXT NOT NULL UNIQUE,"
        " session_id TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " queued_utc TEXT NOT NULL DEFAULT '',"
        " record TEXT NOT NULL,"
        " request TEXT)"
    )
    # Old rows: submission order is best recovered from queued_utc, ties broken by insertion.
    conn.execute(
        "INSERT INTO runs_v3 (run_id, session_id, status, queued_utc, record, request)"
        " SELECT run_id, session_id, status,"
        "  COALESCE(json_extract(record, '$.queued_utc'), ''), record, request"
        " FROM runs ORDER BY COALESCE(json_extract(record, '$.queued_utc'), ''), rowid"
    )
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v3 RENAME TO runs")
    conn.execute("CREATE INDEX runs_by_session ON runs (session_id, queue_order)")
    conn.execute("CREATE INDEX runs_by_status ON runs (status, queue_order)")


def _v4_idempotency_keys(conn: sqlite3.Connection) -> None:
    """`Idempotency-Key` header values: a repeated submit returns the first run."""
    conn.execute(
        "CREATE TABLE idempotency ("
        " session_id TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " run_id TEXT NOT NULL,"
        " created_utc TEXT NOT NULL,"
        " PRIMARY KEY (session_id, key))"
    )


def _v5_run_sources(conn: sqlite3.Connection) -> None:
    """Runs keep the sources they were accepted with (`sources`: ref -> {type, location,
    options, identity}), so a queued run reduces its own sample and not the session's newest.

    Runs still waiting were queued by a runwire that would have read the session's sources at
    start: they get those (without file identities), which is what they would have run with.
    """
    conn.execute("ALTER TABLE runs ADD COLUMN sources TEXT")
    conn.execute(
        "UPDATE runs SET sources = (SELECT json_group_object(s.ref, json_object("
        " 'type', s.type, 'location', s.location, 'options', json(s.options)))"
        " FROM sources AS s WHERE s.session_id = runs.session_id)"
        " WHERE status IN ('queued', 'running', 'cancelling')"
    )


def _v6_run_manifests(conn: sqlite3.Connection) -> None:
    """Finished runs keep their artifact manifest (`manifest`: the JSON of `manifest.json`).

    `manifest.json` and `summary.json` are written without an fsync of their own; the store's
    commit that follows is the durable copy, and restart recovery rewrites either file from it
    if a power loss took it (`service.runtime.recovery`). Older runs have none (NULL): their
    files were fsynced when written.
    """
    conn.execute("ALTER TABLE runs ADD COLUMN manifest TEXT")


MIGRATIONS: list[Migration] = [
    _v1_initial,
    _v2_sources_and_sinks,
    _v3_run_queue_order,
    _v4_idempotency_keys,
    _v5_run_sources,
    _v6_run_manifests,
]
CURRENT_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The file was written by a newer runwire; its layout is unknown to this one."""


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection, target: int = CURRENT_VERSION) -> int:
    """Apply the missing migrations up to `target`; returns the version the store had before.

    `conn` must be in autocommit mode (`isolation_level=None`): each step runs in its own
    `BEGIN IMMEDIATE ... COMMIT`, with the `user_version` bump inside it (SQLite makes the
    pragma transactional), so a crash leaves a whole version or none. Raises `SchemaTooNew`
    for a store above `CURRENT_VERSION` and `sqlite3.Error` for an unusable file.
    """
    if not 0 <= target <= CURRENT_VERSION:
        raise ValueError(f"no schema version {target}")
    before = schema_version(conn)
    if before > CURRENT_VERSION:
        raise SchemaTooNew(
            f"schema version {before} is newer than this runwire supports ({CURRENT_VERSION})"
        )
    for version in range(before + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if schema_version(conn) >= version:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return before
