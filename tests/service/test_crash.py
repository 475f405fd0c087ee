"""Crash tests: SIGKILL a real `runwire serve` at seeded random moments of its runs, restart it
on the same data directory, and check that nothing acknowledged or seen was lost.

Each cycle: start the server; follow `/v1/events?since=0` over SSE (so the replay of everything
seen before is checked at once: same ids, same bytes); submit runs (diagnostic steps, and the
saxs example on small frames for HDF5 artifacts); kill when the follower has seen a random
number of new events; check the SQLite file with `PRAGMA integrity_check`. After every restart:
runs that were running at the kill are `interrupted` (none left `running`), every run answered
with 202 exists, no seq is reused, the retained-run listing equals the run directories, and
every artifact listed in a manifest is readable with h5py and matches its sha256.

The figures (kills, checks) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import httpx
import pytest
from sstore_server import (
    DIAG_PIPELINE,
    ServeProcess,
    SseFollower,
    all_retained,
    data_json,
    run_dirs_on_disk,
    seq_of,
)

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text
from service.storage.store import SessionStore
from streaming.envelope import TERMINAL_RUN_TYPES

pytestmark = pytest.mark.slow

FINAL = {"succeeded", "failed", "cancelled", "interrupted"}


def integrity(db: Path) -> tuple[str, dict[str, str]]:
    """`PRAGMA integrity_check` of the store as the crash left it, and each run's status."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        result = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        statuses = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
    finally:
        conn.close()
    return result, statuses


def check_artifacts(client: httpx.Client, runs: list[dict[str, Any]], seen: set[str]) -> int:
    """Every artifact of every finished run's manifest downloads, matches, and opens."""
    checked = 0
    for run in runs:
        if run["run_id"] in seen or run["status"] not in FINAL:
            continue
        manifest = client.get(f"/retained-runs/{run['run_id']}/artifact-manifest").json()
        for item in manifest["artifacts"] or []:
            body = client.get(f"/retained-runs/{run['run_id']}/artifacts/{item['path']}")
            assert body.status_code == 200, item
            assert hashlib.sha256(body.content).hexdigest() == item["sha256"]
            if item["path"].endswith(".h5"):
                with h5py.File(io.BytesIO(body.content), "r") as f:
                    assert f["/sasentry01/sasdata01/I"].shape[0] > 0
            checked += 1
        seen.add(run["run_id"])
    return checked


def submit_all(server: ServeProcess, sessions: list[str], accepted: set[str]) -> None:
    """Submit one full run per session name; record the ids answered with 202."""
    try:
        with server.client() as c:
            for sid in sessions:
                submit = c.post(f"/sessions/{sid}/process", json={"mode": "full"})
                if submit.status_code == 202:
                    accepted.add(submit.json()["run_id"])
    except httpx.HTTPError:  # the server was killed mid-request
        pass


def interrupted_event(run_id: str) -> Callable[[list[tuple[str, str, str]]], bool]:
    """A follower predicate: the `run.interrupted` event of `run_id` has arrived."""

    def seen(events: list[tuple[str, str, str]]) -> bool:
        return any(
            e[1] == "run.interrupted" and data_json(e).get("runid") == run_id for e in events
        )

    return seen


def terminal_events(data_dir: Path, session_id: str, run_id: str) -> list[str]:
    log = data_dir / "runs" / session_id / run_id / "events.ndjson"
    types = [json.loads(line)["type"] for line in log.read_text().splitlines() if line.strip()]
    return [t for t in types if t in TERMINAL_RUN_TYPES]


