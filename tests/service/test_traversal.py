"""Path traversal against artifact downloads: raw requests over a real socket to a real uvicorn
server, with no client-side normalisation. Every payload must answer 4xx (never 5xx) and no
response may contain a secret placed outside the run's artifacts directory."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sstore_rundirs import retained_app, write_run

SECRET = "S3CRET-" + secrets.token_hex(8)  # outside the data directory
PRIVATE = "PRIVATE-" + secrets.token_hex(8)  # inside the run directory, outside artifacts/
RUN = "/v1/retained-runs/run-1"
ART = RUN + "/artifacts/"

# Request targets sent byte for byte.
PAYLOADS = [
    ART + "../../../../secret.txt",
    ART + "../private.txt",
    ART + "./../private.txt",
    ART + "ok.txt/../../private.txt",
    ART + "..%2f..%2f..%2f..%2fsecret.txt",
    ART + "%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    ART + "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    ART + "%2E%2E%2Fprivate.txt",
    ART + ".%2e/private.txt",
    ART + "%2e/%2e%2e/private.txt",
    ART + "%252e%252e%252fprivate.txt",
    ART + "%252e%252e/%252e%252e/%252e%252e/%252e%252e/secret.txt",
    ART + "..%252f..%252f..%252f..%252fsecret.txt",
    ART + "%25252e%25252e%25252fprivate.txt",
    ART + "..\\private.txt",
    ART + "..\\..\\..\\..\\secret.txt",
    ART + "..%5cprivate.txt",
    ART + "..%255cprivate.txt",
    ART + "/etc/passwd",
    ART + "%2fetc%2fpasswd",
    ART + "//etc/passwd",
    ART + "%2f%2fetc%2fpasswd",
    ART + "file:///etc/passwd",
    ART + "C:%5cWindows%5cwin.ini",
    ART + "ok.txt%00.png",
    ART + "..%00/private.txt",
    ART + "%00",
    ART + "ok.txt%0d%0aX-Injected:%20yes",
    ART + "link-out",
    ART + "abs-link",
    ART + "dirlink/secret.txt",
    ART + "dirlink%2fsecret.txt",
    ART + "....//....//private.txt",
    ART + "..;/private.txt",
    ART + "%c0%ae%c0%ae/private.txt",
    ART + "%c0%ae%c0%ae%c0%afprivate.txt",
    ART + "%e0%80%ae%e0%80%ae/private.txt",
    ART + "%ef%bc%8e%ef%bc%8e/private.txt",
    ART + "..%u2216private.txt",
    ART + "%uff0e%uff0e/private.txt",
    ART + "A" * 5000,
    ART + ("B" * 300) + "/x",
    ART + "ok.txt/" + "../" * 200 + "etc/passwd",
    ART + "../../../../../../../../../../etc/passwd",
    ART + "..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ART + "%2e%2e%2f" * 12 + "etc%2fpasswd",
    "/v1/retained-runs/..%2f..%2f..%2fsecret.txt/artifacts/x",
    "/v1/retained-runs/%2e%2e/artifacts/secret.txt",
    "/v1/retained-runs/../../secret.txt",
    "/v1/retained-runs/run-2/artifacts/secret.txt",  # its artifacts/ is a symlink out
    "/v1/retained-runs/run-3/artifacts/secret.txt",  # the run directory is a symlink out
    "/v1/retained-runs/run-4/artifacts/secret.txt",  # in a session directory that is a symlink
    RUN + "/reports/..%2fprivate.txt",
    RUN + "/reports/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    RUN + "/reports/../private.txt",
    "http://127.0.0.1" + ART + "../../../../secret.txt",  # absolute-form target
]


class _Server(uvicorn.Server):
    """uvicorn that signals when it is listening (no sleeping while it starts)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


def build_tree(root: Path) -> Path:
    """The data: run-1 with artifacts and escape hatches; run-2..4 with symlinks out."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "artifacts").mkdir()
    (outside / "artifacts" / "secret.txt").write_text(SECRET)
    (outside / "run-4" / "artifacts").mkdir(parents=True)
    (outside / "run-4" / "artifacts" / "secret.txt").write_text(SECRET)
    (outside / "run-4" / "summary.json").write_text('{"run_id": "run-4", "status": "succeeded"}')
    (root / "secret.txt").write_text(SECRET)
    runs = root / "data" / "runs"
    run1 = write_run(
        runs,
        "s",
        "run-1",
        queued_utc="2026-01-01T00:00:01Z",
        artifacts={"ok.txt": b"fine", "inner/ok2.txt": b"fine too"},
    )
    (run1 / "private.txt").write_text(PRIVATE)
    art = run1 / "artifacts"
    os.symlink("../../../../../secret.txt", art / "link-out")
    os.symlink(root / "secret.txt", art / "abs-link")
    os.symlink(outside, art / "dirlink")
    os.symlink("inner", art / "inner-link")  # a link that stays inside: allowed
    run2 = write_run(runs, "s", "run-2", queued_utc="2026-01-01T00:00:02Z")
    (run2 / "artifacts").rmdir()
    os.symlink(outside, run2 / "artifacts")
    os.symlink(outside, runs / "s" / "run-3")
    os.symlink(outside, runs / "evil")
    return runs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    runs = build_tree(tmp_path_factory.mktemp("traversal"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(retained_app(runs), log_level="critical", lifespan="off")
    srv = _Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert srv.listening.wait(timeout=15), "uvicorn did not start"
    try:
        yield sock.getsockname()
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()


def raw_get(address: tuple[str, int], target: str) -> tuple[int, bytes]:
    """Send `GET target` exactly as given; return (status, whole response)."""
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(request.encode("latin-1"))
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status_line = response.split(b"\r\n", 1)[0]
    return int(status_line.split(b" ")[1]), response


def test_there_are_at_least_40_payloads() -> None:
    assert len(PAYLOADS) >= 40
    assert len(set(PAYLOADS)) == len(PAYLOADS)


def test_no_payload_leaks_or_errors(server: tuple[str, int]) -> None:
    leaks, server_errors, statuses = [], [], {}
    for target in PAYLOADS:
        status, response = raw_get(server, target)
        statuses[target] = status
        body = response.decode("latin-1")
        if SECRET in body or PRIVATE in body or "root:x:0:0" in body:
            leaks.append(target)
        if status >= 500:
            server_errors.append(target)
    assert leaks == []
    assert server_errors == []
    assert all(400 <= s < 500 for s in statuses.values()), statuses


def test_legitimate_downloads_still_work(server: tuple[str, int]) -> None:
    for target, content in (
        (ART + "ok.txt", b"fine"),
        (ART + "inner/ok2.txt", b"fine too"),
        (ART + "inner-link/ok2.txt", b"fine too"),
        (ART + "inner%2fok2.txt", b"fine too"),  # an encoded slash is still a plain path
    ):
        status, response = raw_get(server, target)
        assert status == 200, target
        assert response.endswith(b"\r\n\r\n" + content)


def test_symlinked_session_and_run_directories_are_not_listed(server: tuple[str, int]) -> None:
    for target in (
        "/v1/retained-runs?session_id=evil",
        "/v1/retained-runs",
        "/v1/retained-runs/latest?session_id=evil",
    ):
        status, response = raw_get(server, target)
        assert status in (200, 404), target
        body = response.decode("latin-1")
        assert SECRET not in body and "run-3" not in body and "run-4" not in body, target
