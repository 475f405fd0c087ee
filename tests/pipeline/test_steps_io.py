"""Reading steps (HDF5, NeXus geometry with units, npy, JSON) and writers (NXcanSAS, CSV)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import msgspec
import numpy as np
import pytest

import pipeline.steps  # noqa: F401
from pipeline.errors import SourceError, StepFailure
from pipeline.step import REGISTRY, SourceSpec, StepContext
from pipeline.uarray import Curve, UArray


def run_step(name: str, params: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
             sources: dict[str, SourceSpec] | None = None, artifacts: Path | None = None) -> Any:  # fmt: skip
    cls = REGISTRY[name]
    step = cls("s", msgspec.convert(params or {}, cls.Params))
    ctx = StepContext("s", sources or {}, artifacts_dir=artifacts)
    return step.compute(dict(inputs or {}), ctx)


def h5src(path: Path) -> dict[str, SourceSpec]:
    return {"sample": SourceSpec(type="hdf5", location=str(path))}


def write_nexus(path: Path, *, distance: tuple[float, str] = (2.0, "m"),
                pixel: tuple[float, str] = (75e-6, "m"), wavelength: tuple[float, str] = (0.1, "nm"),
                frame: Any = None, transmission: float | None = 0.8, count_time: float = 2.0,
                omit: tuple[str, ...] = ()) -> Path:  # fmt: skip
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.ones((4, 6), dtype=np.int32) if frame is None else frame
        det = f.create_group("/entry/instrument/detector")
        for name, (value, units) in {"distance": distance, "x_pixel_size": pixel,
                                     "y_pixel_size": pixel}.items():  # fmt: skip
            if name not in omit:
                det[name] = value
                if units:
                    det[name].attrs["units"] = units
        det["beam_center_x"] = 2.5
        det["beam_center_y"] = 1.25
        det["count_time"] = count_time
        f["/entry/instrument/monochromator/wavelength"] = wavelength[0]
        f["/entry/instrument/monochromator/wavelength"].attrs["units"] = wavelength[1]
        if transmission is not None:
            f["/entry/sample/transmission"] = transmission
    return path


# ------------------------------------------------------------------------------------ hdf5.read


def test_hdf5_read_returns_counts_with_poisson_variance(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5", frame=np.array([[0, 4], [9, 16]], dtype=np.int32))
    out = run_step("hdf5.read", {"source": "sample", "dataset": "/entry/data/data", "poisson": True},
                   sources=h5src(path))  # fmt: skip
    data = out["data"]
    assert isinstance(data, UArray)
    np.testing.assert_array_equal(data.value, [[0, 4], [9, 16]])
    np.testing.assert_array_equal(data.std, [[0, 2], [3, 4]])
    with pytest.raises(ValueError):
        data.value[0, 0] = 1  # outputs are read-only: no step can mutate them in place


def test_hdf5_read_sums_a_stack_of_frames(tmp_path: Path) -> None:
    stack = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    path = write_nexus(tmp_path / "a.h5", frame=stack)
    out = run_step(
        "hdf5.read", {"source": "sample", "dataset": "/entry/data/data"}, sources=h5src(path)
    )
    np.testing.assert_array_equal(out["data"], stack.sum(axis=0))
    out = run_step("hdf5.read", {"source": "sample", "dataset": "/entry/data/data", "sum_frames": False},
                   sources=h5src(path))  # fmt: skip
    assert out["data"].shape == (2, 3, 4)


def test_reader_of_an_absent_optional_source_gives_none(tmp_path: Path) -> None:
    assert run_step("hdf5.read", {"source": "dark", "dataset": "/x"})["data"] is None
    assert run_step("nexus.detector_geometry", {"source": "dark"}) == {
        "geometry": None,
        "exposure": None,
    }
    assert run_step("npy.read", {"source": "dark"})["data"] is None
    assert run_step("json.read", {"source": "dark"})["value"] is None
    assert run_step("mask.read", {"source": "dark"})["mask"] is None


def test_optional_dataset_gives_none(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5")
    out = run_step(
        "hdf5.read", {"source": "sample", "dataset": "/nope", "optional": True}, sources=h5src(path)
    )
    assert out["data"] is None


@pytest.mark.parametrize(
    ("setup", "params", "message"),
    [
        ("missing", {"dataset": "/entry/data/data"}, "a.h5: no such file"),
        ("ok", {"dataset": "/entry/data/missing"}, "a.h5: no dataset /entry/data/missing"),
        ("ok", {"dataset": "/entry/data"}, "a.h5: /entry/data is a group, not a dataset"),
        ("text", {"dataset": "/entry/title"}, "a.h5: dataset /entry/title is not numeric"),
        ("garbage", {"dataset": "/entry/data/data"}, "a.h5: not a readable HDF5 file"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_file_and_dataset(
    tmp_path: Path, setup: str, params: dict[str, str], message: str
) -> None:
    path = tmp_path / "a.h5"
    if setup != "missing":
        write_nexus(path)
    if setup == "text":
        with h5py.File(path, "a") as f:
            f["/entry/title"] = "hello"
    if setup == "garbage":
        path.write_bytes(b"not hdf5 at all")
    with pytest.raises(SourceError) as info:
        run_step("hdf5.read", {"source": "sample", **params}, sources=h5src(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_source_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="has type 'npy'"):
        run_step("hdf5.read", {"source": "sample", "dataset": "/x"},
                 sources={"sample": SourceSpec(type="npy", location=str(tmp_path / "a.npy"))})  # fmt: skip


def test_unknown_params_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="datset"):
        msgspec.convert({"source": "s", "dataset": "/x", "datset": 1}, REGISTRY["hdf5.read"].Params)


def test_hdf5_attr_reads_strings_and_numbers(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5")
    with h5py.File(path, "a") as f:
        f["/entry"].attrs["NX_class"] = "NXentry"
        f["/entry/data/data"].attrs["gain"] = np.float32(1.5)
    assert run_step("hdf5.attr", {"source": "sample", "path": "/entry", "attr": "NX_class"},
                    sources=h5src(path))["value"] == "NXentry"  # fmt: skip
    assert run_step("hdf5.attr", {"source": "sample", "path": "/entry/data/data", "attr": "gain"},
                    sources=h5src(path))["value"] == 1.5  # fmt: skip
    with pytest.raises(SourceError, match="has no attribute 'nope'"):
        run_step(
            "hdf5.attr", {"source": "sample", "path": "/entry", "attr": "nope"}, sources=h5src(path)
        )
    with pytest.raises(SourceError, match="no object /x"):
        run_step("hdf5.attr", {"source": "sample", "path": "/x", "attr": "a"}, sources=h5src(path))


# -------------------------------------------------------------------- nexus.detector_geometry


@pytest.mark.parametrize(
    ("distance", "pixel", "wavelength"),
    [
        ((2.0, "m"), (75e-6, "m"), (0.1, "nm")),
        ((2000.0, "mm"), (0.075, "mm"), (1.0, "Angstrom")),
        ((200.0, "cm"), (75.0, "um"), (1e-10, "m")),
    ],
)
def test_geometry_units_are_honoured(
    tmp_path: Path,
    distance: tuple[float, str],
    pixel: tuple[float, str],
    wavelength: tuple[float, str],
) -> None:
    path = write_nexus(tmp_path / "a.h5", distance=distance, pixel=pixel, wavelength=wavelength)
    out = run_step("nexus.detector_geometry", {"source": "sample"}, sources=h5src(path))
    g = out["geometry"]
    assert g["distance_m"] == pytest.approx(2.0)
    assert g["pixel_size_x_m"] == pytest.approx(75e-6)
    assert g["pixel_size_y_m"] == pytest.approx(75e-6)
    assert g["wavelength_nm"] == pytest.approx(0.1)
    assert (g["beam_center_x_px"], g["beam_center_y_px"], g["shape"]) == (2.5, 1.25, [4, 6])
    assert out["exposure"] == {"count_time_s": 2.0, "transmission": 0.8}


def test_geometry_transmission_defaults_to_one_and_stacks_give_frame_shape(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5", transmission=None, frame=np.zeros((3, 5, 7), np.int32))
    out = run_step("nexus.detector_geometry", {"source": "sample"}, sources=h5src(path))
    assert out["exposure"]["transmission"] == 1.0
    assert out["geometry"]["shape"] == [5, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distance": (2.0, "furlong")}, "distance has unsupported units 'furlong'"),
        ({"distance": (2.0, "")}, "distance has no units attribute"),
        ({"wavelength": (1.0, "eV")}, "wavelength has unsupported units 'eV'"),
        ({"omit": ("x_pixel_size",)}, "no dataset /entry/instrument/detector/x_pixel_size"),
        ({"distance": (-1.0, "m")}, "distance_m must be positive"),
        ({"transmission": 1.5}, "transmission must be in (0, 1]"),
        ({"count_time": 0.0}, "count_time must be positive"),
    ],
)
def test_bad_geometry_is_reported_with_file_and_dataset(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    path = write_nexus(tmp_path / "geo.h5", **kwargs)
    with pytest.raises(SourceError) as info:
        run_step("nexus.detector_geometry", {"source": "sample"}, sources=h5src(path))
    assert message in str(info.value)
    assert "geo.h5" in str(info.value)


# ------------------------------------------------------------------------------- npy and json


def test_npy_read(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(6).reshape(2, 3))
    out = run_step(
        "npy.read",
        {"source": "m"},
        sources={"m": SourceSpec(type="npy", location=str(tmp_path / "a.npy"))},
    )
    np.testing.assert_array_equal(out["data"], np.arange(6).reshape(2, 3))
    (tmp_path / "bad.npy").write_bytes(b"nope")
    for name, message in (("missing.npy", "no such file"), ("bad.npy", "not a readable .npy file")):
        with pytest.raises(SourceError, match=message):
            run_step(
                "npy.read",
                {"source": "m"},
                sources={"m": SourceSpec(type="npy", location=str(tmp_path / name))},
            )


def test_json_read_whole_document_and_members(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"a": {"b": [10, 20]}, "c": "x"}))
    src = {"j": SourceSpec(type="json", location=str(path))}
    assert run_step("json.read", {"source": "j"}, sources=src)["value"]["c"] == "x"
    assert run_step("json.read", {"source": "j", "key": "a.b.1"}, sources=src)["value"] == 20
    with pytest.raises(SourceError, match=r"no member 'a\.z'"):
        run_step("json.read", {"source": "j", "key": "a.z"}, sources=src)
    path.write_text("{broken")
    with pytest.raises(SourceError, match="not readable JSON"):
        run_step("json.read", {"source": "j"}, sources=src)


# ------------------------------------------------------------------------------------ writers


def curve() -> Curve:
    return Curve(np.array([0.1, 0.2, 0.3]), np.array([5.0, 4.0, 3.0]), np.array([0.5, 0.4, 0.3]),
                 np.array([10, 20, 30]))  # fmt: skip


def test_nxcansas_layout_and_attributes(tmp_path: Path) -> None:
    out = run_step(
        "write.nxcansas", {"filename": "reduced.h5"}, {"curve": curve()}, artifacts=tmp_path
    )
    assert out == {"path": "reduced.h5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reduced.h5"]  # no temp file left
    with h5py.File(tmp_path / "reduced.h5", "r") as f:
        entry, data = f["sasentry01"], f["sasentry01/sasdata01"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["canSAS_class"] == "SASentry"
        assert entry["definition"][()] == b"NXcanSAS"
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["canSAS_class"] == "SASdata"
        assert data.attrs["signal"] == "I" and data.attrs["I_axes"] == "Q"
        assert data["Q"].attrs["units"] == "1/nm"
        assert data["I"].attrs["uncertainties"] == "Idev"
        np.testing.assert_array_equal(data["Q"][()], [0.1, 0.2, 0.3])
        np.testing.assert_array_equal(data["I"][()], [5.0, 4.0, 3.0])
        np.testing.assert_array_equal(data["Idev"][()], [0.5, 0.4, 0.3])


def test_csv_writer(tmp_path: Path) -> None:
    out = run_step(
        "write.csv", {"filename": "sub/curve.csv"}, {"curve": curve()}, artifacts=tmp_path
    )
    assert out == {"path": "sub/curve.csv"}
    lines = (tmp_path / "sub" / "curve.csv").read_text().splitlines()
    assert lines[0] == "q_1/nm,I,Idev,n_pixels"
    assert lines[1] == "0.1,5,0.5,10"


@pytest.mark.parametrize("filename", ["../escape.h5", "/abs.h5", "a/../../b.h5"])
def test_writers_stay_inside_the_artifacts_directory(tmp_path: Path, filename: str) -> None:
    with pytest.raises(StepFailure, match="must be a relative path"):
        run_step("write.nxcansas", {"filename": filename}, {"curve": curve()}, artifacts=tmp_path)


def test_writer_without_artifacts_directory_or_curve_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StepFailure, match="no artifacts directory"):
        run_step("write.csv", {}, {"curve": curve()})
    with pytest.raises(StepFailure, match="input curve must be a reduced curve"):
        run_step("write.csv", {}, {"curve": None}, artifacts=tmp_path)


def test_odd_but_valid_encodings_are_read(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5")
    with h5py.File(path, "a") as f:
        del f["/entry/instrument/detector/distance"]
        f["/entry/instrument/detector/distance"] = [2000.0]  # a 1-element array is a scalar
        f["/entry/instrument/detector/distance"].attrs["units"] = np.bytes_(b"mm")
        f["/entry/instrument/detector/x_pixel_size"].attrs["units"] = np.array([b"m"])
        f["/entry"].attrs["tags"] = np.array([b"a", b"b"])
    out = run_step("nexus.detector_geometry", {"source": "sample"}, sources=h5src(path))
    assert out["geometry"]["distance_m"] == pytest.approx(2.0)
    tags = run_step(
        "hdf5.attr", {"source": "sample", "path": "/entry", "attr": "tags"}, sources=h5src(path)
    )
    assert tags["value"] == ["a", "b"]


def test_a_scalar_field_holding_an_array_is_refused(tmp_path: Path) -> None:
    path = write_nexus(tmp_path / "a.h5")
    with h5py.File(path, "a") as f:
        del f["/entry/instrument/detector/beam_center_x"]
        f["/entry/instrument/detector/beam_center_x"] = [1.0, 2.0]
    with pytest.raises(
        SourceError, match=r"beam_center_x should hold one number, has shape \(2,\)"
    ):
        run_step("nexus.detector_geometry", {"source": "sample"}, sources=h5src(path))
