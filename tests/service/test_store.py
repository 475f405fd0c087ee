"""SessionStore: what the runtime relies on across restarts, and how a bad file is reported."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.contract.records import (
    PipelineInfo,
    RunError,
    RunRecord,
    RunStatus,
    SessionRecord,
    SessionState,
    SourceRecord,
    StepStateRecord,
)
from service.storage.store import SessionStore, StoreError


def make_session(sid: str = "s1", **kw: object) -> SessionRecord:
    return SessionRecord(
        session_id=sid,
        pipeline=PipelineInfo(name="saxs", version="1.0"),
        created_utc="2026-01-01T00:00:00Z",
        updated_utc="2026-01-01T00:00:00Z",
        **kw,  # type: ignore[arg-type]
    )


def make_run(run_id: str, sid: str = "s1", **kw: object) -> RunRecord:
    return RunRecord(run_id=run_id, session_id=sid, queued_utc="2026-01-01T00:00:00Z", **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore(tmp_path / "runwire.sqlite3") as s:
        yield s


def test_session_with_sources_and_sinks_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    record = make_session(
        name="beamline",
        state=SessionState.ERROR_PARTIAL,
        sources={
            "sample": SourceRecord(type="hdf5", location="/d/s.h5", options={"frame": 3}),
            "dark": SourceRecord(type="npy", location="/d/dark.npy"),
        },
        sinks={"curve": SourceRecord(type="csv", location="/out/c.csv")},
        required_source_refs=["sample"],
    )
    with SessionStore(path) as store:
        store.save_session(record, "name: saxs\nsteps: []\n")
    with SessionStore(path) as store:
        [(loaded, text)] = store.load_sessions()
    assert loaded == record
    assert text == "name: saxs\nsteps: []\n"
    assert list(loaded.sources) == ["sample", "dark"]  # order kept


def test_save_session_replaces_sources(store: SessionStore) -> None:
    store.save_session(make_session(sources={"a": SourceRecord(type="json", location="x")}), "t")
    store.save_session(make_session(sources={"b": SourceRecord(type="json", location="y")}), "t2")
    [(loaded, text)] = store.load_sessions()
    assert list(loaded.sources) == ["b"]
    assert text == "t2"


def test_delete_session_forgets_it_and_its_runs(store: SessionStore) -> None:
    store.save_session(make_session("a"), "t")
    store.save_session(make_session("b"), "t")
    store.save_run(make_run("r1", "a"))
    store.save_run(make_run("r2", "b"))
    store.save_idempotency("a", "k", "r1")
    store.delete_session("a")
    assert [r.session_id for r, _ in store.load_sessions()] == ["b"]
    assert store.get_run("r1") is None
    assert store.idempotent_run("a", "k") is None
    assert [r.run_id for r in store.list_runs()] == ["r2"]


def test_save_run_upserts_and_keeps_queue_order(store: SessionStore) -> None:
    # Ids deliberately not in submission order: queue order is the order of first save.
    for run_id in ("r3", "r1", "r2"):
        store.save_run(make_run(run_id), {"mode": "auto", "id": run_id})
    done = make_run(
        "r3",
        status=RunStatus.FAILED,
        error=RunError(code="STEP_EXCEPTION", message="boom", failed_step="a"),
        step_states={"a": StepStateRecord(status="failed", duration_s=0.5, error="boom")},
    )
    store.save_run(done)  # no request: the first one is kept
    assert [r.run_id for r in store.list_runs()] == ["r3", "r1", "r2"]
    assert store.get_run("r3") == done
    assert store.get_run_request("r3") == {"mode": "auto", "id": "r3"}
    assert store.get_run("nope") is None
    assert store.get_run_request("nope") is None


def test_list_runs_filters(store: SessionStore) -> None:
    store.save_run(make_run("r1", "a", status=RunStatus.RUNNING))
    store.save_run(make_run("r2", "b"))
    store.save_run(make_run("r3", "a"))
    store.save_run(make_run("r4", "a", status=RunStatus.SUCCEEDED))
    assert [r.run_id for r in store.list_runs("a")] == ["r1", "r3", "r4"]
    queued_or_running = [RunStatus.QUEUED, RunStatus.RUNNING]
    assert [r.run_id for r in store.list_runs(statuses=queued_or_running)] == ["r1", "r2", "r3"]
    assert [r.run_id for r in store.list_runs("a", ["queued"])] == ["r3"]
    assert store.list_runs(statuses=[]) == []


def test_idempotency_first_run_wins(store: SessionStore) -> None:
    assert store.idempotent_run("s1", "key-1") is None
    store.save_idempotency("s1", "key-1", "r1")
    store.save_idempotency("s1", "key-1", "r2")
    assert store.idempotent_run("s1", "key-1") == "r1"
    assert store.idempotent_run("s2", "key-1") is None  # keys are per session
    assert store.prune_idempotency("9999-01-01T00:00:00Z") == 1
    assert store.idempotent_run("s1", "key-1") is None


def test_epoch_made_once_and_seq_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    with SessionStore(path) as store:
        epoch = store.epoch
        assert store.seq_floor() == 1
        store.reserve_seq(100_000)
        store.reserve_seq(50)  # a late, lower reservation never lowers the floor
    with SessionStore(path) as store:
        assert store.epoch == epoch
        assert store.seq_floor() == 100_001
    with SessionStore(tmp_path / "other" / "runwire.sqlite3") as other:
        assert other.seq_floor() == 1
        # a new data directory is a new history, even when made in the same second
        assert other.epoch != epoch


def test_transaction_groups_saves_and_rolls_back_on_error(store: SessionStore) -> None:
    with store.transaction():
        store.save_run(make_run("r1"))
        store.save_session(make_session(), "t")
    assert store.get_run("r1") is not None
    with pytest.raises(RuntimeError), store.transaction():
        store.save_run(make_run("r2"))
        store.save_idempotency("s1", "k", "r2")
        raise RuntimeError("runtime changed its mind")
    assert store.get_run("r2") is None
    assert store.idempotent_run("s1", "k") is None


def test_saves_from_many_threads_all_land(store: SessionStore) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                store.save_run(make_run(f"t{n}-{i}"))
                store.reserve_seq(n * 1000 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(store.list_runs()) == 100
    assert store.seq_floor() == 3 * 1000 + 24 + 1


def test_store_file_is_wal_with_full_sync_and_passes_integrity_check(
    store: SessionStore, tmp_path: Path
) -> None:
    store.save_session(make_session(), "t")
    conn = sqlite3.connect(tmp_path / "runwire.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert store.writable()


def _synchronous(store: SessionStore) -> int:
    with store.transaction(writing=False) as conn:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def test_an_unsynced_commit_survives_a_crash_and_the_next_commits_are_synced_again(
    tmp_path: Path,
) -> None:
    # A child process commits without syncing, syncs, then commits once more unsynced and dies
    # without closing anything: both commits are in the WAL the OS holds.
    script = (
        "import os, sys\n"
        "from service.storage.store import SessionStore\n"
        "from service.contract.records import PipelineInfo, RunRecord, SessionRecord\n"
        "t = '2026-01-01T00:00:00Z'\n"
        "store = SessionStore(sys.argv[1])\n"
        "store.save_session(SessionRecord(session_id='s1', created_utc=t, updated_utc=t,\n"
        "                                 pipeline=PipelineInfo(name='saxs', version='1')), 't')\n"
        "for n, sync in ((1, True), (2, False)):\n"
        "    with store.transaction(synced=False):\n"
        "        store.save_run(RunRecord(run_id=f'r{n}', session_id='s1', queued_utc=t))\n"
        "    if sync:\n"
        "        store.sync()\n"
        "os._exit(0)\n"
    )
    path = tmp_path / "runwire.sqlite3"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    with SessionStore(path) as store:
        assert [r.run_id for r in store.list_runs()] == ["r1", "r2"]
        # An unsynced transaction does not leave the connection unsynced for the next ones.
        with store.transaction(synced=False):
            store.save_run(make_run("r3"))
        assert _synchronous(store) == 2  # FULL
        store.save_run(make_run("r4"))
        assert _synchronous(store) == 2
        store.sync()


def test_a_wal_that_cannot_be_synced_is_a_store_error(store: SessionStore) -> None:
    with store.transaction(synced=False):
        store.save_run(make_run("r1"))
    os.unlink(f"{store.path}-wal")  # what an administrator's mistake or a failing disk does
    with pytest.raises(StoreError, match="cannot sync the WAL"):
        store.sync()


def test_garbage_file_is_reported_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        SessionStore(path)
    assert info.value.path == path
    assert "not a database" in info.value.reason
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage


def test_directory_in_place_of_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    path.mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        SessionStore(path)
    assert path.is_dir()


def test_unopenable_wal_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    SessionStore(path).close()
    (tmp_path / "runwire.sqlite3-wal").mkdir()  # SQLite cannot open its write-ahead log
    with pytest.raises(StoreError):
        SessionStore(path)


def test_read_only_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    with SessionStore(path) as store:
        store.save_session(make_session(), "t")
    if os.geteuid() != 0:
        path.chmod(0o444)
        undo = None
    else:  # root ignores permission bits; an immutable file is read-only even for root
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip("cannot make a read-only file as root here")
        undo = ["chattr", "-i", str(path)]
    try:
        with pytest.raises(StoreError) as info:
            SessionStore(path)
        assert "readonly" in info.value.reason.replace("-", "").replace(" ", "")
    finally:
        if undo:
            subprocess.run(undo, check=True)


def test_calls_after_close_raise_store_error(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "runwire.sqlite3")
    store.close()
    with pytest.raises(StoreError):
        store.list_runs()
    with pytest.raises(StoreError):
        store.save_run(make_run("r1"))
    assert not store.writable()


def test_damaged_pages_inside_a_database_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "runwire.sqlite3"
    with SessionStore(path) as store:
        for i in range(200):
            store.save_run(make_run(f"r{i}"))
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        SessionStore(path)
    assert "corrupt" in info.value.reason or "malformed" in info.value.reason


def test_run_figures_give_status_and_elapsed_of_every_run(store: SessionStore) -> None:
    done = make_run("r1")
    done.status = RunStatus.SUCCEEDED
    done.elapsed_s = 1.5
    store.save_run(done)
    store.save_run(make_run("r2"))  # queued: no elapsed time yet
    assert sorted(store.run_figures(), key=str) == sorted(
        [("succeeded", 1.5), ("queued", None)], key=str
    )
