"""`runwire run`: run directory, events, exit codes, one-line errors, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.demodata import write_demo_data
from pipeline.rundir import read_ndjson
from service.cli import main
from service.cli.run import Progress
from streaming.envelope import EVENT_TYPES, decode


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    write_demo_data(folder, count=2, shape=(64, 64), seed=1)
    return folder


def saxs_args(demo: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "saxs", "--source", f"sample={demo / 'sample_0001.h5'}",
            "--source", f"background={demo / 'background.h5'}", "--source", f"dark={demo / 'dark.h5'}",
            "--out", str(out), *extra]  # fmt: skip


def only_run_dir(out: Path) -> Path:
    (run_dir,) = list(out.iterdir())
    return run_dir


def write_pipeline(tmp_path: Path, steps: str, sources: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\n{sources}steps:\n{steps}")
    return path


def test_saxs_example_writes_the_run_directory(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_file = tmp_path / "events.ndjson"
    assert main(saxs_args(demo, tmp_path / "runs", "--events", str(events_file))) == 0
    err = capsys.readouterr().err
    assert "step geometry succeeded" in err and "Traceback" not in err  # plain lines: not a tty
    run_dir = only_run_dir(tmp_path / "runs")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "artifacts", "events.ndjson", "manifest.json", "run-request.json", "summary.json",
    ]  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_id"] == run_dir.name and summary["status"] == "succeeded"
    assert summary["exit_code"] == 0 and summary["error"] is None
    assert summary["artifacts"] == ["reduced.h5"]
    assert summary["step_states"]["geometry"]["status"] == "succeeded"
    request = json.loads((run_dir / "run-request.json").read_text())
    assert set(request["sources"]) == {"sample", "background", "dark"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["path"] == "reduced.h5" and entry["media_type"] == "application/x-hdf5"
    assert entry["size"] == (run_dir / "artifacts" / "reduced.h5").stat().st_size
    with h5py.File(run_dir / "artifacts" / "reduced.h5") as f:
        assert 100 < f["/sasentry01/sasdata01/Q"].shape[0] <= 200  # n_bins 200; empty bins dropped

    lines = read_ndjson(run_dir / "events.ndjson")
    assert lines == read_ndjson(events_file)  # --events FILE gets the same stream
    events = [decode(line) for line in lines]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.type for e in events} <= set(EVENT_TYPES)
    assert events[0].type == "run.started" and events[-1].type == "run.finished"
    assert events[-1].data["status"] == "succeeded"
    assert all(
        e.sessionid == "local" and e.runid == run_dir.name and e.id == f"local-{e.seq}"
        for e in events
    )
    finished = [e.data for e in events if e.type == "step.finished"]
    assert {"step": "geometry", "status": "succeeded"}.items() <= finished[1].items()


def test_param_override_and_dry_run(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(saxs_args(demo, tmp_path / "runs", "--param", "bins.n_bins=50")) == 0
    with h5py.File(only_run_dir(tmp_path / "runs") / "artifacts" / "reduced.h5") as f:
        assert 0 < f["/sasentry01/sasdata01/Q"].shape[0] <= 50
    capsys.readouterr()
    assert main(saxs_args(demo, tmp_path / "dry", "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["can_process"] and "geometry" in plan["dirty_steps"]
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--param", "bins.n_bins=many"], "steps[5].params.n_bins"),
        (["--param", "nowhere.n_bins=5"], "no step 'nowhere'"),
        (["--param", "novalue"], "STEP.NAME=VALUE"),
        (["--source", "sample"], "REF=PATH"),
        (["--source", "flux=x.h5"], "declares no source 'flux'"),
    ],
)
def test_usage_errors(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert main(saxs_args(demo, tmp_path / "runs", *args)) == 64
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err


def test_missing_source_file_and_unknown_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "saxs", "--source", f"sample={tmp_path / 'nope.h5'}"]) == 64
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "no-such-pipeline"]) == 64
    assert "no such file or example" in capsys.readouterr().err
    assert main(["run", "saxs", "--out", str(tmp_path)]) == 1
    assert "missing required source(s): sample" in capsys.readouterr().err


def test_invalid_pipeline_file_is_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(tmp_path, "  - {id: a, use: diag.nope}\n  - {id: a, use: diag.noop}\n")
    assert main(["run", str(path)]) == 64
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid pipeline") and "\n" not in err
    assert "steps[0].use" in err and "steps[1].id" in err


@pytest.mark.parametrize(("mode", "status"), [("raise", 2), ("return", 4)])
def test_failing_step_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, status: int
) -> None:
    path = write_pipeline(
        tmp_path, f"  - {{id: boom, use: diag.fail, params: {{message: kaput, mode: {mode}}}}}\n"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == status
    err = capsys.readouterr().err
    assert "error: step boom: kaput" in err and "Traceback" not in err
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]["failed_step"] == "boom"


def h5_pipeline(tmp_path: Path, dataset: str) -> Path:
    return write_pipeline(
        tmp_path,
        f"  - {{id: frame, use: hdf5.read, params: {{source: sample, dataset: {dataset}}}, outputs: {{data: frame}}}}\n",
        "sources: {sample: {required: true}}\n",
    )


def test_wrong_dataset_path_and_non_numeric_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "s.h5"
    with h5py.File(data, "w") as f:
        f["/entry/data/data"] = np.ones((4, 4))
        f["/entry/data/text"] = np.array([b"a", b"b"])
    status = main(
        [
            "run",
            str(h5_pipeline(tmp_path, "/entry/data/missing")),
            "--source",
            f"sample={data}",
            "--out",
            str(tmp_path / "r1"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "/entry/data/missing" in err and "Traceback" not in err
    status = main(
        [
            "run",
            str(h5_pipeline(tmp_path, "/entry/data/text")),
            "--source",
            f"sample={data}",
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    err = capsys.readouterr().err
    assert status != 0 and "/entry/data/text" in err and "Traceback" not in err


def test_ctrl_c_cancels_with_exit_5_and_summary_says_so(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path, "  - {id: nap, use: diag.sleep, params: {seconds: 60, ticks: 600}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())",
         "run", str(path), "--out", str(tmp_path / "runs"), "--events", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # blocks until the step has started: no timing guesswork
            if json.loads(line)["type"] == "step.progress":
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 5, err
    assert b"Traceback" not in err and b"cancelled by SIGINT" in err
    assert json.loads(out.splitlines()[-1])["type"] == "run.cancelled"
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "cancelled" and summary["cancelled_by"] == "SIGINT"
    assert summary["exit_code"] == 5 and summary["error"]["code"] == "CANCELLED"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = Terminal()
    progress = Progress(stream, total=2)
    progress.step_finished("a", "succeeded", 0.1, None, leaf=True)
    progress.step_finished("group", "succeeded", 0.1, None, leaf=False)
    progress.step_finished("b", "failed", 0.1, "kaput", leaf=True)
    progress.end()
    text = stream.getvalue()
    assert "\r[###############---------------] 1/2 a" in text
    assert "\r[##############################] 2/2 b" in text
    assert "b: failed: kaput" in text and text.endswith("\n")


def test_events_to_stdout_and_progress_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(
        tmp_path, "  - {id: tick, use: diag.sleep, params: {seconds: 0, ticks: 2}}\n"
    )
    assert (
        main(["run", str(path), "--out", str(tmp_path / "runs"), "--events", "-", "--verbose"]) == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in events] == [
        "run.started", "step.started", "step.progress", "step.progress", "step.finished", "run.finished",
    ]  # fmt: skip
    assert events[2]["data"] == {"step": "tick", "fraction": 0.5, "message": "tick 1/2"}
    assert events[-1]["data"]["dirty_steps"] == ["tick"]


def test_unwritable_events_file_and_out_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(tmp_path, "  - {id: a, use: diag.noop}\n")
    assert (
        main(
            ["run", str(path), "--out", str(tmp_path / "r"), "--events", str(tmp_path / "no" / "e")]
        )
        == 64
    )
    assert "--events" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["run", str(path), "--out", str(tmp_path / "file")]) == 64
    assert "cannot create the run directory" in capsys.readouterr().err


def test_json_pipeline_file_and_nested_param(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "j", "steps": [{"id": "outer", "steps": [
        {"id": "nap", "use": "diag.sleep", "params": {"seconds": 5}}]}]}))  # fmt: skip
    assert (
        main(["run", str(path), "--out", str(tmp_path / "runs"), "--param", "outer.nap.seconds=0"])
        == 0
    )
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "succeeded" and "outer.nap" in summary["step_states"]
    assert main(["run", str(path), "--param", "outer.seconds=0"]) == 64  # `outer` is not a step
