"""`runwire package install|list|show` on a data directory, and the refusal while a server
holds that directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from package_builders import write_package

from service.cli import main
from service.storage.datalock import DataDirLock


def test_install_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = write_package(tmp_path / "src", "clipkg")
    data = str(tmp_path / "data")
    assert main(["package", "install", str(pkg), "--data-dir", data]) == 0
    assert capsys.readouterr().out == "installed clipkg 1.0.0\n"
    assert main(["package", "list", "--data-dir", data]) == 0
    assert capsys.readouterr().out.startswith("clipkg\t1.0.0\tinstalled")
    assert main(["package", "show", "clipkg", "--data-dir", data, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "installed" and shown["versions"] == ["1.0.0"]
    assert main(["package", "show", "clipkg", "--data-dir", data]) == 0
    assert "modules: ['clipkg_steps']" in capsys.readouterr().out
    # Installing the same version again: one line, non-zero exit, nothing changed.
    assert main(["package", "install", str(pkg), "--data-dir", data]) == 1
    assert (
        capsys.readouterr().err
        == "error: package not installed: package clipkg 1.0.0 is already installed\n"
    )


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["package", "install", str(tmp_path / "missing"), "--data-dir", data]) == 64
    assert "no such package folder or zip" in capsys.readouterr().err
    assert main(["package", "show", "nothing", "--data-dir", data]) == 64
    assert "package 'nothing' is not installed" in capsys.readouterr().err
    assert main(["package", "list", "--data-dir", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"packages": []}
    pkg = write_package(tmp_path / "src", "needs", requirements=["rwtiny==1.0"])
    assert main(["package", "install", str(pkg), "--data-dir", data]) == 1
    assert "needs requirement 'rwtiny==1.0': no --wheelhouse" in capsys.readouterr().err


def test_install_is_refused_while_a_server_holds_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = write_package(tmp_path / "src", "locked")
    data = tmp_path / "data"
    data.mkdir()
    with DataDirLock(data).acquire():
        assert main(["package", "install", str(pkg), "--data-dir", str(data)]) == 69
    assert "install through that server (POST /v1/packages)" in capsys.readouterr().err
    assert not (data / "packages" / "locked").exists()
