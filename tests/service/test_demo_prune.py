"""The demo instrument keeps a bounded history: a demo left running for days does not fill the
disk with one run directory and one store row per tick."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from runtime_harness import running

from service.runtime.config import Config
from service.runtime.demo import DEMO_SESSION, prune_demo_runs, run_demo
from service.storage.retained import RetainedRuns

pytestmark = pytest.mark.anyio


async def test_the_demo_keeps_only_its_newest_runs(make_config: Callable[..., Config]) -> None:
    config = make_config(demo_interval_s=0.0)
    keep = 3
    async with running(config) as h:

        def finished(events: list[Any]) -> list[str]:
            return [str(e.runid) for e in events if e.type == "run.finished"]

        for n in range(1, 7):
            await run_demo(h.runtime, config, shape=(32, 32), ticks=1, keep=keep)
            await h.recorder.wait_for(lambda evs, n=n: len(finished(evs)) >= n)
        submitted = finished(h.recorder.events)
        assert len(submitted) == 6
        await prune_demo_runs(h.runtime, config, keep)  # the last run finished after its tick

        newest = submitted[::-1][:keep]
        listed = [r.run_id for r in await h.runtime.list_runs(DEMO_SESSION)]
        assert listed == newest
        session_dir = config.runs_dir / DEMO_SESSION
        assert sorted(p.name for p in session_dir.iterdir() if p.is_dir()) == sorted(newest)
        retained = RetainedRuns(config.runs_dir).list(session_id=DEMO_SESSION)
        assert [r["run_id"] for r in retained] == newest
        # A pruned run is gone everywhere, and the demo still works after pruning.
        assert (await h.runtime.get_session(DEMO_SESSION)).last_run is not None
        assert await prune_demo_runs(h.runtime, config, keep) == 0


async def test_the_demo_session_journal_stays_bounded(make_config: Callable[..., Config]) -> None:
    config = make_config(demo_interval_s=0.0)
    journal = config.runs_dir / DEMO_SESSION / "events.ndjson"
    limit = 1500

    def rested(events: list[Any], n: int) -> bool:
        """n runs finished and the session's state change that follows the last one is out
        (it is journalled after `run.finished`)."""
        types = [e.type for e in events]
        ends = [i for i, t in enumerate(types) if t == "run.finished"]
        return len(ends) >= n and "session.state_changed" in types[ends[n - 1] :]

    async with running(config) as h:
        for n in range(1, 9):
            await run_demo(h.runtime, config, shape=(32, 32), ticks=1, keep=3)
            await h.recorder.wait_for(lambda evs, n=n: rested(evs, n))
        before = journal.read_bytes()
        assert len(before) > limit  # eight ticks of session events: over the bound
        await prune_demo_runs(h.runtime, config, 3, journal_bytes=limit)
        after = journal.read_bytes()
        # The newest whole lines, within half the bound, in order: a suffix of what was there.
        assert 0 < len(after) <= limit // 2 and before.endswith(after)
        assert after.endswith(b"\n") and before[-len(after) - 1 : -len(after)] == b"\n"
        seqs = [json.loads(line)["seq"] for line in after.splitlines()]
        assert seqs == sorted(seqs)
        # Appending goes on after the cut: the next tick's session events land in the file.
        await run_demo(h.runtime, config, shape=(32, 32), ticks=1, keep=3)
        await h.recorder.wait_for(lambda evs: rested(evs, 9))
        assert journal.read_bytes().startswith(after) and len(journal.read_bytes()) > len(after)
