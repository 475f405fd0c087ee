"""Runs on `runwire worker` processes (issue 13, contract section 12), all real processes:
one `runwire serve --broker redis://... --runs workers`, two workers, one `redis-server`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer
from workers_cluster import (
    LEASE_TTL,
    ServeProcess,
    SseFollower,
    WorkerProcess,
    api_node,
    poll,
    terminal_events,
    wait_final,
)

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

pytestmark = pytest.mark.slow

FAST = """\
name: fast
steps:
  - id: burst
    use: diag.emit
    params: {count: 3, payload_bytes: 16}
"""

SLOW = """\
name: slow
steps:
  - id: first
    use: diag.emit
    params: {count: 2, payload_bytes: 16}
  - id: wait
    use: diag.sleep
    params: {seconds: 120, ticks: 480}
"""

SHORT = """\
name: short
steps:
  - id: wait
    use: diag.sleep
    params: {seconds: 0.3, ticks: 3}
"""


def create(client: httpx.Client, sid: str, yaml_text: str, **extra: Any) -> None:
    body = {"session_id": sid, "pipeline": {"yaml_text": yaml_text}, **extra}
    client.post("/sessions", json=body).raise_for_status()


def process(client: httpx.Client, sid: str) -> str:
    answer = client.post(f"/sessions/{sid}/process", json={})
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["run_id"]
    return run_id


def workers_alive(client: httpx.Client) -> set[str]:
    body = client.get("/workers").raise_for_status().json()
    return {w["name"] for w in body["workers"] if w["alive"]}


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    api = api_node(data, redis_server.url)
    api.start()
    started: list[WorkerProcess] = []

    def worker(name: str) -> WorkerProcess:
        w = WorkerProcess(data, redis_server.url, name).start()
        started.append(w)
        return w

    try:
        with api.client() as client:
            yield {"api": api, "client": client, "worker": worker, "redis": redis_server,
                   "data": data}  # fmt: skip
    finally:
        for w in started:
            w.kill()
        api.terminate()


def test_four_sessions_spread_over_two_workers_and_partial_reruns_stay_put(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    client: httpx.Client = cluster["client"]
    cluster["worker"]("w1")
    cluster["worker"]("w2")
    poll(lambda: workers_alive(client) == {"w1", "w2"}, 30, "both workers listed alive")
    files = write_demo_data(tmp_path / "frames", count=2, shape=(96, 96), seed=5)
    sample1, sample2, background, dark = files
    sessions = [f"s{i}" for i in range(4)]
    for sid in sessions:
        create(client, sid, example_text("saxs"), source_profile="saxs")
        sources = [{"ref": "background", "type": "hdf5", "location": str(background)},
                   {"ref": "dark", "type": "hdf5", "location": str(dark)}]  # fmt: skip
        client.put(f"/sessions/{sid}/sources", json={"sources": sources}).raise_for_status()

    def submit_all(sample: Path) -> dict[str, dict[str, Any]]:
        ids = {}
        for sid in sessions:
            body = {"location": str(sample), "process": True}
            answer = client.post(f"/sessions/{sid}/sample", json=body)
            assert answer.status_code == 202, answer.text
            ids[sid] = answer.json()["run_id"]
        return {sid: wait_final(client, run_id) for sid, run_id in ids.items()}

    first = submit_all(sample1)
    assert all(r["status"] == "succeeded" and r["effective_mode"] == "full" for r in first.values())
    # Four sessions, one run each at a time on two single-thread workers: both got work.
    assert {r["worker"] for r in first.values()} == {"w1", "w2"}

    second = submit_all(sample2)
    for sid in sessions:
        run = second[sid]
        assert run["status"] == "succeeded", run["error"]
        # The worker holding the session's cache ran it, so only the sample's steps reran.
        assert run["effective_mode"] == "partial", run
        assert run["worker"] == first[sid]["worker"]
        assert "geometry" in run["skipped_steps"]
        assert (
            cluster["data"] / "runs" / sid / run["run_id"] / "artifacts" / "reduced.h5"
        ).exists()

    # The figures are refreshed every couple of seconds, not per scrape.
    listed = poll(lambda: (b := client.get("/workers").json())
                  and sum(w.get("leases", 0) for w in b["workers"]) == 4 and b, 30, "4 leases")  # fmt: skip
    assert listed["runs"] == "workers" and listed["broker_available"] is True
    metrics = client.get("/metrics").text
    assert "runwire_workers_alive 2.0" in metrics
    for name in ("w1", "w2"):
        assert f'runwire_worker_leases{{worker="{name}"}}' in metrics
    assert "runwire_remote_queue_depth 0.0" in metrics
    assert "runwire_remote_reports_lag 0.0" in metrics


def test_worker_killed_mid_run(cluster: dict[str, Any]) -> None:
    client: httpx.Client = cluster["client"]
    api: ServeProcess = cluster["api"]
    doomed = cluster["worker"]("doomed")
    create(client, "held", FAST)
    create(client, "slow", SLOW)
    # A viewer on a stream node as well as one on the API node: both must see it all, once.
    stream = ServeProcess(cluster["data"], extra_args=("--role", "stream", "--broker",
                                                       cluster["redis"].url, "--api-url", api.url))  # fmt: skip
    stream.start()
    follower = SseFollower(api.url).start()
    viewer = SseFollower(stream.url).start()
    try:
        # With one worker alive, both sessions' leases are its own.
        first_held = wait_final(client, process(client, "held"))
        assert first_held["worker"] == "doomed"
        slow_run = process(client, "slow")
        assert follower.wait_for(
            lambda evs: any(t == "step.progress" and slow_run in d for _i, t, d in evs), 60
        ), "the slow run never got going"
        cluster["worker"]("spare")
        poll(lambda: workers_alive(client) == {"doomed", "spare"}, 30, "the spare worker")
        # Queued behind the slow run for the worker that holds the session's lease.
        queued = process(client, "held")
        doomed.kill()

        slow = wait_final(client, slow_run, timeout=30 + LEASE_TTL)
        assert slow["status"] == "interrupted"
        assert slow["error"]["code"] == "WORKER_LOST"
        moved = wait_final(client, queued)
        assert moved["status"] == "succeeded" and moved["worker"] == "spare"
        # The cache went down with the worker: full, and saying why.
        assert (moved["effective_mode"], moved["fallback_reason"]) == ("full", "cache_lost")
        next_slow = process(client, "slow")
        assert follower.wait_for(
            lambda evs: any(t == "run.started" and next_slow in d for _i, t, d in evs), 60
        )
        client.post(f"/runs/{next_slow}/cancel", json={}).raise_for_status()
        after = wait_final(client, next_slow)
        assert after["status"] == "cancelled" and after["worker"] == "spare"
        assert (after["effective_mode"], after["fallback_reason"]) == ("full", "cache_lost")
        ids = [i for i, _t, _d in follower.snapshot()]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        seqs = [int(i.rpartition("-")[2]) for i in ids]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "an event is missing"
        ends = terminal_events(follower.snapshot())
        assert ends[slow_run] == ["run.interrupted"]
        assert ends[queued] == ["run.finished"]
        assert ends[next_slow] == ["run.cancelled"]
        # The stream node relays the API node's events through Redis: the same, in order.
        assert viewer.wait_for(lambda evs: len(evs) >= len(ids), 60), "the stream node lags"
        assert [i for i, _t, _d in viewer.snapshot()][: len(ids)] == ids
    finally:
        stream.terminate()
        api.terminate()  # ends the SSE stream, so the follower's thread returns at once
        follower.close()
        viewer.close()


def test_redis_killed_and_restarted_loses_no_acknowledged_run(cluster: dict[str, Any]) -> None:
    client: httpx.Client = cluster["client"]
    api: ServeProcess = cluster["api"]
    redis: RedisServer = cluster["redis"]
    cluster["worker"]("w1")
    cluster["worker"]("w2")
    for sid in ("a", "b", "c"):
        create(client, sid, SHORT)
    follower = SseFollower(api.url).start()
    try:
        accepted = [process(client, sid) for sid in ("a", "b", "c") for _ in range(3)]
        assert follower.wait_for(lambda evs: any(t == "run.started" for _i, t, _d in evs), 60)
        redis.kill()  # SIGKILL: only the append-only file (fsync always) remembers
        redis.start()
        runs = [wait_final(client, run_id) for run_id in accepted]
        assert [r["status"] for r in runs] == ["succeeded"] * len(accepted)
        assert follower.wait_for(lambda evs: set(accepted) <= set(terminal_events(evs)), 30)
        ends = terminal_events(follower.snapshot())
        assert all(ends[run_id] == ["run.finished"] for run_id in accepted), ends
        ids = [i for i, _t, _d in follower.snapshot()]
        assert len(ids) == len(set(ids))
    finally:
        api.terminate()  # ends the SSE stream, so the follower's thread returns at once
        follower.close()


def test_redis_stopped_for_five_seconds_503_then_recovery(cluster: dict[str, Any]) -> None:
    client: httpx.Client = cluster["client"]
    redis: RedisServer = cluster["redis"]
    cluster["worker"]("w1")
    create(client, "s", SHORT)
    assert wait_final(client, process(client, "s"))["status"] == "succeeded"
    redis.stop()
    refused = 0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:  # a client retrying for five seconds: refused each time
        answer = client.post("/sessions/s/process", json={})
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "BROKER_UNAVAILABLE"
        assert int(answer.headers["Retry-After"]) >= 1
        refused += 1
    assert refused >= 1
    assert client.get("/workers").json()["broker_available"] is False
    redis.start()
    # Back by itself: the next submit is accepted and computed by the worker that waited.
    run_id = poll(
        lambda: (
            (a := client.post("/sessions/s/process", json={})).status_code == 202
            and a.json()["run_id"]
        ),
        30,
        "a submit accepted again",
    )
    run = wait_final(client, run_id)
    assert run["status"] == "succeeded" and run["worker"] == "w1"


def test_api_node_killed_and_restarted_relinks_remote_runs(cluster: dict[str, Any]) -> None:
    client: httpx.Client = cluster["client"]
    api: ServeProcess = cluster["api"]
    cluster["worker"]("w1")
    create(client, "slow", SLOW)
    create(client, "q", FAST)
    slow_run = process(client, "slow")
    poll(lambda: client.get(f"/runs/{slow_run}").json()["status"] == "running", 60, "running")
    queued = process(client, "q")  # handed to Redis; waits for the busy worker
    api.kill()
    api.start()
    with api.client() as again:
        slow = wait_final(again, slow_run)
        assert slow["status"] == "interrupted"  # the API node's restart ended it
        # The worker was told to stop it, so the run queued before the crash gets its turn.
        run = wait_final(again, queued)
        assert run["status"] == "succeeded" and run["worker"] == "w1"
        poll(lambda: (w := again.get("/workers").json()["workers"]) and w[0]["running"] == []
             and w[0]["runs_done"] >= 2, 30, "the worker idle again")  # fmt: skip
    journal = cluster["data"] / "runs" / "slow" / slow_run / "events.ndjson"
    kinds = [json.loads(line)["type"] for line in journal.read_text().splitlines() if line]
    assert [k for k in kinds if k.startswith("run.") and k != "run.queued"] == [
        "run.started", "run.interrupted"]  # fmt: skip


def test_redis_restarted_empty_runs_are_queued_again(cluster: dict[str, Any]) -> None:
    """Without the append-only file a restarted Redis has forgotten the queue: the API node
    queues again every run no worker had claimed, and nothing acknowledged is lost."""
    client: httpx.Client = cluster["client"]
    redis: RedisServer = cluster["redis"]
    create(client, "s", FAST)
    waiting = process(client, "s")  # no worker yet: the job waits on Redis
    poll(lambda: client.get("/workers").json()["queue_depth"] == 1, 30, "the job on Redis")
    redis.kill()
    redis.appendonly = False  # and its file gone: Redis comes back empty
    shutil.rmtree(redis.directory / "appendonlydir", ignore_errors=True)
    redis.start()
    cluster["worker"]("late")
    run = wait_final(client, waiting)
    assert run["status"] == "succeeded" and run["worker"] == "late"
