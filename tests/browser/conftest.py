"""Browser tests: real headless Chromium (Debian's package) driven by Playwright against a real
`runwire serve` subprocess. Not collected when Playwright or Chromium is missing; CI installs
both (`.ci/run`)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dashboard_support import chromium_path, launch

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("playwright") is None or chromium_path() is None:
    collect_ignore_glob = ["test_*.py"]


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread
# until it is closed, and the async tests of the other packages need the thread free.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(60_000)
    try:
        yield ctx
    finally:
        ctx.close()
