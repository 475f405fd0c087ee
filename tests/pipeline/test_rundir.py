"""Run directories: ids, request/summary/manifest files, event log, torn lines, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path

import pytest

from pipeline.atomic import write_bytes_atomic, write_json_atomic
from pipeline.rundir import RunDirectory, media_type, new_run_id, read_ndjson


def test_run_ids_are_unique_and_sortable_by_time() -> None:
    ids = [new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(i.startswith("r-") and len(i) == len("r-20261123T040512-3fa9c2d1") for i in ids)
    assert sorted(ids, key=lambda i: i[:17]) == ids  # the time prefix never goes backwards


def test_run_directory_layout(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "runs" / "s1" / "r-1").create()
    assert run.artifacts_dir.is_dir() and run.run_id == "r-1"
    run.write_request({"mode": "full"})
    (run.artifacts_dir / "reduced.h5").write_bytes(b"\x89HDF data")
    (run.artifacts_dir / "plots").mkdir()
    (run.artifacts_dir / "plots" / "curve.csv").write_text("q,I\n1,2\n")
    (run.artifacts_dir / ".reduced.h5.tmp").write_bytes(b"partial")
    manifest = run.write_manifest()
    assert manifest == json.loads(run.manifest_path.read_text())
    assert manifest["run_id"] == "r-1"
    assert manifest["artifacts"] == [
        {
            "path": "plots/curve.csv",
            "size": 8,
            "sha256": hashlib.sha256(b"q,I\n1,2\n").hexdigest(),
            "media_type": "text/csv",
        },
        {
            "path": "reduced.h5",
            "size": 9,
            "sha256": hashlib.sha256(b"\x89HDF data").hexdigest(),
            "media_type": "application/x-hdf5",
        },
    ]
    run.write_summary({"status": "succeeded"})
    assert json.loads(run.summary_path.read_text()) == {"status": "succeeded"}
    assert json.loads(run.request_path.read_text()) == {"mode": "full"}
    assert sorted(p.name for p in run.path.iterdir()) == [
        "artifacts", "manifest.json", "run-request.json", "summary.json",
    ]  # fmt: skip


def test_events_are_appended_one_per_line_from_many_threads(tmp_path: Path) -> None:
    with RunDirectory(tmp_path / "r").create() as run:

        def append(t: int) -> None:
            for i in range(100):
                run.append_event(json.dumps({"t": t, "i": i}).encode())

        threads = [threading.Thread(target=append, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # visible to a reader at once (flushed), before the file is closed
        assert len(read_ndjson(run.events_path)) == 400
    lines = [json.loads(line) for line in read_ndjson(run.events_path)]
    assert sorted((e["t"], e["i"]) for e in lines) == [(t, i) for t in range(4) for i in range(100)]
    for t in range(4):  # per writer, order is kept
        assert [e["i"] for e in lines if e["t"] == t] == list(range(100))


def test_read_ndjson_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"seq":1}\n{"seq":2}\n\n{"seq":3')
    assert read_ndjson(path) == [b'{"seq":1}', b'{"seq":2}']
    assert read_ndjson(tmp_path / "missing.ndjson") == []


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1})
    with contextlib.suppress(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_media_types() -> None:
    assert media_type("x.h5") == "application/x-hdf5"
    assert media_type("x.csv") == "text/csv"
    assert media_type("x.unknownext") == "application/octet-stream"


def test_atomic_write_that_cannot_rename_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"] and target.is_dir()


def test_atomic_writes_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    # Summaries and artifacts are read by colleagues' accounts: a file that only its writer can
    # read would silently hide results from the rest of the beamline group.
    import os
    import stat

    from pipeline.atomic import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "summary.json", {"status": "succeeded"})
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "summary.json").stat().st_mode)
    assert mode == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_appending_after_a_torn_line_drops_the_fragment_instead_of_gluing_onto_it(
    tmp_path: Path,
) -> None:
    # A crash mid-append leaves a line without its newline; the next start appends to the same
    # journal (a terminal event for the run, say). Glued onto the fragment, that event would be
    # unreadable and lost.
    from pipeline.rundir import RunDirectory, open_for_append, read_ndjson

    run_dir = RunDirectory(tmp_path / "r-1")
    run_dir.create()
    run_dir.events_path.write_bytes(b'{"seq":1}\n{"seq":2,"da')
    run_dir.append_event(b'{"seq":3}')
    run_dir.close()
    assert read_ndjson(run_dir.events_path) == [b'{"seq":1}', b'{"seq":3}']

    only_torn = tmp_path / "session-events.ndjson"
    only_torn.write_bytes(b'{"seq":4,"torn')
    with open_for_append(only_torn) as handle:
        handle.write(b'{"seq":5}\n')
    assert read_ndjson(only_torn) == [b'{"seq":5}']
