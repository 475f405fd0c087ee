"""`service.http.routes.curve.read_curve`: which artifact holds a run's curve, and the bounds on what is
answered (fed run directories written here, no server)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.nxcansas import write_nxcansas
from pipeline.rundir import new_run_id
from service.contract.errors import ServiceError
from service.http.routes.curve import MAX_CURVE_POINTS, read_curve
from service.storage.retained import RetainedRuns


def run_artifacts(runs_dir: Path) -> tuple[str, Path]:
    run_id = new_run_id()
    artifacts = runs_dir / "s" / run_id / "artifacts"
    artifacts.mkdir(parents=True)
    return run_id, artifacts


def test_a_long_curve_is_thinned_to_the_bound(tmp_path: Path) -> None:
    run_id, artifacts = run_artifacts(tmp_path)
    n = 2 * MAX_CURVE_POINTS + 1
    q = np.linspace(0.01, 5.0, n)
    write_nxcansas(artifacts / "reduced.h5", q, 1 / q, np.sqrt(1 / q), title="long")
    curve = read_curve(RetainedRuns(tmp_path), run_id)
    assert curve.decimated
    assert len(curve.q) == len(curve.I) == len(curve.Idev or []) == 66_667  # every 3rd point
    assert curve.q[0] == q[0] and curve.q[-1] == q[-3]
    assert curve.title == "long"


def test_other_files_are_skipped_and_idev_may_be_missing(tmp_path: Path) -> None:
    run_id, artifacts = run_artifacts(tmp_path)
    (artifacts / "a-broken.h5").write_bytes(b"not hdf5")
    with h5py.File(artifacts / "b-other.h5", "w") as f:
        f["data"] = np.arange(3)
    with h5py.File(artifacts / "c-curve.nxs", "w") as f:
        f["sasentry01/sasdata01/Q"] = np.array([0.1, 0.2, 0.3])
        f["sasentry01/sasdata01/I"] = np.array([3.0, np.nan, 1.0])
    curve = read_curve(RetainedRuns(tmp_path), run_id)
    assert curve.artifact == "c-curve.nxs"
    assert curve.I == [3.0, None, 1.0]
    assert curve.Idev is None and curve.q_unit is None and curve.title is None
    assert not curve.decimated


def test_a_run_without_artifacts_has_no_curve(tmp_path: Path) -> None:
    run_id, artifacts = run_artifacts(tmp_path)
    artifacts.rmdir()
    with pytest.raises(ServiceError) as caught:
        read_curve(RetainedRuns(tmp_path), run_id)
    assert caught.value.code == "NOT_FOUND"
