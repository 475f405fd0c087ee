"""Retained runs over HTTP (in-process): listing, filters, paging, summaries, reports,
manifests and artifact downloads, all rebuilt from run directories on disk."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import h5py
import httpx
import pytest
from sstore_rundirs import retained_app, write_run

from service.contract.records import RunStatus
from service.http.state import service_state
from service.runtime.config import Config
from service.storage.retained import RetainedRuns, media_type_for


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    write_run(runs, "a", "run-01", queued_utc="2026-01-01T00:00:01Z", h5=True)
    write_run(
        runs,
        "a",
        "run-02",
        queued_utc="2026-01-01T00:00:02Z",
        status=RunStatus.FAILED,
        artifacts={"curves/c.csv": b"q,i\n1,2\n"},
    )
    write_run(runs, "b", "run-03", queued_utc="2026-01-01T00:00:03Z", manifest=False)
    write_run(runs, "b", "run-04", queued_utc="2026-01-01T00:00:04Z", status=None)  # running
    (runs / "a" / "events.ndjson").write_bytes(b"")  # session-level log: not a run
    return runs


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(runs_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=retained_app(runs_dir))
    async with httpx.AsyncClient(transport=transport, base_url="http://runwire.test") as c:
        yield c


def ids(body: dict[str, object]) -> list[str]:
    return [r["run_id"] for r in body["runs"]]  # type: ignore[attr-defined]


async def test_listing_is_newest_first_and_equals_run_directories(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.get("/v1/retained-runs")).json()
    assert ids(body) == ["run-04", "run-03", "run-02", "run-01"]
    assert body["next_before"] is None
    running = body["runs"][0]
    assert running["status"] == "queued"  # no summary and no events yet
    assert running["session_id"] == "b"
    assert running["queued_utc"] == "2026-01-01T00:00:04Z"


async def test_filters_and_paging(client: httpx.AsyncClient) -> None:
    assert ids((await client.get("/v1/retained-runs?session_id=a")).json()) == ["run-02", "run-01"]
    assert ids((await client.get("/v1/retained-runs?status=failed")).json()) == ["run-02"]
    assert ids((await client.get("/v1/retained-runs?session_id=zz")).json()) == []
    page = (await client.get("/v1/retained-runs?limit=3")).json()
    assert ids(page) == ["run-04", "run-03", "run-02"]
    assert page["next_before"] == "run-02"
    rest = (await client.get(f"/v1/retained-runs?limit=3&before={page['next_before']}")).json()
    assert ids(rest) == ["run-01"]
    assert rest["next_before"] is None


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=-1", "limit=abc", "limit=501", "status=bogus", "limit=\uff11"]
)
async def test_bad_query_is_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/v1/retained-runs?{query}")
    assert response.status_code == 422
    assert response.json()["code"] == "INVALID_REQUEST"


async def test_unknown_before_is_run_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/retained-runs?before=nope")
    assert response.status_code == 404
    assert response.json()["code"] == "RUN_NOT_FOUND"


async def test_latest(client: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await client.get("/v1/retained-runs/latest")).json()["run_id"] == "run-04"
    assert (await client.get("/v1/retained-runs/latest?session_id=a")).json()["run_id"] == "run-02"
    missing = await client.get("/v1/retained-runs/latest?session_id=nobody")
    assert missing.status_code == 404
    assert missing.json()["code"] == "RUN_NOT_FOUND"


async def test_summary_is_summary_json(client: httpx.AsyncClient, runs_dir: Path) -> None:
    body = (await client.get("/v1/retained-runs/run-02")).json()
    assert body == json.loads((runs_dir / "a" / "run-02" / "summary.json").read_text())
    assert body["status"] == "failed"
    for bad in ("nope", "%2e%2e", "a", "run-01%00"):
        response = await client.get(f"/v1/retained-runs/{bad}")
        assert response.status_code == 404, bad
        assert response.json()["code"] == "RUN_NOT_FOUND"


async def test_summary_rewritten_on_disk_is_seen(client: httpx.AsyncClient, runs_dir: Path) -> None:
    assert (await client.get("/v1/retained-runs/run-04")).json()["status"] == "queued"
    (runs_dir / "b" / "run-04" / "events.ndjson").write_bytes(b'{"seq": 1}\n')
    assert (await client.get("/v1/retained-runs/run-04")).json()["status"] == "running"
    write_run(runs_dir, "b", "run-05", queued_utc="2026-01-01T00:00:05Z")
    summary = runs_dir / "b" / "run-04" / "summary.json"
    summary.write_text(json.dumps({"run_id": "run-04", "status": "interrupted"}))
    os.utime(summary, ns=(1, 1))  # a rewrite always changes mtime or size; force mtime here
    assert (await client.get("/v1/retained-runs/run-04")).json()["status"] == "interrupted"
    summary.write_text(json.dumps({"run_id": "run-04", "status": "cancelled"}))
    assert (await client.get("/v1/retained-runs/run-04")).json()["status"] == "cancelled"
    assert ids((await client.get("/v1/retained-runs?limit=1")).json()) == ["run-05"]


async def test_reports_and_report_files(client: httpx.AsyncClient, runs_dir: Path) -> None:
    (runs_dir / "a" / "run-01" / "events.ndjson").write_bytes(b'{"seq": 7}\n')
    body = (await client.get("/v1/retained-runs/run-01/reports")).json()
    assert body["run_id"] == "run-01"
    assert body["session_id"] == "a"
    assert body["status"] == "succeeded"
    for key, name in (
        ("summary", "summary.json"),
        ("request", "run-request.json"),
        ("events", "events.ndjson"),
    ):
        entry = body[key]
        assert entry["path"] == name
        download = await client.get(entry["url"])
        assert download.status_code == 200
        assert download.content == (runs_dir / "a" / "run-01" / name).read_bytes()
        assert entry["size"] == len(download.content)
    assert (
        (await client.get(body["events"]["url"]))
        .headers["content-type"]
        .startswith("application/x-ndjson")
    )
    assert (await client.get("/v1/retained-runs/run-02/reports")).json()["events"] is None
    for name in ("manifest.json", "%2e%2e", "artifacts"):
        response = await client.get(f"/v1/retained-runs/run-01/reports/{name}")
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"


async def test_manifest_and_artifact_download(client: httpx.AsyncClient, runs_dir: Path) -> None:
    manifest = (await client.get("/v1/retained-runs/run-02/artifact-manifest")).json()
    [entry] = manifest["artifacts"]
    assert entry["path"] == "curves/c.csv"
    response = await client.get(f"/v1/retained-runs/run-02/artifacts/{entry['path']}")
    assert response.status_code == 200
    assert response.content == b"q,i\n1,2\n"
    assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
    assert response.headers["content-type"].startswith("text/csv")

    h5_entry = (await client.get("/v1/retained-runs/run-01/artifact-manifest")).json()["artifacts"][
        0
    ]
    data = await client.get(f"/v1/retained-runs/run-01/artifacts/{h5_entry['path']}")
    assert data.headers["content-type"] == "application/x-hdf5"
    with h5py.File(io.BytesIO(data.content), "r") as f:
        assert list(f["/sasentry01/sasdata01/I"][:3]) == [0.0, 1.0, 2.0]


async def test_run_without_manifest_is_marked(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/retained-runs/run-03/artifact-manifest")
    assert response.status_code == 200
    assert response.json() == {"artifacts": None, "compatibility": "no-manifest"}


async def test_missing_artifact_and_unknown_run_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/retained-runs/run-01/artifacts/nope.h5")).json()[
        "code"
    ] == "NOT_FOUND"
    assert (await client.get("/v1/retained-runs/run-01/artifacts/curves")).status_code == 404
    assert (await client.get("/v1/retained-runs/zz/artifacts/x")).json()["code"] == "RUN_NOT_FOUND"
    assert (await client.get("/v1/retained-runs/zz/artifact-manifest")).status_code == 404


def test_missing_runs_dir_lists_nothing_and_an_empty_run_dir_is_listed(tmp_path: Path) -> None:
    assert RetainedRuns(tmp_path / "does-not-exist").list() == []
    (tmp_path / "runs" / "s" / "just-made").mkdir(parents=True)  # nothing written in it yet
    (tmp_path / "runs" / "s" / ".hidden").mkdir()  # not a run id: ignored
    [run] = RetainedRuns(tmp_path / "runs").list()
    assert (run["run_id"], run["session_id"], run["status"]) == ("just-made", "s", "queued")


def test_listing_forgets_removed_run_directories(runs_dir: Path) -> None:
    retained = RetainedRuns(runs_dir)
    assert len(retained.list()) == 4
    for path in sorted((runs_dir / "a" / "run-01").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (runs_dir / "a" / "run-01").rmdir()
    assert [r["run_id"] for r in retained.list()] == ["run-04", "run-03", "run-02"]


def test_media_types() -> None:
    assert media_type_for("x/reduced.h5") == "application/x-hdf5"
    assert media_type_for("c.CSV") == "text/csv"
    assert media_type_for("plot.png") == "image/png"
    assert media_type_for("blob.weird") == "application/octet-stream"


def test_unfinished_lists_run_directories_without_summary(runs_dir: Path) -> None:
    retained = RetainedRuns(runs_dir)
    assert retained.unfinished() == [("b", "run-04")]
    write_run(runs_dir, "c", "run-00", queued_utc="2025-12-31T00:00:00Z", status=None)
    assert retained.unfinished() == [("c", "run-00"), ("b", "run-04")]


async def test_routes_build_retained_runs_from_the_config_when_missing(runs_dir: Path) -> None:
    app = retained_app(runs_dir)
    state = service_state(app)
    state.retained = None
    state.config = Config(data_dir=runs_dir.parent)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://runwire.test") as c:
        assert ids((await c.get("/v1/retained-runs?session_id=a")).json()) == ["run-02", "run-01"]
