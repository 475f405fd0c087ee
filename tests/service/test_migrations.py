"""Forward migrations: a store left at EVERY earlier schema version opens with today's code and
keeps its sessions, sources, sinks, runs (in queue order) and seq reservation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from service.contract.records import RunStatus
from service.storage.migrations import CURRENT_VERSION, MIGRATIONS, migrate, schema_version
from service.storage.store import SessionStore, StoreError

SESSION = {
    "session_id": "old",
    "name": "from an older runwire",
    "state": "idle",
    "pipeline": {"name": "saxs", "version": "1.0"},
    "sources": {"sample": {"type": "hdf5", "location": "/data/s1.h5", "options": {"f": 1}}},
    "sinks": {"curve": {"type": "csv", "location": "/out/c.csv", "options": {}}},
    "created_utc": "2025-01-01T00:00:00Z",
    "updated_utc": "2025-01-01T00:00:00Z",
}


def run_json(run_id: str, queued_utc: str, status: str) -> str:
    return json.dumps(
        {"run_id": run_id, "session_id": "old", "queued_utc": queued_utc, "status": status}
    )


def build_store_at(path: Path, version: int) -> None:
    """A store as runwire at `version` left it, with data written the way that version did."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, target=version)
        if version == 0:
            return
        conn.execute("INSERT INTO meta VALUES ('epoch', '1700000000')")
        conn.execute("INSERT INTO meta VALUES ('seq_reserved', '4200')")
        conn.execute(
            "INSERT INTO sessions (session_id, record, pipeline_text) VALUES (?, ?, ?)",
            ("old", json.dumps(SESSION), "name: saxs\n"),
        )
        if version >= 2:
            for table in ("sources", "sinks"):
                for ref, spec in SESSION[table].items():  # type: ignore[attr-defined]
                    conn.execute(
                        f"INSERT INTO {table} VALUES ('old', ?, ?, ?, ?)",
                        (ref, spec["type"], spec["location"], json.dumps(spec["options"])),
                    )
        # Inserted out of submission order; submission order is what must come back.
        runs = [
            ("r-b", "2025-01-01T00:00:02Z", "queued"),
            ("r-a", "2025-01-01T00:00:01Z", "running"),
            ("r-c", "2025-01-01T00:00:03Z", "succeeded"),
        ]
        for run_id, queued, status in runs:
            if version >= 3:
                # Since v3 the queue position is the insertion order, so insert by time.
                continue
            conn.execute(
                "INSERT INTO runs (run_id, session_id, status, record) VALUES (?, 'old', ?, ?)",
                (run_id, status, run_json(run_id, queued, status)),
            )
        if version >= 3:
            for run_id, queued, status in sorted(runs, key=lambda r: r[1]):
                conn.execute(
                    "INSERT INTO runs (run_id, session_id, status, queued_utc, record)"
                    " VALUES (?, 'old', ?, ?, ?)",
                    (run_id, status, queued, run_json(run_id, queued, status)),
                )
        if version >= 4:
            conn.execute(
                "INSERT INTO idempotency VALUES ('old', 'k1', 'r-a', '2025-01-01T00:00:01Z')"
            )
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(CURRENT_VERSION))
def test_every_earlier_version_migrates_to_current(tmp_path: Path, version: int) -> None:
    path = tmp_path / "runwire.sqlite3"
    build_store_at(path, version)
    with SessionStore(path) as store:
        sessions = store.load_sessions()
        if version == 0:  # an empty file made by a crash before the first migration
            assert sessions == []
            assert store.seq_floor() == 1
            return
        [(record, text)] = sessions
        assert text == "name: saxs\n"
        assert record.name == "from an older runwire"
        assert record.sources["sample"].location == "/data/s1.h5"
        assert record.sources["sample"].options == {"f": 1}
        assert record.sinks["curve"].type == "csv"
        assert store.epoch == "1700000000"
        assert store.seq_floor() == 4201
        assert [r.run_id for r in store.list_runs()] == ["r-a", "r-b", "r-c"]
        assert [r.run_id for r in store.list_runs(statuses=[RunStatus.RUNNING])] == ["r-a"]
        if version < 5:
            # v5: a run still waiting keeps the sources it would have read at start (the
            # session's), without file identities; a finished run has none recorded.
            waiting = store.get_run_sources("r-b")
            assert waiting is not None
            assert waiting["sample"].location == "/data/s1.h5"
            assert waiting["sample"].options == {"f": 1}
            assert waiting["sample"].identity is None
            assert store.get_run_sources("r-c") is None
        # v6: runs stored before it have no saved manifest (recovery leaves their files alone)
        assert store.get_run_manifest("r-c") is None
        # The migrated store works for new writes too.
        store.save_idempotency("old", "k2", "r-c")
        assert store.idempotent_run("old", "k2") == "r-c"
    conn = sqlite3.connect(path)
    try:
        assert schema_version(conn) == CURRENT_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    build_store_at(path, CURRENT_VERSION)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn) == CURRENT_VERSION
        assert schema_version(conn) == CURRENT_VERSION
    finally:
        conn.close()


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    build_store_at(path, 2)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A v2 row that v3 cannot carry (NULL record violates runs_v3.record NOT NULL) makes
        # the v3 step fail half-way (CREATE TABLE AS drops NOT NULL, so the old table takes it): the file must stay a complete v2 store.
        conn.execute("CREATE TABLE runs_tmp AS SELECT * FROM runs")
        conn.execute("DROP TABLE runs")
        conn.execute("ALTER TABLE runs_tmp RENAME TO runs")
        conn.execute(
            "INSERT INTO runs (run_id, session_id, status, record) VALUES ('x','old','queued',NULL)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            migrate(conn)
        assert schema_version(conn) == 2
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
    finally:
        conn.close()


def test_store_from_a_newer_runwire_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    build_store_at(path, CURRENT_VERSION)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this runwire supports"):
        SessionStore(path)


def test_unknown_target_version_is_rejected(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    try:
        with pytest.raises(ValueError):
            migrate(conn, target=len(MIGRATIONS) + 1)
    finally:
        conn.close()
