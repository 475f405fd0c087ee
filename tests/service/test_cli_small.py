"""Small things a user of the CLI trips over (issue 9, item 10), through the real console script
against a real server (uvicorn on a free loopback port, in a background thread).

`--version`, `--wait --quiet`, tables that fit the terminal, one newest-first order for every
run listing, and `runs download` refusing to overwrite a file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli.format import EventPrinter
from service.http.server import serve_in_thread
from service.runtime.config import Config

RUNWIRE = Path(sys.executable).with_name("runwire")

EMIT = """
name: emitter
steps:
  - id: emit
    use: diag.emit
    params: {count: 5, payload_bytes: 8}
"""

LONG_MESSAGE = "the detector said no " * 12  # ~250 characters: wider than any terminal

FAIL = f"""
name: failer
steps:
  - id: boom
    use: diag.fail
    params: {{message: "{LONG_MESSAGE.strip()}"}}
"""

SLEEP = """
name: sleeper
steps:
  - id: nap
    use: diag.sleep
    params: {seconds: 60, ticks: 600}
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = Config(data_dir=tmp_path_factory.mktemp("small-data"), shutdown_grace=1.0)
    with serve_in_thread(config) as (base_url, _app, _server):
        yield base_url


@pytest.fixture(scope="module")
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{url}/v1", timeout=60) as client:
        yield client


def runwire(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNWIRE), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def create_session(api: httpx.Client, sid: str, yaml_text: str) -> None:
    answer = api.post("/sessions", json={"session_id": sid, "pipeline": {"yaml_text": yaml_text}})
    assert answer.status_code == 201, answer.text


TERMINAL = ("event: run.finished", "event: run.cancelled", "event: run.interrupted")


