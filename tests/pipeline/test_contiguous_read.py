"""Large uncompressed datasets are read straight from the file: the same arrays as h5py's."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import hdf5io

RNG = np.random.default_rng(9)


@pytest.mark.parametrize("dtype", ["<i4", ">i4", "<u2", ">f8", "<f4", "|u1"])
def test_a_contiguous_dataset_reads_as_h5py_reads_it(tmp_path: Path, dtype: str) -> None:
    data = (RNG.random((1, 300, 260)) * 1000).astype(dtype)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("stack", data=data)
        f.create_dataset("frame", data=data[0])
        f.create_dataset("empty", shape=(300, 260), dtype=dtype)  # never written: fill value
        f.create_dataset("small", data=data[0, :4, :4])
    with hdf5io.open_hdf5(path) as handle:
        for name, want in (("frame", data[0]), ("stack", data[0]), ("small", data[0, :4, :4])):
            got = hdf5io.read_array(handle, name)
            assert got.dtype == handle[name].dtype and np.array_equal(got, want), name
        assert hdf5io._read_contiguous(handle, handle["frame"]) is not None  # the fast path ran
        assert np.array_equal(hdf5io.read_array(handle, "empty"), np.zeros((300, 260)))


def test_a_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frame", data=np.arange(200_000, dtype=np.int32))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100_000)
    with pytest.raises(hdf5io.SourceError, match=r"f\.h5"), hdf5io.open_hdf5(path) as handle:
        hdf5io.read_array(handle, "frame")
