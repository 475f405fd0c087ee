"""The dashboard in a real browser against a real server: what a beamline scientist does with it.

Each test saves a screenshot under its tmp_path (`dashboard.png`, ...) to look at when it fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dashboard_support import DashboardServer, record_console, wait_until

from pipeline.demodata import write_demo_data

pytestmark = pytest.mark.slow

FINAL_STEP_STATES = {"succeeded", "skipped", "failed"}


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = DashboardServer(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


def _run_settled(page: Any, run_id: str) -> dict[str, Any]:
    wait_until(
        page,
        "(rid) => { const r = window.__runwire.run(); return r.runId === rid && r.status === 'succeeded'; }",
        run_id,
    )
    snapshot: dict[str, Any] = page.evaluate("() => window.__runwire.run()")
    return snapshot


def test_create_process_and_see_steps_and_curves(
    server: DashboardServer, context: Any, tmp_path: Path
) -> None:
    frames = write_demo_data(tmp_path / "frames", count=2, shape=(48, 48))
    page = context.new_page()
    errors = record_console(page)
    page.goto(server.url + "/")
    assert page.url.endswith("/ui/")
    page.wait_for_selector("#conn.conn-live")

    # Create a session from the bundled example (the form's default), named by the user.
    page.get_by_label("Session id").fill("beam")
    assert "name: saxs" in page.get_by_label("Pipeline YAML").input_value()
    page.get_by_role("button", name="Create session").click()
    wait_until(page, "() => location.hash === '#/sessions/beam'")

    # Dry run before anything: every step dirty, with its reason; the sample is missing.
    page.get_by_role("button", name="Dry run").click()
    page.wait_for_selector("#plan .plan-table")
    assert "Missing sources: sample" in page.locator("#plan").inner_text()
    assert "never_run" in page.locator("#plan").inner_text()

    # Sample path + "Process" beside it.
    with server.client() as api:
        page.get_by_label("Sample file path").fill(str(frames[0]))
        page.locator("#sample-form").get_by_role("button", name="Process").click()
        wait_until(page, "() => window.__runwire.run().runId !== null")
        first = page.evaluate("() => window.__runwire.run().runId")
        snap = _run_settled(page, first)
        record = api.get(f"/runs/{first}").json()
        # Every step of the tree reached its final state, the one the server recorded.
        for step_id in snap["tree"]:
            assert snap["steps"][step_id]["status"] in FINAL_STEP_STATES, step_id
        for step_id, state in record["step_states"].items():
            assert snap["steps"][step_id]["status"] == state["status"], step_id
        rows = page.locator("#step-tree .step")
        assert rows.count() == len(snap["tree"])
        wait_until(
            page,
            '() => !document.querySelector(\'#step-tree .step[data-status="pending"], #step-tree .step[data-status="running"]\')',
        )

        # The I(q) plot holds as many points as the curve has.
        curve = api.get(f"/retained-runs/{first}/curve").json()
        wait_until(page, "(rid) => window.__runwire.plot().runs[0] === rid", first)
        plot = page.evaluate("() => window.__runwire.plot()")
        assert plot["chartPoints"] == [len(curve["q"])]
        assert plot["units"] == ["1/nm", "arbitrary"]
        page.locator("#run-links").get_by_role("button", name="reduced.h5").wait_for()

        # A second sample: a new run, and now two curves, the newest first.
        page.get_by_label("Sample file path").fill(str(frames[1]))
        page.locator("#sample-form").get_by_role("button", name="Process").click()
        wait_until(
            page,
            "(rid) => window.__runwire.plot().runs.length === 2 && window.__runwire.plot().runs[1] === rid",
            first,
        )
        plot = page.evaluate("() => window.__runwire.plot()")
        second = plot["runs"][0]
        _run_settled(page, second)
        curve2 = api.get(f"/retained-runs/{second}/curve").json()
        assert plot["chartPoints"] == [len(curve2["q"]), len(curve["q"])]
        assert api.get(f"/runs/{second}").json()["effective_mode"] == "partial"
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # Opened afresh with nothing running, the session shows its newest run, not its oldest.
    page.reload()
    _run_settled(page, second)

    # The sessions view lists it with its last run; readable on a phone-sized screen.
    page.goto(server.url + "/ui/#/")
    page.get_by_role("link", name="beam").wait_for()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.url + "/ui/#/sessions/beam")
    wait_until(page, "() => window.__runwire.plot().runs.length === 2")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than a 390px screen"
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert errors() == []


FAILING = """\
name: failing
steps:
  - id: prepare
    use: diag.sleep
    params: {seconds: 0.0, ticks: 1}
  - id: checks
    parallel: true
    steps:
      - {id: ok, use: diag.sleep, params: {seconds: 0.0, ticks: 1}}
      - {id: broken, use: diag.fail, params: {message: detector offline}}
