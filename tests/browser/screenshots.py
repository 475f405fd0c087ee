"""Take docs/ui.md's screenshots: one of each dashboard view, against `runwire serve --demo`.

    python tests/browser/screenshots.py [--out docs/ui]

Starts its own server on a free port with a temporary data directory, lets the simulated
instrument run a few samples (so the I(q) plot has earlier runs to overlay), and writes small
PNGs (element screenshots at 1280x800, one at phone size 390x844).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dashboard_support import DashboardServer, launch, wait_until
from playwright.sync_api import sync_playwright

MAX_BYTES = 150_000


def take(out: Path, runs: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        server = DashboardServer(Path(tmp) / "data", demo=True)
        server.start()
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/")
            wait_until(page, "() => location.hash === '#/sessions/demo'")
            wait_until(
                page, "(n) => window.__runwire.plot().runs.length >= n", runs, timeout_ms=180_000
            )
            wait_until(
                page, "() => window.__runwire.run().status === 'succeeded'", timeout_ms=60_000
            )

            def shot(name: str, selector: str) -> None:
                path = out / f"{name}.png"
                page.locator(selector).screenshot(path=str(path))
                written.append(path)

            page.get_by_role("button", name="Dry run").click()
            page.wait_for_selector("#plan p")
            shot("session", "#view-session .col:first-child")
            shot("run", "#run-panel")
            shot("iq", "#plot-panel")
            shot("events", "#events-panel")
            page.goto(server.url + "/ui/#/")
            page.get_by_role("link", name="demo").wait_for()
            shot("sessions", "#view-sessions")
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(server.url + "/ui/#/sessions/demo")
            wait_until(phone, "() => window.__runwire.plot().runs.length >= 1", timeout_ms=60_000)
            path = out / "phone.png"
            phone.screenshot(path=str(path))
            written.append(path)
        finally:
            browser.close()
            server.stop()
    for path in written:
        size = path.stat().st_size
        print(
            f"{path} {size // 1024} KiB"
            + ("  (over the 150 KB budget)" if size > MAX_BYTES else "")
        )
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/ui"))
    parser.add_argument(
        "--runs", type=int, default=4, help="demo runs to wait for (overlaid curves)"
    )
    args = parser.parse_args()
    take(args.out, args.runs)


if __name__ == "__main__":
    main()
