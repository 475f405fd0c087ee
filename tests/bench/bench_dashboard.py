"""The dashboard under load: headless Chromium on `/ui/` while a real `runwire serve` publishes
about 1,000 events/s for 30 s.

Load: session `burst` runs a `diag.emit` pipeline (~100 events a run) submitted `--rate`/100
times a second; session `saxs` reduces a small generated frame every `--sample-every` seconds
(the bundled example), and the page shows that session, so each of its runs ends with the I(q)
plot redrawn. The page reads every event of both sessions (one stream, all sessions).

Figures (printed, one per line):
- events/s the page received (deduplicated), and what it kept (JS ring, DOM rows: both bounded);
- frames/s: animation frames the browser ran (a rAF counter of its own: a busy main thread
  drops frames), and the page's own renders per second (at most one per frame);
- the longest main-thread task (PerformanceObserver `longtask`; none reported means < 50 ms);
- JS heap used at the start and at the end (after a forced GC, CDP `Runtime.getHeapUsage`);
- `run.finished` received -> plot drawn with that run, median and p95 (goal <= 100 ms median,
  contract section 9b).

Usage: `.venv/bin/python tests/bench/bench_dashboard.py [--seconds 30] [--rate 1000]`.
Needs Playwright and Debian's chromium (as the browser tests).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "browser"))

from dashboard_support import DashboardServer, launch, wait_until
from playwright.sync_api import sync_playwright

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

EVENTS_PER_RUN = 100  # diag.emit count 92 + queued/started/step/finished/state events
BURST = """\
name: burst
steps:
  - id: emit
    use: diag.emit
    params: {count: 92, payload_bytes: 64}
"""

INSTRUMENT = """() => {
  const m = { frames: 0, longest: 0, longtasks: 0 };
  const tick = () => { m.frames += 1; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) { m.longtasks += 1; m.longest = Math.max(m.longest, e.duration); }
  }).observe({ type: "longtask", buffered: true });
  window.__bench = m;
}"""


def heap_mb(cdp: Any) -> float:
    cdp.send("HeapProfiler.collectGarbage")
    used: float = cdp.send("Runtime.getHeapUsage")["usedSize"]
    return used / 1e6


def feed(
    server: DashboardServer, stop: threading.Event, rate: int, frames: list[Path], every: float
) -> dict[str, int]:
    """Submit burst runs at `rate` events/s and a saxs sample every `every` s until `stop`."""
    counts = {"burst_runs": 0, "samples": 0, "refused": 0}
    period = EVENTS_PER_RUN / rate
    with server.client() as api:
        start = time.perf_counter()
        next_sample = next_burst = start
        while not stop.is_set():
            now = time.perf_counter()
            if now >= next_sample:
                body = {"location": str(frames[counts["samples"] % len(frames)]), "process": True}
                r = api.post("/sessions/saxs/sample", json=body)
                counts["samples" if r.status_code == 202 else "refused"] += 1
                next_sample += every
            if now >= next_burst:
                # mode full: a partial run would skip the unchanged step and emit nothing
                r = api.post("/sessions/burst/process", json={"mode": "full"})
                counts["burst_runs" if r.status_code == 202 else "refused"] += 1
                next_burst += period
            stop.wait(max(0.0, min(next_sample, next_burst) - time.perf_counter()))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="target events/s")
    parser.add_argument("--frame", type=int, default=128, help="saxs frame size (pixels a side)")
    parser.add_argument("--sample-every", type=float, default=1.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        frames = write_demo_data(Path(tmp) / "frames", count=3, shape=(args.frame, args.frame))
        server = DashboardServer(Path(tmp) / "data", extra_args=("--queue-size", "1024"))
        server.start()
        browser = launch(p)
        try:
            with server.client() as api:
                for sid, text in (("burst", BURST), ("saxs", example_text("saxs"))):
                    r = api.post(
                        "/sessions", json={"session_id": sid, "pipeline": {"yaml_text": text}}
                    )
                    r.raise_for_status()
                bg, dark = Path(tmp) / "frames" / "background.h5", Path(tmp) / "frames" / "dark.h5"
                for ref, path in (("background", bg), ("dark", dark)):
                    api.post(
                        "/sessions/saxs/sources/patch",
                        json={"ref": ref, "type": "hdf5", "location": str(path)},
                    )
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            cdp = page.context.new_cdp_session(page)
            page.goto(server.url + "/ui/#/sessions/saxs")
            page.wait_for_selector("#conn.conn-live")
            wait_until(page, "() => document.querySelector('#step-tree .step') !== null")
            page.evaluate(INSTRUMENT)
            heap_start = heap_mb(cdp)
            total0 = page.evaluate("() => window.__runwire.received()")
            frames0 = page.evaluate("() => [window.__bench.frames, window.__runwire.frames()]")

            stop = threading.Event()
            result: dict[str, int] = {}
            feeder = threading.Thread(
                target=lambda: result.update(
                    feed(server, stop, args.rate, frames, args.sample_every)
                )
            )
            t0 = time.perf_counter()
            feeder.start()
            while time.perf_counter() - t0 < args.seconds:
                time.sleep(1.0)  # a benchmark's clock, not synchronisation
            stop.set()
            feeder.join()
            elapsed = time.perf_counter() - t0
            m = page.evaluate(
                "() => ({bench: window.__bench, frames: window.__runwire.frames(), total: window.__runwire.received(),"
                " kept: window.__runwire.events().length, rows: window.__runwire.domRows(), plot: window.__runwire.plot(), dup: window.__runwire.stream().duplicates})"
            )
            heap_end = heap_mb(cdp)
        finally:
            browser.close()
            server.stop()

    received = m["total"] - total0
    timings = m["plot"]["timings"]
    print(
        f"load: {result.get('burst_runs', 0)} burst runs, {result.get('samples', 0)} saxs samples, {result.get('refused', 0)} refused, {elapsed:.1f} s"
    )
    print(
        f"events received by the page: {received} ({received / elapsed:.0f}/s); kept in JS: {m['kept']}; DOM rows: {m['rows']}; duplicates dropped: {m['dup']}"
    )
    print(
        f"browser frames/s: {(m['bench']['frames'] - frames0[0]) / elapsed:.1f}; page renders/s: {(m['frames'] - frames0[1]) / elapsed:.1f}"
    )
    print(
        f"longest main-thread task: {m['bench']['longest']:.0f} ms ({m['bench']['longtasks']} tasks over 50 ms)"
    )
    print(f"JS heap used: {heap_start:.1f} MB at start, {heap_end:.1f} MB at the end")
    if timings:
        p95 = sorted(timings)[max(0, int(len(timings) * 0.95) - 1)]
        print(
            f"run.finished -> plot drawn: median {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms, max {max(timings):.1f} ms over {len(timings)} runs (goal <= 100 ms median)"
        )
    else:
        print("run.finished -> plot drawn: no saxs run finished")


if __name__ == "__main__":
    main()
