"""`runwire session|events|runs` against a real server (uvicorn on a free loopback port).

Commands run in-process through `service.cli.main` (output captured with capsys); a couple run
the real console script for exit statuses and the one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import NEEDS_SAMPLE

from service.cli import main
from service.cli.api_client import problem_error
from service.cli.format import dry_run_text, duration, manifest_table, run_detail
from service.http.server import serve_in_thread
from service.runtime.config import Config

RUNWIRE = Path(sys.executable).with_name("runwire")

EMIT = """
name: emitter
version: "1.0"
steps:
  - id: emit
    use: diag.emit
    params: {count: 25, payload_bytes: 8}
"""

SLEEP = """
name: sleeper
steps:
  - id: nap
    use: diag.sleep
    params: {seconds: 30, ticks: 3000}
"""

FAIL = """
name: failer
steps:
  - id: boom
    use: diag.fail
    params: {message: "on purpose"}
"""


class LiveServer:
    """`service.http.server.serve_in_thread` held open across a module's tests; `stop()` drains."""

    def __init__(self, data_dir: Path, token: str | None = None) -> None:
        self.data_dir = data_dir
        self._serving = contextlib.ExitStack()
        config = Config(data_dir=data_dir, shutdown_grace=1.0, token=token)
        self.url: str = self._serving.enter_context(serve_in_thread(config))[0]

    def stop(self) -> None:
        self._serving.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("runwire-data"))
    yield live
    live.stop()