"""


def test_failed_step_shows_its_error_and_the_tail_filters(
    server: DashboardServer, context: Any, tmp_path: Path
) -> None:
    with server.client() as api:
        r = api.post("/sessions", json={"session_id": "bad", "pipeline": {"yaml_text": FAILING}})
        assert r.status_code == 201, r.text
    page = context.new_page()
    page.goto(server.url + "/ui/#/sessions/bad")
    page.wait_for_selector("#conn.conn-live")
    page.wait_for_selector('#step-tree .step[data-step="checks.broken"]')
    page.locator("#process-form").get_by_role("button", name="Process", exact=True).click()
    wait_until(page, "() => window.__runwire.run().status === 'failed'")
    broken = page.locator('#step-tree .step[data-step="checks.broken"]')
    wait_until(
        page,
        "() => document.querySelector('#step-tree .step[data-step=\"checks.broken\"]').dataset.status === 'failed'",
    )
    assert "detector offline" in broken.locator(".step-error").inner_text()
    # The run's error (code and message) comes with its record, fetched after run.finished.
    wait_until(
        page, "() => document.querySelector('#run-error').textContent.includes('detector offline')"
    )
    assert (
        page.locator('#step-tree .step[data-step="checks.ok"]').get_attribute("data-status")
        == "succeeded"
    )
    # The tail, filtered by type, shows only that type.
    page.get_by_label("Event type").select_option("step.finished")
    wait_until(page, "() => document.querySelectorAll('#event-list li').length > 0")
    types = page.evaluate(
        "() => [...document.querySelectorAll('#event-list li')].map(li => li.dataset.type)"
    )
    assert types and set(types) == {"step.finished"}
    page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)


PIPELINE = """\
name: ticking
steps:
  - id: burst
    use: diag.emit
    params: {count: 20, payload_bytes: 32}
  - id: slow
    use: diag.sleep
    params: {seconds: 3.0, ticks: 30}
  - id: tail
    use: diag.emit
    params: {count: 5, payload_bytes: 16}