def wait_final(api: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run once final, after its terminal event on the server's SSE stream (no polling)."""
    with api.stream("GET", f"/runs/{run_id}/events", params={"since": "0"}) as stream:
        for line in stream.iter_lines():
            if line in TERMINAL:
                break
    run: dict[str, Any] = api.get(f"/runs/{run_id}").json()
    assert run["status"] in {"succeeded", "failed", "cancelled", "interrupted"}, run
    return run


# --- --version --------------------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    done = runwire("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"runwire {version('runwire')}\n", "")


def test_version_imports_nothing_of_the_server_stack() -> None:
    # Client start-up must stay cheap: `--version` loads no HTTP client, server or numpy.
    probe = (
        "import sys\n"
        "from service.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        "heavy = {'httpx', 'starlette', 'uvicorn', 'numpy', 'h5py', 'anyio', 'service.http.app'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


# --- --wait --quiet ---------------------------------------------------------------------------


def test_wait_quiet_prints_nothing_and_exits_by_the_runs_outcome(
    url: str, api: httpx.Client
) -> None:
    create_session(api, "quiet-ok", EMIT)
    done = runwire("session", "--url", url, "process", "quiet-ok", "--wait", "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    runs = api.get("/sessions/quiet-ok/runs").json()["runs"]
    assert [r["status"] for r in runs] == ["succeeded"]

    create_session(api, "quiet-fail", FAIL)
    done = runwire("session", "--url", url, "process", "quiet-fail", "--wait", "-q")
    assert done.returncode == 2  # STEP_EXCEPTION, as without --quiet
    assert done.stdout == ""
    failed = api.get("/sessions/quiet-fail/runs").json()["runs"][0]
    assert done.stderr.startswith(f"error: run {failed['run_id']} failed: ")
    assert done.stderr.count("\n") == 1

    # retry --wait --quiet: same contract; without --wait, --quiet hides the "queued" line.
    done = runwire("session", "--url", url, "retry", failed["run_id"], "--wait", "--quiet")
    assert done.returncode == 2 and done.stdout == ""
    done = runwire("session", "--url", url, "process", "quiet-ok", "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# --- one order for run lists ------------------------------------------------------------------


def test_every_run_listing_is_newest_first_and_the_queue_stays_in_queue_order(
    url: str, api: httpx.Client
) -> None:
    create_session(api, "order", SLEEP)
    submitted = []
    for _ in range(3):  # one runs, two wait behind it in the session's queue
        answer = api.post("/sessions/order/process", json={"mode": "full"})
        assert answer.status_code == 202, answer.text
        submitted.append(answer.json()["run_id"])
    try:
        assert api.get("/sessions/order").json()["queued_run_ids"] == submitted[1:]
        newest_first = submitted[::-1]

        def ids(body: dict[str, Any]) -> list[str]:
            return [r["run_id"] for r in body["runs"]]

        assert ids(api.get("/sessions/order/runs").json()) == newest_first
        assert ids(api.get("/retained-runs", params={"session_id": "order"}).json()) == (
            newest_first
        )
        done = runwire("session", "--url", url, "runs", "order", "--json")
        assert ids(json.loads(done.stdout)) == newest_first
        done = runwire("runs", "--url", url, "list", "--session", "order", "--json")
        assert ids(json.loads(done.stdout)) == newest_first
        # The human tables list them in the same order.
        for args in (("session", "--url", url, "runs", "order"), ("runs", "--url", url, "list")):
            rows = runwire(*args).stdout.splitlines()[1:]
            listed = [row.split()[0] for row in rows if row.split()[0] in submitted]
            assert listed == newest_first

        # Paging with `before` walks the same order, one page at a time.
        paged: list[str] = []
        before: str | None = None
        while True:
            params = {"session_id": "order", "limit": "1", **({"before": before} if before else {})}
            body = api.get("/retained-runs", params=params).json()
            paged += ids(body)
            before = body["next_before"]
            if before is None:
                break
        assert paged == newest_first
        done = runwire(
            "runs", "--url", url, "list", "--session", "order", "--before", submitted[2], "--json"
        )
        assert ids(json.loads(done.stdout)) == submitted[1::-1]
    finally:
        for run_id in submitted:
            api.post(f"/runs/{run_id}/cancel", json={})
        for run_id in submitted:
            wait_final(api, run_id)


# --- tables that fit --------------------------------------------------------------------------


def run_on_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run the console script with stdout on a pseudo-terminal `columns` wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([str(RUNWIRE), *args], stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


def test_tables_fit_the_terminal_cutting_only_free_text(url: str, api: httpx.Client) -> None:
    create_session(api, "wide", FAIL)
    run_id = api.post("/sessions/wide/process", json={}).json()["run_id"]
    assert wait_final(api, run_id)["status"] == "failed"

    code, out = run_on_terminal(["runs", "--url", url, "list", "--session", "wide"], 120)
    assert code == 0
    header, row = out.splitlines()
    assert len(row) == 120 and len(header) <= 120
    assert row.split()[:3] == [run_id, "wide", "failed"]  # ids are never cut
    assert row.endswith("\u2026") and "STEP_EXCEPTION in boom: the detector" in row
    assert header.split()[0] == "RUN"

    # Piped, nothing is cut: scripts and grep see the whole message.
    piped = runwire("runs", "--url", url, "list", "--session", "wide").stdout
    assert LONG_MESSAGE.strip() in piped
    # Columns are as wide as their content: no wall of spaces after the widest cell.
    header, row = piped.splitlines()
    assert row.startswith(f"{run_id}  wide  ")
    assert header.startswith("RUN" + " " * (len(run_id) - 3 + 2) + "SESSION")


def test_event_lines_align_without_fixed_widths() -> None:
    class Out:
        def __init__(self) -> None:
            self.text = ""

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

    run_id = "r-20261123T040512-3fa9c2d1"
    base = {"time": "2026-12-05T12:00:00.000001Z", "sessionid": "s"}
    out = Out()
    printer = EventPrinter(out)  # type: ignore[arg-type]
    printer.print({**base, "type": "session.updated", "data": {}})
    printer.print({**base, "type": "run.started", "runid": run_id, "data": {}})
    printer.print({**base, "type": "run.finished", "runid": run_id, "data": {"status": "ok"}})
    lines = out.text.splitlines()
    # Once a run id has been seen, later lines line up on it (no column cut or pushed).
    assert lines[1].index("run.started") == lines[2].index("run.finished")
    assert run_id in lines[1] and run_id in lines[2]
    # Nothing is padded beyond the widest value seen: two spaces between columns.
    assert "s  -  session.updated" in lines[0]
    assert f"s  {run_id}  run.started" in lines[1]


# --- runs download ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact_run(api: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipeline.demodata import write_demo_data
    from pipeline.examples import example_text

    frames = write_demo_data(tmp_path_factory.mktemp("frames"), count=1, shape=(32, 32))
    create_session(api, "dl", example_text("saxs"))
    answer = api.post("/sessions/dl/sample", json={"location": str(frames[0]), "process": True})
    assert answer.status_code == 202, answer.text
    run = wait_final(api, answer.json()["run_id"])
    assert run["status"] == "succeeded", run
    manifest = api.get(f"/retained-runs/{run['run_id']}/artifact-manifest").json()
    entry = next(a for a in manifest["artifacts"] if a["path"].endswith("reduced.h5"))
    return {"run_id": run["run_id"], **entry}


def test_download_never_overwrites_without_force(
    url: str, artifact_run: dict[str, Any], tmp_path: Path
) -> None:
    run_id, path = artifact_run["run_id"], artifact_run["path"]
    target = tmp_path / "mine.h5"
    target.write_bytes(b"my own work")
    done = runwire("runs", "--url", url, "download", run_id, path, "-o", str(target))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {target} exists; pass --force to overwrite it\n"
    assert target.read_bytes() == b"my own work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5"]  # no .part left

    # The default file name (the artifact's base name) is protected the same way.
    (tmp_path / "reduced.h5").write_bytes(b"older")
    done = runwire("runs", "--url", url, "download", run_id, path, cwd=tmp_path)
    assert done.returncode == 1 and (tmp_path / "reduced.h5").read_bytes() == b"older"

    done = runwire("runs", "--url", url, "download", run_id, path, "-o", str(target), "--force")
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size == artifact_run["size"]
    fresh = tmp_path / "fresh.h5"
    done = runwire("runs", "--url", url, "download", run_id, path, "-o", str(fresh))
    assert done.returncode == 0 and fresh.stat().st_size == artifact_run["size"]


def test_a_table_too_narrow_for_its_ids_cuts_free_text_to_its_floor_only() -> None:
    from service.cli.format import table

    run_id = "r-20261123T040512-3fa9c2d1"
    rows = [(run_id, "a" * 40, "b" * 60), ("r-2", "short", "")]
    text = table(("RUN", "PIPELINE", "ERROR"), rows, shrink=("PIPELINE", "ERROR"), width=30)
    _header, first, second = text.splitlines()
    # Both free-text columns are down to 8 characters; the id is whole though it overflows.
    assert first == f"{run_id}  {'a' * 7}\u2026  {'b' * 7}\u2026"
    assert second.split() == ["r-2", "short", "-"]
    # Wide enough: nothing is cut, and the widest shrinkable column gives way first.
    assert table(("RUN", "ERROR"), [("r-1", "x" * 10)], shrink=("ERROR",), width=80).endswith(
        "x" * 10
    )
    narrowed = table(("A", "B"), [("a" * 20, "b" * 12)], shrink=("A", "B"), width=26)
    assert narrowed.splitlines()[1] == f"{'a' * 11}\u2026  {'b' * 12}"  # 26 wide, B whole
