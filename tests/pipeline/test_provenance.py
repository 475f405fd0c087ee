"""Source sha256 for the NXcanSAS provenance, hashed in the background when a run starts: the
digest is always that of the file as it is when the curve is written, a file replaced after
hashing is hashed again, hashing threads are bounded, and what is not a file says why. Also: a run opens each source
file once (its readers share the handle) and closes it when the run ends."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import h5py
import numpy as np

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline import demodata, hdf5io, provenance
from pipeline.examples import example_text
from pipeline.incremental import IncrementalCache
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import SourceSpec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prefetched_digest_is_the_files_and_a_replaced_file_is_hashed_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sample.h5"
    path.write_bytes(os.urandom(3 << 20))
    provenance.prefetch([str(path)])
    assert provenance.source_sha256(str(path)) == _sha(path)
    # Replaced by a new file under the same name (what a detector writer's rename does), then
    # rewritten in place with the old size and mtime restored: both get their own digest.
    tmp = tmp_path / "new.h5"
    tmp.write_bytes(os.urandom(3 << 20))
    os.replace(tmp, path)
    provenance.prefetch([str(path)])
    assert provenance.source_sha256(str(path)) == _sha(path)
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"changed")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert provenance.source_sha256(str(path)) == _sha(path)


def test_what_is_not_a_readable_file_is_recorded_with_a_reason(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    provenance.prefetch([str(fifo), str(tmp_path / "missing.h5"), str(tmp_path)])
    assert provenance.source_sha256(str(fifo)) == "unavailable: not a regular file"
    assert provenance.source_sha256(str(tmp_path)) == "unavailable: not a regular file"
    assert provenance.source_sha256(str(tmp_path / "missing.h5")).startswith("unavailable:")


def test_hashing_threads_and_queue_are_bounded(tmp_path: Path) -> None:
    files = []
    for i in range(40):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(os.urandom(1 << 16) + bytes([i]))
        files.append(path)
    provenance.prefetch(str(p) for p in files)
    hashers = [t for t in threading.enumerate() if t.name.startswith("runwire-sha256")]
    assert 1 <= len(hashers) <= 2
    # Every file, queued or not, gets its own correct digest.
    assert [provenance.source_sha256(str(p)) for p in files] == [_sha(p) for p in files]


def test_partial_runs_record_each_new_samples_sha256(tmp_path: Path) -> None:
    data = tmp_path / "data"
    demodata.write_demo_data(data, count=3, shape=(64, 48), seed=1)
    spec = load_pipeline_text(example_text("saxs"))
    cache = IncrementalCache()
    for i in (1, 2, 3):
        sources = {
            "sample": SourceSpec(type="hdf5", location=str(data / f"sample_{i:04d}.h5")),
            "background": SourceSpec(type="hdf5", location=str(data / "background.h5")),
        }
        out = tmp_path / f"run{i}"
        result = ProcessingRunner(spec, cache=cache, artifacts_dir=out).run(sources)
        assert result.exit_code == 0, result.error
        with h5py.File(out / "reduced.h5", "r") as f:
            process = f["sasentry01/sasprocess01"]
            for ref, source in sources.items():
                recorded = process[f"source_{ref}_sha256"][()].decode()
                assert recorded == _sha(Path(source.location))
            assert np.all(np.isfinite(f["sasentry01/sasdata01/Q"][()]))


def _open_fds_on(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def test_a_run_shares_one_handle_per_source_and_closes_it_at_the_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    demodata.write_demo_data(data, count=1, shape=(32, 40), seed=2)
    sample = data / "sample_0001.h5"
    spec = load_pipeline_text(example_text("saxs"))
    result = ProcessingRunner(spec, artifacts_dir=tmp_path / "out").run(
        {"sample": SourceSpec(type="hdf5", location=str(sample))}
    )
    assert result.exit_code == 0, result.error
    assert _open_fds_on(sample.resolve()) == 0
    # Outside a run, and inside a run scope, the reader sees the file's current content: a
    # sample replaced under the same name is not served from a handle kept for the old one.
    with hdf5io.run_scope():
        with hdf5io.open_hdf5(sample) as first:
            before = first["/entry/data/data"][()].copy()
        with hdf5io.open_hdf5(sample) as again:
            assert again is first  # shared within the run
        with h5py.File(tmp_path / "new.h5", "w") as f:
            f["/entry/data/data"] = before + 1
        os.replace(tmp_path / "new.h5", sample)
        with hdf5io.open_hdf5(sample) as replaced:
            np.testing.assert_array_equal(replaced["/entry/data/data"][()], before + 1)
        assert _open_fds_on(sample.resolve()) >= 1
    assert _open_fds_on(sample.resolve()) == 0
