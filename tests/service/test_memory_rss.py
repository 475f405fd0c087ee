"""Resident memory of a real `runwire serve` stays bounded over create/run/delete cycles.

Issue 8 measured a server going from 66 MB to 5.6 GB resident over four cycles of "create
sessions, run, delete", with no session left: freed numpy buffers stayed in glibc's heaps. Here
each cycle creates sessions, reduces two 1024x1024 samples in each (a full run, then a partial
one: the cache holds ~110 MB per session), and deletes them; VmRSS is read from
`/proc/<pid>/status` after each cycle. After later cycles it must stay within 1.5x of what it
was after the first one (the first cycle loads the libraries and warms the heaps).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sstore_server import ServeProcess, wait_run_final

from pipeline.demodata import write_demo_data
from pipeline.examples import example_text

pytestmark = pytest.mark.slow

CYCLES = 4
SESSIONS_PER_CYCLE = 3


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def one_cycle(client: httpx.Client, cycle: int, files: list[Path]) -> None:
    *samples, background, dark = files
    sids = [f"c{cycle}-s{k}" for k in range(SESSIONS_PER_CYCLE)]
    for sid in sids:
        body = {"session_id": sid, "pipeline": {"yaml_text": example_text("saxs")}}
        assert client.post("/sessions", json=body).status_code == 201
        sources = [
            {"ref": "background", "type": "hdf5", "location": str(background)},
            {"ref": "dark", "type": "hdf5", "location": str(dark)},
        ]
        assert client.put(f"/sessions/{sid}/sources", json={"sources": sources}).status_code == 200
    runs = []
    for sample in samples:  # every session full on the first sample, partial on the second
        for sid in sids:
            body = {"location": str(sample), "process": True}
            response = client.post(f"/sessions/{sid}/sample", json=body)
            assert response.status_code == 202, response.text
            runs.append(response.json()["run_id"])
    for run_id in runs:
        assert wait_run_final(client, run_id, timeout=120)["status"] == "succeeded"
    for sid in sids:
        assert client.request("DELETE", f"/sessions/{sid}", json={}).status_code == 204


def test_resident_memory_after_cycles_stays_near_the_first_cycles(tmp_path: Path) -> None:
    files = write_demo_data(tmp_path / "frames", count=2, shape=(1024, 1024), seed=11)
    server = ServeProcess(tmp_path / "data")
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        with server.client() as client:
            rss = []
            for cycle in range(CYCLES):
                one_cycle(client, cycle, files)
                rss.append(vm_rss_bytes(pid))
            assert "runwire_cache_bytes 0.0" in client.get("/metrics").text
        mib = [round(r / 2**20) for r in rss]
        for later in rss[1:]:
            assert later <= 1.5 * rss[0], f"VmRSS after each cycle (MiB): {mib}"
    finally:
        server.terminate()
