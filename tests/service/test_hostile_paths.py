"""Paths that are not regular files (a FIFO, `/dev/zero`) are refused at once with a 422, and
never stall the server's one I/O thread: a write of another session, sent while the hostile
request is being answered, still completes. A real `runwire serve` process, so that a
regression (an open blocking forever) kills the server, not the test run."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sstore_server import DIAG_PIPELINE, ServeProcess

from pipeline.safeio import (
    FileTooLargeError,
    NotRegularFileError,
    open_regular,
    read_regular_bytes,
)

pytestmark = pytest.mark.slow

# Generous: a prompt answer takes milliseconds, but the machine is shared and slow. What is
# tested is "answers at all": on a blocking open the request never returns.
ANSWER_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("hostile") / "data")
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "frames.h5"
    os.mkfifo(path)
    return path


def _client(server: ServeProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/v1", timeout=ANSWER_TIMEOUT_S)


def _concurrently(server: ServeProcess, hostile: dict[str, object], sid: str) -> httpx.Response:
    """Send the hostile request and, at the same moment, create another session (a store
    write through the I/O thread). Both must be answered; returns the hostile answer."""
    start = threading.Barrier(2)

    def hostile_request() -> httpx.Response:
        with _client(server) as c:
            start.wait()
            return c.request(str(hostile["method"]), str(hostile["url"]), json=hostile["json"])

    def other_write() -> httpx.Response:
        with _client(server) as c:
            start.wait()
            return c.post(
                "/sessions", json={"session_id": sid, "pipeline": {"yaml_text": DIAG_PIPELINE}}
            )

    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(hostile_request)
        good = pool.submit(other_write)
        assert good.result().status_code == 201
        answer = bad.result()
    # ... and the I/O thread is still free afterwards: readiness answers ready.
    with _client(server) as c:
        assert c.get("/readiness").json()["ready"] is True
    return answer


def test_fifo_as_pipeline_path_is_422_and_does_not_stall_other_writes(
    server: ServeProcess, fifo: Path
) -> None:
    request = {"method": "POST", "url": "/sessions", "json": {"pipeline": {"path": str(fifo)}}}
    answer = _concurrently(server, request, "beside-fifo-pipeline")
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["code"] == "INVALID_REQUEST"
    assert "FIFO" in problem["detail"] and str(fifo) in problem["detail"]


def test_fifo_as_source_is_422_and_does_not_stall_other_writes(
    server: ServeProcess, fifo: Path
) -> None:
    with _client(server) as c:
        created = c.post(
            "/sessions", json={"session_id": "fifo-src", "pipeline": {"yaml_text": DIAG_PIPELINE}}
        )
        assert created.status_code == 201
    body = {"sources": [{"ref": "sample", "type": "hdf5", "location": str(fifo)}]}
    request = {"method": "PUT", "url": "/sessions/fifo-src/sources", "json": body}
    answer = _concurrently(server, request, "beside-fifo-source")
    assert answer.status_code == 422
    assert "FIFO" in answer.json()["detail"]
    with _client(server) as c:
        assert c.get("/sessions/fifo-src").json()["sources"] == {}  # nothing changed


def test_dev_zero_as_pipeline_path_is_refused_at_once(server: ServeProcess) -> None:
    with _client(server) as c:
        answer = c.post("/sessions", json={"pipeline": {"path": "/dev/zero"}})
    assert answer.status_code == 422
    assert "character device" in answer.json()["detail"]


# -- the helper itself ------------------------------------------------------------------------


def test_open_regular_refuses_what_is_not_a_regular_file(fifo: Path, tmp_path: Path) -> None:
    for path, kind in (
        (fifo, "FIFO"),
        (Path("/dev/zero"), "character device"),
        (tmp_path, "directory"),
    ):
        with pytest.raises(NotRegularFileError, match=kind):
            open_regular(path)
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x" * 10)
    with open_regular(plain) as handle:
        assert handle.read() == b"x" * 10
    assert read_regular_bytes(plain, 10) == b"x" * 10
    with pytest.raises(FileTooLargeError):
        read_regular_bytes(plain, 9)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
