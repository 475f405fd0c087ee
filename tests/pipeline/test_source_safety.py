"""Sources that are not regular files: every reader refuses a FIFO at once with a one-line
`SourceError` naming it, and a run whose source (with the `hash` option) was replaced by a FIFO
fails with that step error instead of crashing its planning.

A reader that regressed to a blocking open would hang: each read runs in a worker thread waited
on with a generous timeout, and the FIFO is opened for writing at teardown so that such a thread
wakes up and the test run can end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline.composite import PipelineSpec
from pipeline.errors import SourceError
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.signatures import source_signature
from pipeline.step import REGISTRY, SourceSpec, StepContext

ANSWER_TIMEOUT_S = 30.0  # a refusal takes microseconds; a blocking open never returns


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "frames.h5"
    os.mkfifo(path)
    yield path
    # Wake a reader stuck in open() (only if a regression left one there; with no reader
    # waiting, the normal case, the non-blocking open fails with ENXIO).
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _within_timeout(fn: Callable[[], Any]) -> Any:
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=ANSWER_TIMEOUT_S)
    finally:
        pool.shutdown(wait=False)


def _read(name: str, params: dict[str, Any], location: Path, type_: str) -> Any:
    cls = REGISTRY[name]
    step = cls("s", msgspec.convert(params, cls.Params))
    sources = {"sample": SourceSpec(type=type_, location=str(location))}
    return step.compute({}, StepContext("s", sources))


@pytest.mark.parametrize(
    ("name", "params", "type_"),
    [
        ("hdf5.read", {"source": "sample", "dataset": "/entry/data/data"}, "hdf5"),
        ("hdf5.attr", {"source": "sample", "path": "/", "attr": "a"}, "hdf5"),
        ("nexus.detector_geometry", {"source": "sample"}, "nexus"),
        ("mask.read", {"source": "sample"}, "hdf5"),
        ("npy.read", {"source": "sample"}, "npy"),
        ("json.read", {"source": "sample"}, "json"),
    ],
)
def test_every_reader_refuses_a_fifo_at_once(
    fifo: Path, name: str, params: dict[str, Any], type_: str
) -> None:
    with pytest.raises(SourceError) as caught:
        _within_timeout(lambda: _read(name, params, fifo, type_))
    message = str(caught.value)
    assert str(fifo) in message and "FIFO" in message and "\n" not in message


def test_readers_refuse_a_directory_and_name_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="directory"):
        _read("hdf5.read", {"source": "sample", "dataset": "/d"}, tmp_path, "hdf5")
    with pytest.raises(SourceError, match="directory"):
        _read("json.read", {"source": "sample"}, tmp_path, "json")
    for name, type_ in (("hdf5.read", "hdf5"), ("npy.read", "npy"), ("json.read", "json")):
        params = {"source": "sample"} | ({"dataset": "/d"} if type_ == "hdf5" else {})
        with pytest.raises(SourceError, match="no such file"):
            _read(name, params, tmp_path / "missing", type_)


def test_npy_and_json_readers_still_read_regular_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(6).reshape(2, 3))
    out = _read("npy.read", {"source": "sample"}, tmp_path / "a.npy", "npy")
    np.testing.assert_array_equal(out["data"], np.arange(6).reshape(2, 3))
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    assert _read("json.read", {"source": "sample", "key": "x.1"}, tmp_path / "a.json", "json") == {
        "value": 2
    }


HASHED = """
name: hashed
version: "1"
sources:
  sample: {required: true}
steps:
  - id: frame
    use: hdf5.read
    params: {source: sample, dataset: /entry/data/data}
    outputs: {data: sample.frame}
"""


def test_hashed_source_replaced_by_a_fifo_is_a_step_error_not_a_crash(
    fifo: Path, tmp_path: Path
) -> None:
    spec: PipelineSpec = load_pipeline_text(HASHED)
    source = SourceSpec(type="hdf5", location=str(fifo), options={"hash": True})
    # Planning signs the source by content: it must not raise (nor block) on the FIFO...
    signature = _within_timeout(lambda: source_signature(source))
    regular = tmp_path / "regular.h5"
    regular.write_bytes(b"")
    assert signature != source_signature(SourceSpec(type="hdf5", location=str(regular)))
    # ... and the run fails at the reading step with the reader's one-line message.
    runner = ProcessingRunner(spec, artifacts_dir=tmp_path / "out")
    result = _within_timeout(lambda: runner.run({"sample": source}))
    assert result.exit_code != 0
    assert result.error is not None
    assert "FIFO" in result.error.message and str(fifo) in result.error.message