@pytest.fixture
def cli(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `runwire GROUP --url URL ARGS...` in-process; (exit status, stdout, stderr)."""

    def run(group: str, *args: str) -> tuple[int, str, str]:
        code = main([group, "--url", server.url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def cli_json(cli: Any, group: str, *args: str) -> Any:
    code, out, err = cli(group, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def pipeline_file(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- sessions ---------------------------------------------------------------------------------


def test_session_lifecycle_create_list_show_delete(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli(
        "session", "create", "life", "--pipeline", pipeline_file(tmp_path, EMIT), "--name", "Life"
    )
    assert code == 0, err
    assert out.startswith("created session 'life'")
    assert "emitter 1.0" in out

    code, out, _ = cli("session", "list")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["SESSION", "STATE", "PIPELINE"]
    assert any(row.split()[:2] == ["life", "idle"] for row in rows)

    listed = cli_json(cli, "session", "list")
    assert "life" in [s["session_id"] for s in listed["sessions"]]
    shown = cli_json(cli, "session", "show", "life")
    assert shown["name"] == "Life" and shown["pipeline"] == {"name": "emitter", "version": "1.0"}

    code, out, _ = cli("session", "show", "life")
    assert "state:" in out and "idle" in out

    code, out, _ = cli("session", "delete", "life")
    assert (code, out) == (0, "deleted session 'life'\n")
    code, out, err = cli("session", "show", "life")
    assert code == 1 and out == ""
    assert err.startswith("error: SESSION_NOT_FOUND: ") and "life" in err
    assert err.count("\n") == 1


def test_create_existing_session_and_invalid_pipeline_are_one_line_errors(
    cli: Any, tmp_path: Path
) -> None:
    path = pipeline_file(tmp_path, EMIT)
    assert cli("session", "create", "twice", "--pipeline", path)[0] == 0
    code, _, err = cli("session", "create", "twice", "--pipeline", path)
    assert code == 1 and err.startswith("error: SESSION_EXISTS: ")
    bad = pipeline_file(tmp_path, "name: bad\nsteps:\n  - id: x\n    use: no.such.step\n", "b.yaml")
    code, _, err = cli("session", "create", "bad", "--pipeline", bad)
    assert code == 1 and err.startswith("error: PIPELINE_INVALID: ")
    assert "steps[0]" in err and err.count("\n") == 1
    code, _, err = cli("session", "create", "nofile", "--pipeline", str(tmp_path / "missing.yaml"))
    assert code == 1 and err.startswith("error: cannot read ")


def test_templates(cli: Any) -> None:
    body = cli_json(cli, "session", "templates")
    names = [t["name"] for t in body["templates"]]
    assert "saxs" in names
    _, out, _ = cli("session", "templates")
    assert out.splitlines()[0].split()[:3] == ["PROFILE", "REQUIRED", "OPTIONAL"]
    assert any(line.startswith("saxs") for line in out.splitlines())


class _ClosedPipe(io.StringIO):
    """A stdout whose reader went away (and which has no file descriptor, as under pytest)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_going_away_is_exit_141_without_a_message(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["session", "--url", server.url, "templates"]) == 141
    assert main(["steps"]) == 141  # a local command: the same one mapping in `cli.main`
    assert capsys.readouterr().err == ""


def test_sources_sinks_sample_and_dry_run(cli: Any, tmp_path: Path) -> None:
    assert (
        cli("session", "create", "src", "--pipeline", pipeline_file(tmp_path, NEEDS_SAMPLE))[0] == 0
    )
    plan = cli_json(cli, "session", "dry-run", "src")
    assert plan["can_process"] is False and plan["missing_required_sources"] == ["sample"]
    code, _, err = cli("session", "process", "src")
    assert code == 1 and err.startswith("error: MISSING_SOURCES: ")

    value = tmp_path / "v.json"
    value.write_text("[1, 2, 3]")
    session = cli_json(
        cli, "session", "set-source", "src", "dark", str(value), "--type", "json", "--option", "k=2"
    )
    assert session["sources"]["dark"] == {
        "type": "json",
        "location": str(value),
        "options": {"k": 2},
    }
    code, out, _ = cli("session", "set-sample", "src", str(value), "--type", "json")
    assert code == 0 and "sample set to" in out and "sample" in out
    code, out, _ = cli("session", "dry-run", "src")
    assert "can process:" in out and "yes" in out
    assert "read  (never_run)" in out

    sink = tmp_path / "out.csv"
    session = cli_json(cli, "session", "set-sink", "src", "curve", str(sink), "--type", "csv")
    assert session["sinks"]["curve"]["type"] == "csv"
    code, out, _ = cli("session", "delete-sink", "src", "curve")
    assert (code, out) == (0, "sink 'curve' deleted\n")
    assert cli_json(cli, "session", "show", "src")["sinks"] == {}
    code, out, _ = cli("session", "delete-source", "src", "dark")
    assert code == 0 and out.startswith("source 'dark' deleted")
    code, _, err = cli("session", "delete-source", "src", "dark")
    assert code == 1 and err.startswith("error: ")


def test_process_wait_runs_events_and_retained_runs(
    cli: Any, tmp_path: Path, server: LiveServer
) -> None:
    assert cli("session", "create", "emit", "--pipeline", pipeline_file(tmp_path, EMIT))[0] == 0
    code, out, err = cli("session", "process", "emit", "--wait", "--run-name", "first")
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.split()[3:4] == ["run.finished"] for line in lines)
    assert "status:" in out and "succeeded" in out

    runs = cli_json(cli, "session", "runs", "emit")["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    run_id = runs[0]["run_id"]
    # Paged: one run per page says where the older ones are; a bad page size is one line.
    assert cli("session", "process", "emit", "--wait")[0] == 0
    code, out, _ = cli("session", "runs", "emit", "--limit", "1")
    assert code == 0 and "(older runs: --before " in out and run_id not in out.split("(older")[0]
    older = cli_json(
        cli, "session", "runs", "emit", "--before", out.split("--before ")[1].strip(")\n ")
    )
    assert [r["run_id"] for r in older["runs"]] == [run_id] and older["next_before"] is None
    code, _, err = cli("session", "runs", "emit", "--limit", "0")
    assert code != 0 and err.startswith("error: ") and "limit" in err

    # `events tail --run` replays the finished run completely, in order, and exits 0.
    code, out, _ = cli("events", "tail", "--run", run_id, "--json")
    assert code == 0
    received = [json.loads(line) for line in out.splitlines()]
    on_disk = [
        json.loads(line)
        for line in (server.data_dir / "runs" / "emit" / run_id / "events.ndjson")
        .read_text()
        .splitlines()
    ]
    assert [e["id"] for e in received] == [e["id"] for e in on_disk]
    assert sum(e["type"] == "step.progress" for e in received) >= 25

    listed = cli_json(cli, "runs", "list", "--session", "emit")["runs"]
    assert [r["run_id"] for r in listed][-1] == run_id and len(listed) == 2
    code, out, _ = cli("runs", "list", "--session", "emit", "--limit", "5")
    assert run_id in out and "succeeded" in out
    assert cli_json(cli, "runs", "show", run_id)["status"] == "succeeded"
    code, out, _ = cli("runs", "show", run_id)
    assert out.startswith("run:") and "steps:" in out
    manifest = cli_json(cli, "runs", "manifest", run_id)
    assert isinstance(manifest["artifacts"], list)
    code, _, err = cli("runs", "show", "no-such-run")
    assert code == 1 and err.startswith("error: ") and "NOT_FOUND" in err


def test_failed_run_last_error_retry_and_exit_status(cli: Any, tmp_path: Path) -> None:
    assert cli("session", "create", "fail", "--pipeline", pipeline_file(tmp_path, FAIL))[0] == 0
    answer = cli_json(cli, "session", "process", "fail")
    assert answer["status"] == "queued"
    code, out, _ = cli("events", "tail", "--run", answer["run_id"])
    assert code == 2  # STEP_EXCEPTION, as `runwire run` would exit
    assert "failed" in out

    errors = cli_json(cli, "session", "last-error", "fail")
    assert errors["latest_failed_run"]["run_id"] == answer["run_id"]
    code, out, _ = cli("session", "last-error", "fail")
    assert "on purpose" in out

    code, out, _ = cli("session", "retry", answer["run_id"])
    assert code == 0 and f"retry of {answer['run_id']}" in out
    code, out, _ = cli("session", "retry", answer["run_id"], "--wait", "--json")
    assert code == 2 and json.loads(out)["retry_of"] == answer["run_id"]

    reset = cli_json(cli, "session", "reset", "fail", "--mode", "full")
    assert reset["state"] == "idle"


def test_cancel_a_running_run(cli: Any, tmp_path: Path) -> None:
    assert cli("session", "create", "nap", "--pipeline", pipeline_file(tmp_path, SLEEP))[0] == 0
    answer = cli_json(cli, "session", "process", "nap", "--idempotency-key", "k1")
    again = cli_json(cli, "session", "process", "nap", "--idempotency-key", "k1")
    assert again["run_id"] == answer["run_id"]
    code, out, _ = cli("session", "cancel", answer["run_id"])
    assert code == 0 and out.startswith(f"cancel requested for run {answer['run_id']}")
    code, _, _ = cli("events", "tail", "--run", answer["run_id"])
    assert code == 5
    code, _, err = cli("session", "cancel", answer["run_id"])
    assert code == 1 and err.startswith("error: RUN_NOT_CANCELLABLE: ")


class CuttingProxy:
    """A TCP proxy to the server that cuts its first connection abruptly after `limit` bytes
    of answer (mid-event, like a flaky network); later connections pass untouched."""

    def __init__(self, upstream: str, limit: int) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.limit = limit
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            limit = self.limit if self.connections == 0 else None
            self.connections += 1
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, limit)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(4096):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.sock.close()
        for thread in self.threads:
            thread.join(10)