"""


def test_page_resumes_after_a_server_restart_mid_run(tmp_path: Path, context: Any) -> None:
    server = DashboardServer(tmp_path / "data")
    server.start()
    try:
        with server.client() as api:
            r = api.post(
                "/sessions", json={"session_id": "tick", "pipeline": {"yaml_text": PIPELINE}}
            )
            assert r.status_code == 201, r.text
        page = context.new_page()
        errors = record_console(page)
        page.goto(server.url + "/ui/#/sessions/tick")
        page.wait_for_selector("#conn.conn-live")
        wait_until(page, "() => document.querySelector('#step-tree .step') !== null")
        with server.client() as api:
            run_id = api.post("/sessions/tick/process", json={}).json()["run_id"]
        # Mid-run: the page has seen the slow step's progress, then the server dies.
        wait_until(
            page,
            "(rid) => window.__runwire.events().some(e => e.runid === rid && e.type === 'step.progress')",
            run_id,
        )
        server.kill()
        page.wait_for_selector("#conn.conn-reconnecting")
        server.start()  # same data directory, same port
        wait_until(
            page,
            "(rid) => window.__runwire.events().some(e => e.runid === rid && e.type === 'run.interrupted')",
            run_id,
        )
        assert page.evaluate("() => window.__runwire.stream().connections") >= 2
        # The page keeps working on the new server: a new run, seen to its end.
        with server.client() as api:
            again = api.post("/sessions/tick/process", json={}).json()["run_id"]
        wait_until(
            page,
            "(rid) => window.__runwire.events().some(e => e.runid === rid && e.type === 'run.finished')",
            again,
        )
        page.screenshot(path=str(tmp_path / "resumed.png"), full_page=True)
        seen = page.evaluate("() => window.__runwire.events()")
        seqs = [e["seq"] for e in seen]
        assert len(seqs) == len(set(seqs)), "an event was shown twice"
        # Up to the last event the page has (the server may have written a later one already).
        on_disk = [e for e in server.disk_events() if seqs[0] <= e["seq"] <= seqs[-1]]
        assert [(e["seq"], e["type"]) for e in seen] == [(e["seq"], e["type"]) for e in on_disk]
        page.wait_for_selector('#run-summary[data-status="succeeded"]')
        # Only script errors count: refused connections while the server was down, and the 404
        # of a curve this diagnostic pipeline does not write, are logged by Chromium itself.
        assert [e for e in errors() if not e.startswith("console: Failed to load resource")] == []
    finally:
        server.stop()


def test_token_is_asked_once_and_never_put_in_a_url(tmp_path: Path, context: Any) -> None:
    token = "tok-" + "x7Q2" * 6
    server = DashboardServer(tmp_path / "data", token=token)
    server.start()
    try:
        page = context.new_page()
        urls: list[str] = []
        api_headers: list[dict[str, str]] = []

        def on_request(request: Any) -> None:
            urls.append(request.url)
            if "/v1/" in request.url:
                api_headers.append(request.headers)

        page.on("request", on_request)
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.goto(server.url + "/")
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.get_by_label("Bearer token").fill(token)
        page.get_by_role("button", name="Use token").click()
        page.wait_for_selector("#conn.conn-live")
        page.get_by_label("Session id").fill("secure")
        page.get_by_role("button", name="Create session").click()
        wait_until(page, "() => location.hash === '#/sessions/secure'")
        page.get_by_role("button", name="Dry run").click()
        page.wait_for_selector("#plan p")
        # A reload in the same tab: the token is still there, nothing is asked again.
        page.reload()
        page.wait_for_selector("#conn.conn-live")
        page.get_by_role("heading", name="Session secure").wait_for()
        assert not dialog.is_visible()
        page.screenshot(path=str(tmp_path / "token.png"), full_page=True)
        # A new tab is a new sessionStorage: it asks again.
        other = context.new_page()
        other.goto(server.url + "/ui/")
        other.get_by_role("dialog").wait_for()
        other.close()

        assert urls and all(token not in url for url in urls)
        assert any(h.get("authorization") == f"Bearer {token}" for h in api_headers)
        assert all(token not in line for line in console)
        assert all(token not in line for line in server.log)
        stored = page.evaluate("() => Object.keys(localStorage).length")
        assert stored == 0  # kept for the tab only (sessionStorage), never in localStorage
    finally:
        server.stop()


def test_demo_server_shows_the_demo_session_live(tmp_path: Path, context: Any) -> None:
    server = DashboardServer(tmp_path / "data", demo=True)
    server.start()
    try:
        page = context.new_page()
        errors = record_console(page)
        page.goto(server.url + "/")  # and nothing else
        wait_until(page, "() => location.hash === '#/sessions/demo'")
        page.wait_for_selector("#conn.conn-live")
        # Live: a run of the simulated instrument finishes while the page watches, and its
        # curve is drawn.
        wait_until(
            page,
            "() => window.__runwire.events().some(e => e.sessionid === 'demo' && e.type === 'run.finished')",
            timeout_ms=120_000,
        )
        wait_until(page, "() => window.__runwire.plot().runs.length >= 1", timeout_ms=60_000)
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        assert [e for e in errors() if not e.startswith("console: Failed to load resource")] == []
    finally:
        server.stop()