@pytest.mark.parametrize("seed", [11, 29])
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    cycles = 11
    data_dir = tmp_path / "data"
    frames = write_demo_data(tmp_path / "frames", count=1, shape=(32, 32), seed=seed)
    sample = next(p for p in frames if p.name.startswith("sample_"))
    server = ServeProcess(data_dir, shutdown_grace=2.0)

    received: dict[str, str] = {}  # event id -> data line, everything seen before any kill
    seq_owner: dict[int, str] = {}  # seq -> data line, over the whole test
    accepted: set[str] = set()  # run ids answered with 202
    artifacts_seen: set[str] = set()
    kills = artifacts_checked = interrupted_checked = 0
    running_at_kill: set[str] = set()
    submitter: threading.Thread | None = None

    for cycle in range(cycles):
        restart_utc = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        server.start()
        follower = SseFollower(server.url).start()
        try:
            with server.client() as c:
                if cycle == 0:
                    for sid, text in (("diag", DIAG_PIPELINE), ("saxs", example_text("saxs"))):
                        body = {"session_id": sid, "pipeline": {"yaml_text": text}}
                        c.post("/sessions", json=body).raise_for_status()
                    source = {
                        "sources": [{"ref": "sample", "type": "hdf5", "location": str(sample)}]
                    }
                    c.put("/sessions/saxs/sources", json=source).raise_for_status()

                # 1. Replay after the restart: every event seen before, same id and bytes.
                max_before = max(seq_owner, default=0)
                assert follower.wait_for(
                    lambda evs: received.keys() <= {e[0] for e in evs}, timeout=30
                ), f"cycle {cycle}: not everything seen before the kill was replayed"
                for event_id, _, data in follower.snapshot():
                    if event_id in received:
                        assert received[event_id] == data, event_id
                    seq = seq_of(event_id)
                    assert seq_owner.setdefault(seq, data) == data, f"seq {seq} reused"
                    event = data_json((event_id, "", data))
                    if event_id not in received and event["time"] >= restart_utc:
                        assert seq > max_before, f"seq {seq} not above {max_before}"

                # 2. Recovery: runs running at the kill are interrupted; acknowledged runs exist.
                for run_id in running_at_kill:
                    assert c.get(f"/runs/{run_id}").json()["status"] != "running"
                    summary = c.get(f"/retained-runs/{run_id}").json()
                    assert summary["status"] == "interrupted", summary
                    assert follower.wait_for(interrupted_event(run_id), timeout=30), run_id
                    interrupted_checked += 1
                for run_id in accepted:
                    assert c.get(f"/runs/{run_id}").status_code == 200, run_id

                # 3. The retained index equals the run directories; artifacts readable.
                retained = all_retained(c)
                assert {r["run_id"] for r in retained} == run_dirs_on_disk(data_dir)
                artifacts_checked += check_artifacts(c, retained, artifacts_seen)

                # 4. New work, then a kill at a random moment of it. Submits run in a thread,
                # so a kill may also land between a submit and its answer: only runs answered
                # with 202 must exist afterwards.
                n_seen = len(follower.snapshot())
                sessions = [
                    "saxs" if rng.random() < 0.4 else "diag" for _ in range(rng.randint(1, 3))
                ]
                submitter = threading.Thread(
                    target=submit_all, args=(server, sessions, accepted), daemon=True
                )
                submitter.start()
                target = n_seen + rng.randint(1, 60)
                follower.wait_for(lambda evs: len(evs) >= target, timeout=4)  # noqa: B023
        finally:
            server.kill()
            kills += 1
            follower.close()
            if submitter is not None:
                submitter.join(timeout=30)
                submitter = None
        for event_id, _, data in follower.snapshot():
            received[event_id] = data
            seq_owner.setdefault(seq_of(event_id), data)
        result, statuses = integrity(data_dir / "runwire.sqlite3")
        assert result == "ok", f"cycle {cycle}: {result}"
        running_at_kill = {r for r, s in statuses.items() if s in ("running", "cancelling")}

    # Final start: recovery once more, then let the queue drain and check every run is final.
    server.start()
    try:
        with server.client() as c:
            for run_id in running_at_kill:
                assert c.get(f"/retained-runs/{run_id}").json()["status"] == "interrupted"
                interrupted_checked += 1
            follower = SseFollower(server.url).start()
            try:

                def idle(_: object) -> bool:
                    runs = c.get("/sessions/diag/runs").json()["runs"]
                    runs += c.get("/sessions/saxs/runs").json()["runs"]
                    return all(r["status"] in FINAL for r in runs)

                # Re-evaluated whenever an event arrives: runs end with a terminal event.
                assert follower.wait_for(idle, timeout=120, recheck=1.0), (
                    "queued runs never finished"
                )
            finally:
                follower.close()
            retained = all_retained(c)
            assert {r["run_id"] for r in retained} == run_dirs_on_disk(data_dir)
            assert accepted <= {r["run_id"] for r in retained}
            known = [r for r in retained if c.get(f"/runs/{r['run_id']}").status_code == 200]
            assert [r["run_id"] for r in known if r["status"] not in FINAL] == []
            for run in known:  # every run ends with exactly one terminal event
                ends = terminal_events(data_dir, run["session_id"], run["run_id"])
                assert len(ends) == 1, (run["run_id"], run["status"], ends)
            artifacts_checked += check_artifacts(c, retained, artifacts_seen)
            # A submit cut short by a kill between writing its run directory and committing
            # its run (never answered 202) leaves a directory the store does not know; recovery
            # must give it a final summary, or the retained listing shows it queued forever.
            orphans = sorted(
                (r["run_id"], r["status"])
                for r in retained
                if r not in known and r["status"] not in FINAL
            )
            assert orphans == [], "run directories of unknown runs left without a final summary"
    finally:
        assert server.terminate() == 0
    result, statuses = integrity(data_dir / "runwire.sqlite3")
    assert result == "ok"
    assert all(s in FINAL for s in statuses.values())
    print(
        f"\ncrash seed={seed}: kills={kills} events_seen={len(received)} runs={len(accepted)}"
        f" interrupted_checked={interrupted_checked} artifacts_checked={artifacts_checked}"
        " failures=0"
    )


WRITER = """
import sys
from service.contract.records import RunRecord
from service.storage.store import SessionStore

store = SessionStore(sys.argv[1])
start = store.seq_floor()
i = 0
while True:
    i += 1
    run_id = f"{sys.argv[2]}-{i}"
    with store.transaction():
        store.save_run(RunRecord(run_id=run_id, session_id="s", queued_utc="t"), {"n": i})
        store.save_idempotency("s", run_id, run_id)
    store.reserve_seq(start + i * 1000)
    print(run_id, start + i * 1000, flush=True)  # acknowledged: committed before this line
"""


@pytest.mark.parametrize("seed", [5])
def test_store_keeps_every_acknowledged_commit_across_sigkill(tmp_path: Path, seed: int) -> None:
    """A writer process commits runs and seq reservations and acknowledges each on stdout;
    SIGKILL it after a random number of acknowledgements, ten times over the same file."""
    rng = random.Random(seed)
    path = tmp_path / "runwire.sqlite3"
    acknowledged: list[str] = []
    highest_reserved = 0
    kills = 0
    for cycle in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"c{cycle}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 200)):
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            run_id, reserved = line.split()
            acknowledged.append(run_id)
            highest_reserved = int(reserved)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        kills += 1
        result, statuses = integrity(path)
        assert result == "ok"
        assert set(acknowledged) <= statuses.keys()
        with SessionStore(path) as store:
            assert store.seq_floor() > highest_reserved
            assert [store.idempotent_run("s", r) for r in acknowledged[-3:]] == acknowledged[-3:]
            queue = [r.run_id for r in store.list_runs()]
            assert [r for r in queue if r in set(acknowledged)] == acknowledged  # queue order
    print(f"\nstore crash seed={seed}: kills={kills} commits_acknowledged={len(acknowledged)}")