def test_tail_resumes_through_a_dropped_connection_losing_and_repeating_nothing(
    cli: Any, tmp_path: Path, server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("session", "create", "drop", "--pipeline", pipeline_file(tmp_path, EMIT))[0] == 0
    run_id = cli_json(cli, "session", "process", "drop")["run_id"]
    proxy = CuttingProxy(server.url, limit=2500)
    try:
        code = main(["events", "--url", proxy.url, "tail", "--run", run_id, "--json"])
    finally:
        proxy.close()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "reconnecting" in err  # the cut happened, mid-stream
    log = server.data_dir / "runs" / "drop" / run_id / "events.ndjson"
    expected = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert [json.loads(line)["id"] for line in out.splitlines()] == expected
    assert proxy.connections >= 2


# --- the real console script ------------------------------------------------------------------


def test_console_script_server_down_is_one_line_and_nonzero() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    env = {**os.environ, "RUNWIRE_URL": url}
    done = subprocess.run(
        [str(RUNWIRE), "session", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 69
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: cannot reach {url}: ")
    assert done.stderr.count("\n") == 1


def test_console_script_unknown_session_and_bad_arguments(server: LiveServer) -> None:
    done = subprocess.run(
        [str(RUNWIRE), "session", "--url", server.url, "show", "nobody"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: SESSION_NOT_FOUND: ")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    done = subprocess.run(
        [str(RUNWIRE), "session", "process", "x", "--mode", "sideways"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 64 and "Traceback" not in done.stderr


def test_example_pipeline_artifacts_manifest_and_download(cli: Any, tmp_path: Path) -> None:
    from pipeline.demodata import write_demo_data

    paths = write_demo_data(tmp_path / "frames", count=1, shape=(64, 64))
    assert cli("session", "create", "saxs", "--example", "saxs", "--profile", "saxs")[0] == 0
    code, out, err = cli("session", "set-sample", "saxs", str(paths[0]), "--wait", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["status"] == "succeeded" and "reduced.h5" in " ".join(run["artifacts"])

    manifest = cli_json(cli, "runs", "manifest", run["run_id"])["artifacts"]
    entry = next(a for a in manifest if a["path"].endswith("reduced.h5"))
    code, out, _ = cli("runs", "manifest", run["run_id"])
    assert entry["sha256"] in out
    target = tmp_path / "got.h5"
    code, out, err = cli("runs", "download", run["run_id"], entry["path"], "-o", str(target))
    assert code == 0, err
    assert out == f"wrote {target} ({entry['size']} bytes)\n"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]
    assert not Path(str(target) + ".part").exists()
    code, _, err = cli(
        "runs", "download", run["run_id"], "../../runwire.sqlite3", "-o", str(target), "--force"
    )
    assert code == 1 and "NOT_FOUND" in err
    assert hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]  # untouched
    latest = cli_json(cli, "runs", "latest", "--session", "saxs")
    assert latest["run_id"] == run["run_id"]
    assert cli("runs", "reports", run["run_id"])[0] == 0


def test_unknown_example_and_url_from_environment(
    cli: Any,
    server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli("session", "create", "x", "--example", "no-such-example")
    assert code == 1 and err == "error: no example pipeline 'no-such-example'\n"
    monkeypatch.setenv("RUNWIRE_URL", server.url)
    assert main(["session", "list", "--json"]) == 0
    assert "sessions" in json.loads(capsys.readouterr().out)
    # --url after the command works too
    assert main(["session", "templates", "--url", server.url, "--json"]) == 0
    assert "templates" in json.loads(capsys.readouterr().out)


def test_token_is_sent_as_bearer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = LiveServer(tmp_path / "data", token="s3cret")
    try:
        assert main(["session", "--url", live.url, "list"]) == 1
        assert capsys.readouterr().err.startswith("error: UNAUTHORIZED: ")
        assert main(["session", "--url", live.url, "--token", "s3cret", "list"]) == 0
        assert capsys.readouterr().out == "no sessions\n"
    finally:
        live.stop()


def test_problem_details_are_one_line_with_every_listed_problem() -> None:
    response = httpx.Response(
        422,
        json={
            "type": "about:blank",
            "title": "Pipeline invalid",
            "status": 422,
            "code": "PIPELINE_INVALID",
            "detail": "2 problems\nin pipeline",
            "errors": [
                {"path": "steps[2].inputs.b", "message": "never provided"},
                {"path": "steps[0].use", "message": "unknown step 'x'"},
            ],
        },
    )
    assert str(problem_error(response)) == (
        "PIPELINE_INVALID: 2 problems in pipeline (steps[2].inputs.b: never provided; "
        "steps[0].use: unknown step 'x')"
    )
    full = httpx.Response(
        429, headers={"Retry-After": "2"}, json={"code": "QUEUE_FULL", "detail": "queue is full"}
    )
    assert str(problem_error(full)) == "QUEUE_FULL: queue is full (retry after 2 s)"
    assert str(problem_error(httpx.Response(502, text="<html>"))) == "HTTP 502: Bad Gateway"


def test_human_formats_of_durations_manifests_and_plans() -> None:
    assert [duration(x) for x in (0.0123, 12.34, 123, 7320, None)] == [
        "0.012s",
        "12.3s",
        "2m03s",
        "2h02m",
        "-",
    ]
    assert manifest_table({"artifacts": None, "compatibility": "no-manifest"}) == (
        "no manifest (no-manifest)"
    )
    assert manifest_table({"artifacts": []}) == "no artifacts"
    plan = dry_run_text(
        {
            "effective_mode": "partial",
            "dirty_steps": ["reduce.bin"],
            "skipped_steps": ["geometry"],
            "reasons": {"reduce.bin": ["source_changed:sample", "upstream_dirty:read"]},
            "missing_required_sources": [],
            "warnings": ["cache is cold"],
            "can_process": True,
        }
    ).splitlines()
    assert "  reduce.bin  (source_changed:sample, upstream_dirty:read)" in plan
    assert "warning: cache is cold" in plan
    run = run_detail(
        {
            "run_id": "r1",
            "status": "failed",
            "error": {"code": "STEP_FAILED", "message": "bad\nframe", "failed_step": "read"},
            "step_states": {"read": {"status": "failed", "duration_s": 0.5, "error": "bad"}},
        }
    )
    assert "STEP_FAILED in read: bad frame" in run
    assert "  read  failed  0.500s    bad" in run.splitlines()
