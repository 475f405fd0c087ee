"""`runwire serve` as a real process: settings from flags and environment, refusal to bind
beyond loopback without a token, and SIGTERM -> orderly shutdown with exit status 0."""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.cli import build_parser
from service.cli.errors import CliError
from service.cli.serve import build_config, is_loopback, log_level

pytestmark = pytest.mark.slow
RUNWIRE = [sys.executable, "-m", "service.cli"]
STARTUP_TIMEOUT_S = 30.0


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_win_over_environment_which_wins_over_defaults(tmp_path: Path) -> None:
    env = {"RUNWIRE_PORT": "9001", "RUNWIRE_WORKERS": "4", "RUNWIRE_DATA_DIR": str(tmp_path)}
    config = build_config(parse("--port", "9002"), env)
    assert config.port == 9002
    assert config.workers == 4
    assert config.data_dir == tmp_path
    assert config.queue_size == 64 and config.replay_size == 1000  # contract defaults
    assert config.shutdown_grace == 10.0


def test_every_setting_has_flag_and_environment_variable(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    env = {
        "RUNWIRE_HOST": "::1",
        "RUNWIRE_QUEUE_SIZE": "5",
        "RUNWIRE_REPLAY_SIZE": "7",
        "RUNWIRE_TOKEN": "t",
        "RUNWIRE_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "RUNWIRE_ALLOWED_HOSTS": "pc.local, proxy.local",
        "RUNWIRE_SHUTDOWN_GRACE": "1.5",
        "RUNWIRE_READ_ROOT": f"{a}{os.pathsep}{b}",
        "RUNWIRE_DEMO": "1",
    }
    config = build_config(parse(), env)
    assert config.host == "::1" and config.queue_size == 5 and config.replay_size == 7
    assert config.token == "t"
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.allowed_hosts == ("pc.local", "proxy.local")
    assert config.shutdown_grace == 1.5
    assert config.read_roots == (a.resolve(), b.resolve())
    assert config.demo is True
    flags = parse("--write-root", str(a), "--write-root", str(b), "--demo")
    config = build_config(flags, {})
    assert config.write_roots == (a.resolve(), b.resolve()) and config.demo is True


def test_bad_numbers_are_usage_errors() -> None:
    with pytest.raises(CliError) as info:
        build_config(parse(), {"RUNWIRE_PORT": "eighty"})
    assert info.value.exit_code == 64 and "RUNWIRE_PORT" in str(info.value)
    with pytest.raises(CliError):
        build_config(parse("--workers", "0"), {})


def test_log_level_from_flag_or_environment_and_a_bad_one_is_a_usage_error() -> None:
    assert log_level(parse(), {}) == "info"
    assert log_level(parse(), {"RUNWIRE_LOG_LEVEL": "DEBUG"}) == "debug"
    assert log_level(parse("--log-level", "error"), {"RUNWIRE_LOG_LEVEL": "debug"}) == "error"
    with pytest.raises(CliError) as info:
        log_level(parse(), {"RUNWIRE_LOG_LEVEL": "verbose"})
    assert info.value.exit_code == 64 and "RUNWIRE_LOG_LEVEL" in str(info.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.3.4.5", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("beamline.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--host", "0.0.0.0"], {}), ([], {"RUNWIRE_HOST": "192.0.2.1"})],
)
def test_non_loopback_without_token_is_refused(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [*RUNWIRE, "serve", "--data-dir", str(tmp_path), *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert proc.returncode == 64
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: refusing to bind") and "token" in lines[0]
    assert not (tmp_path / "runwire.sqlite3").exists()  # nothing started


class ServeProcess:
    """`runwire serve` on a free port; stderr lines are collected by a reader thread."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*RUNWIRE, "serve", "--data-dir", str(data_dir), "--port", "0", *extra],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.lines.put(line)
        self.lines.put("")  # EOF

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        while True:
            line = self.lines.get(timeout=timeout)
            self.log.append(line)
            if not line:
                raise AssertionError("process ended:\n" + "".join(self.log))
            if match := regex.search(line):
                return match

    def rest_of_log(self) -> str:
        while True:
            try:
                line = self.lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                break
            if not line:
                break
            self.log.append(line)
        return "".join(self.log)


@contextmanager
def serving(data_dir: Path, *extra: str) -> Iterator[tuple[ServeProcess, str]]:
    server = ServeProcess(data_dir, *extra)
    try:
        match = server.wait_for(r"Uvicorn running on (http://\S+)")
        yield server, match.group(1)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.reader.join(STARTUP_TIMEOUT_S)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_in_order_and_exits_0(tmp_path: Path, signum: int) -> None:
    with serving(tmp_path / "data", "--shutdown-grace", "1") as (server, url):
        assert httpx.get(f"{url}/v1/health", timeout=10).json() == {"status": "ok"}
        server.proc.send_signal(signum)
        assert server.proc.wait(timeout=STARTUP_TIMEOUT_S) == 0
        log = server.rest_of_log()
    assert "Traceback" not in log
    assert "Finished server process" in log
    assert (tmp_path / "data" / "runwire.sqlite3").exists()


def test_sigterm_cancels_runs_after_grace_and_closes_websockets_1001(tmp_path: Path) -> None:
    import json

    from websockets.sync.client import connect

    body = {
        "session_id": "s",
        "pipeline": {
            "yaml_text": "name: t\nsteps:\n"
            "  - {id: nap, use: diag.sleep, params: {seconds: 60, ticks: 600}}\n"
        },
    }
    with serving(tmp_path / "data", "--shutdown-grace", "0.5") as (server, url):
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/v1/sessions", json=body).status_code == 201
            run_id = client.post("/v1/sessions/s/process", json={}).json()["run_id"]
            with client.stream("GET", f"/v1/runs/{run_id}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("event:") and "step.progress" in line:
                        break  # the run is executing its step
        ws_url = "ws" + url.removeprefix("http") + "/v1/ws"
        with connect(ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"op": "subscribe", "id": "1", "sessions": "*"}))
            assert json.loads(ws.recv(timeout=10))["ok"] is True
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(Exception) as info:
                while True:
                    ws.recv(timeout=STARTUP_TIMEOUT_S)
            assert ws.close_code == 1001, info.value
        assert server.proc.wait(timeout=STARTUP_TIMEOUT_S) == 0
        log = server.rest_of_log()
    assert "Traceback" not in log
    summary = json.loads(
        next((tmp_path / "data" / "runs" / "s").glob("*/summary.json")).read_text()
    )
    assert summary["run_id"] == run_id and summary["status"] == "cancelled"


def test_unusable_data_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "runwire.sqlite3").mkdir()  # a directory where the database file belongs
    proc = subprocess.run(
        [*RUNWIRE, "serve", "--data-dir", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot start: ") and "runwire.sqlite3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_feeds_session_demo_so_events_flow_at_once(tmp_path: Path) -> None:
    import json

    with serving(tmp_path / "data", "--demo", "--shutdown-grace", "1") as (server, url):
        finished: dict[str, object] | None = None
        with (
            httpx.Client(base_url=url, timeout=STARTUP_TIMEOUT_S) as client,
            client.stream("GET", "/v1/events", params={"sessions": "demo"}) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event["type"] == "run.finished":
                        finished = event
                        break
        assert finished is not None and finished["sessionid"] == "demo"
        assert finished["data"]["status"] == "succeeded"  # type: ignore[index]
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=STARTUP_TIMEOUT_S) == 0


def test_allowed_hosts_flag_wins_over_environment() -> None:
    env = {"RUNWIRE_ALLOWED_HOSTS": "env.local"}
    assert build_config(parse("--allowed-hosts", "a.local,b.local"), env).allowed_hosts == (
        "a.local",
        "b.local",
    )
    assert build_config(parse(), env).allowed_hosts == ("env.local",)


def test_broker_url_from_flag_or_environment_and_a_bad_one_is_a_usage_error() -> None:
    assert build_config(parse(), {}).broker is None
    env = {"RUNWIRE_BROKER": "redis://10.0.0.5:6379/2"}
    assert build_config(parse(), env).broker == "redis://10.0.0.5:6379/2"
    assert build_config(parse("--broker", "redis://r:1/0"), env).broker == "redis://r:1/0"
    for bad in ("http://r:6379/0", "redis://:6379", "redis://r:port/0", "redis://r:6379/x"):
        with pytest.raises(CliError) as info:
            build_config(parse("--broker", bad), {})
        assert info.value.exit_code == 64 and "--broker" in str(info.value)


# --- settings declared once (service.runtime.config) -------------------------------------------


def test_every_config_field_has_exactly_one_setting_whose_default_is_the_fields() -> None:
    import dataclasses

    from service.runtime.config import SETTINGS, Config

    fields = dataclasses.fields(Config)
    assert [s.name for s in SETTINGS] == [f.name for f in fields]
    assert all(s.default == f.default for s, f in zip(SETTINGS, fields, strict=True))
    flags = [s.flag for s in SETTINGS if s.flag is not None]
    envs = [s.env for s in SETTINGS if s.env is not None]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    # Contract section 1: every flag has an environment variable, and a default built from
    # nothing is the table's defaults.
    assert all(s.env is not None for s in SETTINGS if s.flag is not None)
    assert build_config(parse(), {}) == Config()


def test_serve_help_lists_every_flag_with_its_environment_variable() -> None:
    from service.cli.serve import SERVE_SETTINGS

    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps help lines
    flagged = [s for s in SERVE_SETTINGS if s.flag is not None]
    assert len(flagged) >= 19  # every flag serve had when the table was made
    for item in flagged:
        assert item.env is not None
        assert re.search(rf"{item.flag}\b.*?\b{item.env}\b", text), (item.flag, item.env)


def test_a_bad_environment_value_names_its_variable_and_a_bad_flag_value_its_flag() -> None:
    with pytest.raises(CliError) as info:
        build_config(parse(), {"RUNWIRE_SHUTDOWN_GRACE": "soon"})
    assert info.value.exit_code == 64
    assert str(info.value) == "RUNWIRE_SHUTDOWN_GRACE: expected a number, got 'soon'"
    with pytest.raises(CliError) as info:
        build_config(parse("--workers", "0"), {})
    assert str(info.value) == "--workers must be at least 1, got 0"
    with pytest.raises(CliError) as info:
        build_config(parse(), {"RUNWIRE_CACHE_MEMORY": "lots"})
    assert info.value.exit_code == 64 and str(info.value).startswith("--cache-memory: ")
    # Empty variables count as unset; switches read 1/true/yes/on.
    env = {"RUNWIRE_PORT": "", "RUNWIRE_ALLOW_PACKAGES": "yes", "RUNWIRE_DEMO": "0"}
    config = build_config(parse(), env)
    assert (config.port, config.allow_packages, config.demo) == (8000, True, False)


def test_a_command_builds_its_parser_from_a_subset_of_the_table_plus_its_own() -> None:
    """How `runwire worker` (or any new command) declares its flags: shared settings by name,
    its own as `Setting`s, one parser and one resolution for both."""
    from service.cli.settings import add_setting_flags, settings_from
    from service.runtime.config import SETTINGS_BY_NAME, Setting

    threads = Setting("threads", 2, flag="--threads", env="RUNWIRE_THREADS", help="threads",
                      number=int, minimum=1)  # fmt: skip
    table = (SETTINGS_BY_NAME["broker"], SETTINGS_BY_NAME["data_dir"], threads)
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, table)
    args = parser.parse_args(["--threads", "3"])
    values = settings_from(args, {"RUNWIRE_BROKER": "redis://r:6379/0"}, table)
    assert values == {"broker": "redis://r:6379/0", "threads": 3}
    assert "--port" not in parser.format_help()
    with pytest.raises(CliError) as info:
        settings_from(parser.parse_args([]), {"RUNWIRE_THREADS": "0"}, table)
    assert str(info.value) == "--threads must be at least 1, got 0"


def test_the_settings_table_in_the_docs_names_every_flag_with_its_variable() -> None:
    from service.cli.serve import SERVE_SETTINGS

    docs = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
    rows = [line for line in docs.read_text().splitlines() if line.startswith("| `--")]
    for item in SERVE_SETTINGS:
        if item.flag is not None:
            assert any(f"`{item.flag}" in row and f"`{item.env}" in row for row in rows), item.flag
