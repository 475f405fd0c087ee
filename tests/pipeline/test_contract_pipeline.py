"""Contract audit regressions for `runwire run` (CONTRACT sections 3 and 5): the local event
stream's envelope and data, the dry-run exit status, SIGTERM ending a run as cancelled, and
the progress bar moving during a long step."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.cli.run import Progress

ENVELOPE_KEYS = {"specversion", "id", "source", "type", "time", "datacontenttype", "sessionid",
                 "seq", "data", "subject", "runid"}  # fmt: skip


def run_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], steps: str
) -> tuple[int, list[dict]]:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nsteps:\n{steps}")
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--events", "-"])
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


def test_a_failed_local_run_ends_with_one_run_finished_naming_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, events = run_events(
        tmp_path, capsys, "  - {id: bad, use: diag.fail, params: {message: boom}}\n"
    )
    assert code == 2
    assert [e["type"] for e in events] == ["run.started", "step.started", "step.finished",
                                           "run.finished"]  # fmt: skip
    for e in events:
        assert set(e) == ENVELOPE_KEYS
        assert e["id"] == f"local-{e['seq']}" and e["subject"] == e["runid"]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    step = events[2]["data"]
    assert step["step"] == "bad" and step["status"] == "failed" and "boom" in step["error"]
    finished = events[-1]["data"]
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "STEP_EXCEPTION"
    assert finished["error"]["failed_step"] == "bad"
    assert {"elapsed_s", "dirty_steps", "skipped_steps"} <= set(finished)


def test_dry_run_exits_1_when_the_run_could_not_go_ahead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: t\nsources:\n  sample: {required: true}\nsteps:\n"
        "  - {id: r, use: hdf5.read, params: {source: sample, dataset: /d}, outputs: {data: x}}\n"
    )
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "runs")]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["can_process"] is False and plan["missing_required_sources"] == ["sample"]
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_sigterm_cancels_a_local_run_with_exit_5_and_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: t\nsteps:\n  - {id: nap, use: diag.sleep, params: {seconds: 60, ticks: 600}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
         "run", str(path), "--out", str(tmp_path / "runs"), "--events", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # blocks until the step runs: no timing guesswork
            if json.loads(line)["type"] == "step.progress":
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 5, err
    assert b"cancelled by SIGTERM" in err and b"Traceback" not in err
    assert json.loads(out.splitlines()[-1])["type"] == "run.cancelled"
    (run_dir,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "cancelled" and summary["cancelled_by"] == "SIGTERM"
    events = (run_dir / "events.ndjson").read_bytes().splitlines()
    assert json.loads(events[-1])["type"] == "run.cancelled"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_moves_while_a_long_step_reports_progress() -> None:
    tty = Terminal()
    progress = Progress(tty, total=2, redraw_s=0.0)
    progress.step_started("nap", leaf=True)
    progress.step_progress("nap", 0.5, "tick 5/10")
    progress.end()
    text = tty.getvalue()
    assert "\r[------------------------------] 0/2 nap" in text
    assert "\r[#######-----------------------] 0/2 nap 50% tick 5/10" in text
    plain = io.StringIO()  # not a terminal: one line per finished step, no animation
    progress = Progress(plain, total=1, redraw_s=0.0)
    progress.step_started("nap", leaf=True)
    progress.step_progress("nap", 0.5, "tick")
    progress.step_finished("nap", "succeeded", 0.25, None, leaf=True)
    assert plain.getvalue() == "step nap succeeded (0.250 s)\n"
