"""Detector frames compressed as facilities store them read as the very same arrays.

Each file is written here with h5py and hdf5plugin; gzip and bitshuffle-LZ4 go through the
parallel chunk reader (`pipeline.chunkread`), LZ4, Blosc and Zstandard through h5py with the
filters hdf5plugin registers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import msgspec
import numpy as np
import pytest

import pipeline.steps  # noqa: F401  (registers the built-in steps)
from pipeline import chunkread, demodata
from pipeline.errors import SourceError
from pipeline.examples import example_text
from pipeline.loader import load_pipeline_text
from pipeline.runner import ProcessingRunner
from pipeline.step import REGISTRY, SourceSpec, StepContext
from pipeline.uarray import UArray

SHAPE = (211, 203)  # not a multiple of any chunk or block: edge chunks and a raw bitshuffle tail

FILTERS: dict[str, dict[str, Any]] = {
    "gzip": {"compression": "gzip", "compression_opts": 4},
    "gzip+shuffle": {"compression": "gzip", "shuffle": True},
    "lz4": dict(hdf5plugin.LZ4()),
    "bslz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "blosc": dict(hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
    "zstd": dict(hdf5plugin.Zstd()),
}


def frame(dtype: Any = np.uint32, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.poisson(40.0, size=(1, *shape)).astype(dtype)


def write(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None, **options: Any) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=data, chunks=chunks, **options)
    return path


def read_step(path: Path, **params: Any) -> Any:
    cls = REGISTRY["hdf5.read"]
    step = cls("s", msgspec.convert({"source": "sample", "dataset": "/entry/data/data", **params},
                                    cls.Params))  # fmt: skip
    ctx = StepContext("s", {"sample": SourceSpec(type="hdf5", location=str(path))})
    return step.compute({}, ctx)["data"]


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("chunks", [(1, *SHAPE), (1, 64, 64)], ids=["frame-chunk", "tiles"])
def test_each_compression_reads_the_same_array_as_the_uncompressed_file(
    tmp_path: Path, name: str, chunks: tuple[int, ...]
) -> None:
    data = frame()
    plain = read_step(write(tmp_path / "plain.h5", data, None))
    packed = write(tmp_path / f"{name}.h5", data, chunks, **FILTERS[name])
    with h5py.File(packed, "r") as f:
        assert f["/entry/data/data"].id.get_create_plist().get_nfilters() >= 1
    got = read_step(packed)
    assert got.dtype == plain.dtype == np.uint32 and got.shape == SHAPE
    np.testing.assert_array_equal(got, plain)
    np.testing.assert_array_equal(got, data[0])
    # Through the Poisson path too (what the saxs example reads): equal counts, equal variance.
    counts = read_step(packed, poisson=True)
    assert isinstance(counts, UArray)
    np.testing.assert_array_equal(
        counts.value, read_step(tmp_path / "plain.h5", poisson=True).value
    )


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_a_one_chunk_bitshuffle_frame_splits_into_blocks_decoded_apart(
    tmp_path: Path, parts: int
) -> None:
    for dtype in (np.uint32, np.uint16, np.int32):
        data = frame(dtype, (513, 411))  # 51 blocks of 8 KiB as uint16, a 3-element raw tail
        path = write(tmp_path / "bs.h5", data, data.shape, **FILTERS["bslz4"])
        with h5py.File(path, "r") as f:
            _, raw = f["/entry/data/data"].id.read_direct_chunk((0, 0, 0))
        out = np.empty(data.size, dtype=dtype)
        tasks = chunkread.bitshuffle_segments(raw, out, parts)
        assert len(tasks) == parts
        for task in reversed(tasks):  # any order: the runs of blocks are independent
            task()
        np.testing.assert_array_equal(out.reshape(data.shape), data)


def test_a_corrupt_chunk_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    data = frame()
    path = write(tmp_path / "bad.h5", data, (1, 64, 64), **FILTERS["gzip"])
    with h5py.File(path, "r+") as f:
        f["/entry/data/data"].id.write_direct_chunk((0, 0, 0), b"not deflate data")
    with pytest.raises(SourceError, match=r"bad\.h5: cannot read /entry/data/data"):
        read_step(path)


def test_other_filter_chains_and_unallocated_chunks_fall_back_to_h5py(tmp_path: Path) -> None:
    data = frame()
    path = write(tmp_path / "f.h5", data, (1, 64, 64), fletcher32=True, **FILTERS["gzip"])
    np.testing.assert_array_equal(read_step(path), data[0])
    with h5py.File(tmp_path / "sparse.h5", "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=(1, *SHAPE), dtype=np.uint32,
                              chunks=(1, 64, 64), fillvalue=7, **FILTERS["gzip"])  # fmt: skip
        ds[0, :64, :64] = 1
        assert chunkread.read_chunked(ds) is None
    got = read_step(tmp_path / "sparse.h5")
    assert got[0, 0] == 1 and got[-1, -1] == 7


def recompress(src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Copy a demo file with its frame stored as a (1, rows, cols) stack under `options`."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        counts = f["/entry/data/data"][()]
        del f["/entry/data/data"]
        stack = counts.reshape(1, *counts.shape[-2:]).astype(np.uint32)
        f.create_dataset("/entry/data/data", data=stack, chunks=stack.shape, **options)


def reduce(directory: Path, out: Path) -> list[np.ndarray]:
    spec = load_pipeline_text(example_text("saxs"))
    srcs = {
        name: SourceSpec(type="hdf5", location=str(directory / f"{file}.h5"))
        for name, file in (("sample", "sample_0001"), ("background", "background"),
                           ("dark", "dark"))
    }  # fmt: skip
    result = ProcessingRunner(spec, artifacts_dir=out).run(srcs)
    assert result.exit_code == 0, result.error
    with h5py.File(out / "reduced.h5", "r") as f:
        return [f[f"/sasentry01/sasdata01/{k}"][()] for k in ("Q", "I", "Idev")]


def test_the_saxs_example_reduces_every_compression_to_the_same_curve(tmp_path: Path) -> None:
    shape = (128, 136)
    plain = tmp_path / "none"
    demodata.write_demo_data(plain, count=1, shape=shape, seed=5)
    expected = reduce(plain, tmp_path / "out-none")
    names = ["sample_0001", "background", "dark"]
    for compression in ("gzip", "bslz4"):  # as `runwire demo-data --compression` writes them
        directory = tmp_path / compression
        demodata.write_demo_data(directory, count=1, shape=shape, seed=5, compression=compression)
        got = reduce(directory, tmp_path / f"out-{compression}")
        for a, b in zip(got, expected, strict=True):
            assert a.tobytes() == b.tobytes(), compression
    for name in ("lz4", "blosc", "zstd"):
        directory = tmp_path / name
        directory.mkdir()
        for file in names:
            recompress(plain / f"{file}.h5", directory / f"{file}.h5", FILTERS[name])
        got = reduce(directory, tmp_path / f"out-{name}")
        for a, b in zip(got, expected, strict=True):
            assert a.tobytes() == b.tobytes(), name


def test_demo_data_is_stored_as_a_detector_stores_it(tmp_path: Path) -> None:
    demodata.write_demo_data(tmp_path, count=1, shape=(64, 80), compression="bslz4")
    with h5py.File(tmp_path / "sample_0001.h5", "r") as f:
        ds = f["/entry/data/data"]
        assert ds.dtype == np.uint32 and ds.shape == (1, 64, 80) and ds.chunks == (1, 64, 80)
        assert ds.id.get_create_plist().get_filter(0)[0] == chunkread.FILTER_BITSHUFFLE
    demodata.write_demo_data(tmp_path / "gz", count=1, shape=(64, 80), compression="gzip")
    with h5py.File(tmp_path / "gz" / "sample_0001.h5", "r") as f:
        ds = f["/entry/data/data"]
        assert ds.compression == "gzip" and ds.chunks is not None and ds.chunks[1] == 80
    with pytest.raises(ValueError, match="compression must be one of none, gzip, bslz4"):
        demodata.write_demo_data(tmp_path / "x", compression="lzma")
