"""Contract audit regressions (CONTRACT sections 1, 4, 6, 8): each test pins a discrepancy that
was found by using the running service and the CLI as a user's script would, and fixed.

Plain HTTP runs in-process over ASGI (`api`); the CLI tests use a real server (`live_server`)
because the client speaks HTTP over sockets.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import NEEDS_SAMPLE, Api, LiveServer, assert_problem, session_body

from service.cli import build_parser, main
from service.cli.errors import CliError
from service.cli.serve import build_config
from service.http.state import service_state

pytestmark = pytest.mark.anyio


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/sessions", {"GET", "POST"}),
        ("PATCH", "/v1/sessions/s1", {"GET", "DELETE"}),
        ("GET", "/v1/sessions/s1/sources", {"PUT"}),
        ("PUT", "/v1/runs/r1/cancel", {"POST"}),
    ],
)
async def test_405_allow_header_lists_every_method_of_the_resource(
    api: Api, method: str, path: str, allowed: set[str]
) -> None:
    # Each route carries one method; Starlette named only the first route that matched, so a
    # client told `Allow: POST` for /v1/sessions never learnt that GET lists them.
    headers = {"content-type": "application/json"}  # past the CSRF check, to the router
    response = await api.client.request(method, path, headers=headers)
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    methods = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= methods
    assert method not in methods


async def test_415_without_content_type_says_so(api: Api) -> None:
    response = await api.client.post(
        "/v1/sessions", content=b'{"pipeline": {"yaml_text": "name: x"}}'
    )
    body = assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "None" not in body["detail"]
    assert "Content-Type" in body["detail"]


@pytest.mark.parametrize(
    "path", ["/v1/sessions", "/v1/sessions/s1/reset", "/v1/sessions/s1/sources/patch"]
)
async def test_required_body_missing_is_a_clear_422(api: Api, path: str) -> None:
    created = await api.client.post("/v1/sessions", json=session_body("s1"))
    assert created.status_code == 201, created.text
    response = await api.client.post(path, headers={"content-type": "application/json"})
    body = assert_problem(response, 422, "INVALID_REQUEST")
    assert "required" in body["detail"]
    assert "truncated" not in body["detail"]
    assert body["errors"] == [{"path": "$", "message": "request body is empty"}]


async def test_process_body_stays_optional(api: Api) -> None:
    created = await api.client.post("/v1/sessions", json=session_body("s1"))
    assert created.status_code == 201, created.text
    response = await api.client.post("/v1/sessions/s1/process", json={})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/runs/{response.json()['run_id']}"
    dry = await api.client.post("/v1/sessions/s1/process/dry-run", json={})
    assert dry.status_code == 200, dry.text


# --- CLI ----------------------------------------------------------------------------------------


def _cli(live: LiveServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_right_after_the_group_name(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = live_server.base_url
    httpx.post(f"{url}/v1/sessions", json=session_body("j1"), timeout=10).raise_for_status()
    # --json sits with --url/--token right after the group name, or after the command.
    for argv in (
        ("session", "--url", url, "--json", "show", "j1"),
        ("session", "--json", "--url", url, "show", "j1"),
        ("session", "--url", url, "show", "j1", "--json"),
    ):
        code, out, err = _cli(live_server, capsys, *argv)
        assert code == 0, err
        assert json.loads(out)["session_id"] == "j1"
    code, out, err = _cli(live_server, capsys, "session", "--url", url, "--json", "list")
    assert code == 0, err
    assert [s["session_id"] for s in json.loads(out)["sessions"]] == ["j1"]
    code, out, err = _cli(live_server, capsys, "runs", "--url", url, "--json", "list")
    assert code == 0, err
    assert json.loads(out)["runs"] == []
    # Without --json anywhere the human form is printed.
    code, out, err = _cli(live_server, capsys, "session", "--url", url, "show", "j1")
    assert code == 0, err
    assert out.startswith("session:")


def test_cli_relative_locations_name_the_users_files(
    live_server: LiveServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server resolves locations against its own working directory; the CLI must send the
    # file the user means, i.e. relative to the shell's directory.
    url = live_server.base_url
    body: dict[str, Any] = {"session_id": "rel", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    httpx.post(f"{url}/v1/sessions", json=body, timeout=10).raise_for_status()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text("1")
    (tmp_path / "in" / "b.json").write_text("2")
    monkeypatch.chdir(tmp_path)  # the user's shell directory (not our code under test)

    code, out, err = _cli(
        live_server, capsys, "session", "--url", url, "--json",
        "set-source", "rel", "sample", "in/a.json", "--type", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["sources"]["sample"]["location"] == str(tmp_path / "in" / "a.json")

    code, out, err = _cli(
        live_server, capsys, "session", "--url", url, "--json",
        "set-sample", "rel", "in/b.json", "--type", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["sources"]["sample"]["location"] == str(tmp_path / "in" / "b.json")

    code, out, err = _cli(
        live_server, capsys, "session", "--url", url, "--json",
        "set-sink", "rel", "curve", "out.csv", "--type", "csv",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["sinks"]["curve"]["location"] == str(tmp_path / "out.csv")

    run_ids = []
    for _ in range(2):
        code, out, err = _cli(
            live_server, capsys, "session", "--url", url, "--json",
            "set-sample", "rel", "in/a.json", "--type", "json", "--process",
            "--idempotency-key", "frame-1",
        )  # fmt: skip
        assert code == 0, err
        run_ids.append(json.loads(out)["run_id"])
    assert run_ids[0] == run_ids[1]


def test_steps_and_examples_have_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["steps", "--json", "diag.sleep"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["name"] for s in steps] == ["diag.sleep"]
    assert {p["name"] for p in steps[0]["params"]} == {"seconds", "ticks"}
    assert main(["steps", "--json"]) == 0
    names = {s["name"] for s in json.loads(capsys.readouterr().out)["steps"]}
    assert {"diag.sleep", "diag.fail", "diag.emit", "hdf5.read"} <= names
    assert main(["examples", "--json"]) == 0
    examples = json.loads(capsys.readouterr().out)["examples"]
    assert "saxs" in [e["name"] for e in examples]


async def test_pipeline_file_over_1_mib_is_413_like_an_inline_one(api: Api, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * (1 << 20) + "\nsteps: []\n")
    response = await api.client.post(
        "/v1/sessions", json={"session_id": "big", "pipeline": {"path": str(big)}}
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert (await api.client.get("/v1/sessions/big")).status_code == 404


async def test_sample_with_process_honours_idempotency_key(api: Api, tmp_path: Path) -> None:
    body: dict[str, Any] = {"session_id": "inst", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    first_file, second_file = tmp_path / "a.json", tmp_path / "b.json"
    first_file.write_text("1")
    second_file.write_text("2")
    sample = {"location": str(first_file), "type": "json", "process": True}
    headers = {"Idempotency-Key": "frame-0001"}
    first = await api.client.post("/v1/sessions/inst/sample", json=sample, headers=headers)
    assert first.status_code == 202, first.text
    # The instrument re-sends after a lost answer: same run, no second run queued.
    again = await api.client.post("/v1/sessions/inst/sample", json=sample, headers=headers)
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers["location"] == first.headers["location"]
    # Even a different body with the same key changes nothing: the key names the first submit.
    other = {**sample, "location": str(second_file)}
    third = await api.client.post("/v1/sessions/inst/sample", json=other, headers=headers)
    assert third.json()["run_id"] == first.json()["run_id"]
    runs = (await api.client.get("/v1/sessions/inst/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [first.json()["run_id"]]
    session = (await api.client.get("/v1/sessions/inst")).json()
    assert session["sources"]["sample"]["location"] == str(first_file)
    # A new key is a new submit.
    fresh = await api.client.post(
        "/v1/sessions/inst/sample", json=other, headers={"Idempotency-Key": "frame-0002"}
    )
    assert fresh.status_code == 202 and fresh.json()["run_id"] != first.json()["run_id"]
    too_long = await api.client.post(
        "/v1/sessions/inst/sample", json=sample, headers={"Idempotency-Key": "k" * 201}
    )
    assert_problem(too_long, 422, "INVALID_REQUEST")


def test_cli_url_may_include_the_api_base_path(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The HTTP docs show every path under /v1; a user pasting `http://host:port/v1` as --url
    # must reach the same server, not get NOT_FOUND for `/v1/v1/sessions`.
    for url in (live_server.base_url + "/v1", live_server.base_url + "/v1/"):
        code, out, err = _cli(live_server, capsys, "session", "--url", url, "--json", "list")
        assert code == 0, err
        assert json.loads(out) == {"sessions": []}


# --- runwire serve --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env"), [(["--port", "70000"], {}), ([], {"RUNWIRE_PORT": "65536"})]
)
def test_serve_port_out_of_range_is_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(CliError) as info:
        build_config(build_parser().parse_args(["serve", *argv]), env)
    assert info.value.exit_code == 64
    assert "65535" in str(info.value)


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # Before: uvicorn's log record and its exit status 3 (and a traceback for a bad port).
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "d")],
            env={**os.environ, "RUNWIRE_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot bind 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "d").exists()  # nothing was created for a server that never ran


async def test_readiness_is_503_unavailable_when_the_store_cannot_be_written(api: Api) -> None:
    ready = await api.client.get("/v1/readiness")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    # A store that can no longer be written (closed here; a failed disk or a read-only file
    # behaves the same for the probe): load balancers must stop sending work.
    service_state(api.app).store.close()
    response = await api.client.get("/v1/readiness")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["ready"]) == ("unavailable", False)
    assert set(body["metrics"]) == {
        "session_count", "active_run_count", "queued_run_count", "queue_capacity",
        "error_session_count", "error_session_ids", "subscriber_count", "last_updated_utc",
    }  # fmt: skip
    assert (await api.client.get("/v1/health")).json() == {"status": "ok"}


async def test_dry_run_refuses_what_process_refuses(api: Api, tmp_path: Path) -> None:
    sample = tmp_path / "a.json"
    sample.write_text("1")
    body: dict[str, Any] = {"session_id": "dr", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    source = {"ref": "sample", "type": "json", "location": str(sample)}
    assert (await api.client.post("/v1/sessions/dr/sources/patch", json=source)).status_code == 200
    request = {"changed_sources": ["nosuch"]}
    # "Same body": before, the dry run answered 200 with can_process true and a warning.
    for path in ("/v1/sessions/dr/process/dry-run", "/v1/sessions/dr/process"):
        problem = assert_problem(await api.client.post(path, json=request), 422, "INVALID_REQUEST")
        assert problem["errors"] == [
            {"path": "$.changed_sources", "message": "unknown ref 'nosuch'"}
        ]
    plan = await api.client.post(
        "/v1/sessions/dr/process/dry-run", json={"changed_sources": ["sample"]}
    )
    assert plan.status_code == 200 and plan.json()["can_process"] is True
    assert (await api.client.get("/v1/sessions/dr/runs")).json()["runs"] == []


async def test_dry_run_says_cannot_process_when_a_source_file_is_gone(
    api: Api, tmp_path: Path
) -> None:
    sample = tmp_path / "a.json"
    sample.write_text("1")
    body: dict[str, Any] = {"session_id": "gone", "pipeline": {"yaml_text": NEEDS_SAMPLE}}
    assert (await api.client.post("/v1/sessions", json=body)).status_code == 201
    source = {"ref": "sample", "type": "json", "location": str(sample)}
    assert (
        await api.client.post("/v1/sessions/gone/sources/patch", json=source)
    ).status_code == 200
    sample.unlink()
    plan = await api.client.post("/v1/sessions/gone/process/dry-run", json={})
    assert plan.status_code == 200, plan.text
    assert plan.json()["can_process"] is False
    assert any(str(sample) in warning for warning in plan.json()["warnings"])
    refused = await api.client.post("/v1/sessions/gone/process", json={})
    assert str(sample) in assert_problem(refused, 422, "INVALID_REQUEST")["detail"]


def test_cli_pipeline_file_that_is_not_text_is_one_line(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    binary = tmp_path / "frame.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    code, _, err = _cli(
        live_server, capsys, "session", "--url", live_server.base_url,
        "create", "b1", "--pipeline", str(binary),
    )  # fmt: skip
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: cannot read {binary}: not UTF-8 text (invalid start byte)"
    ]
    assert "Traceback" not in err


def _umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no /proc/self/status")


def test_sink_files_are_readable_like_any_file_the_user_writes(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from service.contract.records import SourceRecord
    from service.runtime.sinks import write_sinks

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with h5py.File(artifacts / "reduced.h5", "w") as f:
        for name in ("Q", "I", "Idev"):
            f[f"/sasentry01/sasdata01/{name}"] = np.linspace(1.0, 2.0, 5)
    out = tmp_path / "out"
    out.mkdir()
    sinks = {
        "nx": SourceRecord(type="hdf5", location=str(out / "curve.h5")),
        "table": SourceRecord(type="csv", location=str(out / "curve.csv")),
    }
    written = write_sinks(
        sinks, artifacts_dir=artifacts, artifacts=["reduced.h5"],
        session_id="s", run_id="r", write_roots=(),
    )  # fmt: skip
    assert sorted(written) == [str(out / "curve.csv"), str(out / "curve.h5")]
    # Before: 0600 from tempfile.mkstemp, so the beamline group could not read the results.
    expected = 0o666 & ~_umask()
    for path in written:
        assert Path(path).stat().st_mode & 0o777 == expected
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp left
