"""`GET /v1/retained-runs/{run_id}/curve` (contract section 10): a run's reduced I(q) curve, read
from its NXcanSAS artifact, for the dashboard's plot.

The artifact is the first of the run's `.h5`/`.nxs` artifacts (`reduced.h5` first) holding
`/sasentry01/sasdata01/{Q,I,Idev}`. The HDF5 read happens in a worker thread, never on the event
loop. Size is bounded: at most `MAX_CURVE_POINTS` points are answered (a longer curve is
thinned by an even stride, and `decimated` says so), and at most `MAX_CANDIDATES` files are
opened. Values that are not finite are answered as `null`. A run with no such artifact (a
diagnostic pipeline, a failed run) is 404 `NOT_FOUND`; an unknown run is 404 `RUN_NOT_FOUND`.
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import h5py
import msgspec
import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from service.contract.errors import ServiceError
from service.http.codec import json_response
from service.http.openapi import OperationTable
from service.http.state import service_state
from service.storage.retained import RetainedRuns

__all__ = ["MAX_CANDIDATES", "MAX_CURVE_POINTS", "Curve", "read_curve", "table"]

MAX_CURVE_POINTS = 100_000
MAX_CANDIDATES = 16
_PREFERRED = "reduced.h5"
_SUFFIXES = (".h5", ".hdf5", ".nxs")


class Curve(msgspec.Struct, kw_only=True):
    """I(q) with its uncertainty; `q_unit`/`i_unit` are the datasets' `units` attributes."""

    run_id: str
    q: list[float | None]
    I: list[float | None]  # noqa: E741 - the contract's name
    Idev: list[float | None] | None
    q_unit: str | None
    i_unit: str | None
    title: str | None
    artifact: str  # path of the file read, relative to the run's artifacts/
    decimated: bool = False


table = OperationTable("retained-runs")


def _no_curve(run_id: str) -> ServiceError:
    return ServiceError("NOT_FOUND", f"run {run_id!r} has no NXcanSAS curve")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return None if value is None else str(value)


def _values(dataset: h5py.Dataset, stride: int) -> list[float | None]:
    data = np.asarray(dataset[::stride], dtype=np.float64)
    values: list[float | None] = data.tolist()
    for index in np.flatnonzero(~np.isfinite(data)):  # JSON has no NaN or infinity
        values[index] = None
    return values


def _read_file(path: Path, run_id: str, rel: str) -> Curve | None:
    try:
        with h5py.File(path, "r") as f:
            data = f.get("sasentry01/sasdata01")
            if not isinstance(data, h5py.Group):
                return None
            q, i, idev = data.get("Q"), data.get("I"), data.get("Idev")
            if not (isinstance(q, h5py.Dataset) and isinstance(i, h5py.Dataset)):
                return None
            if q.ndim != 1 or i.shape != q.shape:
                return None
            stride = max(1, -(-q.shape[0] // MAX_CURVE_POINTS))
            has_idev = isinstance(idev, h5py.Dataset) and idev.shape == q.shape
            title = f.get("sasentry01/title")
            return Curve(
                run_id=run_id,
                q=_values(q, stride),
                I=_values(i, stride),
                Idev=_values(idev, stride) if has_idev else None,
                q_unit=_text(q.attrs.get("units")),
                i_unit=_text(i.attrs.get("units")),
                title=_text(title[()]) if isinstance(title, h5py.Dataset) else None,
                artifact=rel,
                decimated=stride > 1,
            )
    except (OSError, KeyError, ValueError, TypeError):  # not HDF5, truncated, odd layout
        return None


def read_curve(retained: RetainedRuns, run_id: str) -> Curve:
    """The run's curve (sync: h5py and directory listing; call it from a worker thread)."""
    artifacts = retained.run_dir(run_id) / "artifacts"
    try:
        names = sorted(
            p.relative_to(artifacts).as_posix()
            for p in artifacts.rglob("*")
            if p.suffix.lower() in _SUFFIXES
        )
    except OSError:
        names = []
    if _PREFERRED in names:
        names.remove(_PREFERRED)
        names.insert(0, _PREFERRED)
    for rel in names[:MAX_CANDIDATES]:
        try:
            path = retained.artifact_file(run_id, rel)  # containment: no symlink escapes
        except ServiceError:
            continue
        curve = _read_file(path, run_id, rel)
        if curve is not None:
            return curve
    raise _no_curve(run_id)


def _retained(request: Request) -> RetainedRuns:
    state = service_state(request.app)
    retained = state.retained
    if retained is None:
        retained = state.retained = RetainedRuns(state.config.runs_dir)
    return retained


@table.route(
    "GET",
    "/retained-runs/{run_id}/curve",
    response=Curve,
    errors=("RUN_NOT_FOUND", "NOT_FOUND"),
    path_descriptions={"run_id": "run id"},
)
async def retained_run_curve(request: Request) -> Response:
    """The run's reduced I(q) curve from its NXcanSAS artifact (404 NOT_FOUND without one)."""
    run_id: str = request.path_params["run_id"]
    curve = await anyio.to_thread.run_sync(read_curve, _retained(request), run_id)
    return json_response(curve)
