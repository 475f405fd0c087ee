"""`runwire demo-data --compression` and `--shape` limits: files stored as detectors store them."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from service.cli import main


def test_demo_data_compressions_hold_the_same_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = {}
    for compression in ("none", "gzip", "bslz4"):
        out = tmp_path / compression
        assert main(["demo-data", str(out), "--count", "1", "--shape", "40x56",
                     "--compression", compression]) == 0  # fmt: skip
        assert str(out / "sample_0001.h5") in capsys.readouterr().out
        with h5py.File(out / "sample_0001.h5", "r") as f:
            ds = f["/entry/data/data"]
            frames[compression] = ds[()].reshape(40, 56).astype(np.int64)
            if compression == "bslz4":
                assert ds.shape == (1, 40, 56) and ds.dtype == np.uint32
    np.testing.assert_array_equal(frames["gzip"], frames["none"])
    np.testing.assert_array_equal(frames["bslz4"], frames["none"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--shape", "4097x10"], "--shape sides must be at most 4096"),
        (["--compression", "lzma"], "invalid choice: 'lzma'"),
    ],
)
def test_demo_data_rejects_oversized_frames_and_unknown_compressions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    try:
        code = main(["demo-data", str(tmp_path / "d"), *args])
    except SystemExit as exc:  # argparse's own choice check exits with the usage code
        code = exc.code
    assert code == 64
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
