"""Durability benchmarks: replay from run directories, retained-run listing, store commits.

    .venv/bin/python tests/bench/bench_durability.py [--runs 500] [--events-per-run 100]

Prints numbers only (no assertions); figures go to docs/durability.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import msgspec

from service.contract.records import RunRecord, RunStatus
from service.storage.history import RunDirectoryHistory
from service.storage.retained import RetainedRuns
from service.storage.store import SessionStore
from streaming.envelope import Event


def build(runs_dir: Path, runs: int, per_run: int) -> int:
    seq = 0
    for r in range(runs):
        sid = f"s{r % 4}"
        run_id = f"r-{r:06d}"
        run_dir = runs_dir / sid / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run-request.json").write_text("{}")
        lines = []
        for _ in range(per_run):
            seq += 1
            lines.append(
                Event.create(
                    epoch="1",
                    seq=seq,
                    type="step.progress",
                    session_id=sid,
                    data={"step": "a", "fraction": 0.5},
                    run_id=run_id,
                ).raw
            )
        (run_dir / "events.ndjson").write_bytes(b"\n".join(lines) + b"\n")
        record = RunRecord(
            run_id=run_id,
            session_id=sid,
            status=RunStatus.SUCCEEDED,
            queued_utc=f"2026-01-01T00:{r // 60 % 60:02d}:{r % 60:02d}Z",
        )
        (run_dir / "summary.json").write_bytes(msgspec.json.encode(record))
    return seq


def timed(label: str, func: object, repeat: int = 5) -> None:
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = func()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    size = len(result) if hasattr(result, "__len__") else "-"  # type: ignore[arg-type]
    print(f"{label:<52} {best * 1e3:9.2f} ms   (items: {size})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--events-per-run", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        top = build(runs_dir, args.runs, args.events_per_run)
        print(f"{args.runs} runs x {args.events_per_run} events = {top} events on disk")

        cold = RunDirectoryHistory(runs_dir)
        t0 = time.perf_counter()
        cold.events_after(0, None, None)
        print(
            f"{'history: all events, cold (first read)':<52} {(time.perf_counter() - t0) * 1e3:9.2f} ms"
        )
        history = RunDirectoryHistory(runs_dir)
        history.events_after(0, None, None)
        timed("history: all events, warm", lambda: list(history.events_after(0, None, None)))
        timed(
            "history: last 10,000 events, warm",
            lambda: list(history.events_after(top - 10_000, None, None)),
        )
        timed(
            "history: nothing new (skip by cache), warm",
            lambda: list(history.events_after(top, None, None)),
        )
        timed("history: one run", lambda: list(history.events_after(0, None, "r-000007")))

        retained = RetainedRuns(runs_dir)
        t0 = time.perf_counter()
        retained.list(limit=50)
        print(f"{'retained: list 50 newest, cold':<52} {(time.perf_counter() - t0) * 1e3:9.2f} ms")
        timed("retained: list 50 newest, warm", lambda: retained.list(limit=50))
        timed("retained: get one run", lambda: [retained.get("r-000123")])

        with SessionStore(Path(tmp) / "runwire.sqlite3") as store:
            n = 200
            t0 = time.perf_counter()
            for i in range(n):
                store.save_run(RunRecord(run_id=f"x{i}", session_id="s", queued_utc="t"))
            per = (time.perf_counter() - t0) / n
            print(
                f"{'store: save_run (one durable commit each)':<52} {per * 1e3:9.2f} ms per commit"
            )
            t0 = time.perf_counter()
            with store.transaction():
                for i in range(n):
                    store.save_run(RunRecord(run_id=f"y{i}", session_id="s", queued_utc="t"))
            per = (time.perf_counter() - t0) / n
            print(f"{'store: save_run inside one transaction()':<52} {per * 1e3:9.2f} ms per save")
            timed("store: list_runs (400 runs)", store.list_runs)


if __name__ == "__main__":
    main()
