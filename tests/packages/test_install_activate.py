"""Installing packages (requirements vendored offline with pip) and activating them, all or
nothing: real wheels, real pip subprocesses, real imports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from package_builders import write_package

from pipeline.packages.activation import activate, active_packages
from pipeline.packages.errors import ActivationError, PackageError
from pipeline.packages.install import InstallOptions, install_package, list_installed
from pipeline.step import REGISTRY


@pytest.fixture(scope="module")
def two_versions(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packages `uses-one` (rwtiny==1.0) and `uses-two` (rwtiny==2.0), installed once."""
    src = tmp_path_factory.mktemp("src")
    packages = tmp_path_factory.mktemp("packages")
    opts = InstallOptions(wheelhouse=wheelhouse)
    for name, pin in (("uses-one", "rwtiny==1.0"), ("uses-two", "rwtiny==2.0")):
        record = install_package(write_package(src, name, requirements=[pin]), packages, opts)
        assert record["status"] == "installed", record
    return packages


def test_requirement_is_vendored_into_the_package_not_the_environment(two_versions: Path) -> None:
    one = two_versions / "uses-one" / "1.0.0"
    assert (one / "vendor" / "rwtiny.py").is_file()
    (record,) = [r for r in list_installed(two_versions) if r["name"] == "uses-one"]
    assert [(d["name"], d["version"]) for d in record["vendored"]] == [("rwtiny", "1.0")]
    assert "rwtiny" in record["pip_log"]
    with pytest.raises(ModuleNotFoundError):
        __import__("rwtiny")  # the server's environment did not get it


def test_activation_imports_the_vendored_module_and_registers_the_step(two_versions: Path) -> None:
    active = activate(two_versions / "uses-one" / "1.0.0")
    assert active.steps == ("uses-one.version",)
    assert sys.modules["rwtiny"].VERSION == "1.0"
    assert active.describe()["vendored"] == {"rwtiny": "1.0"}


def test_two_packages_needing_different_versions_conflict_and_nothing_changes(
    two_versions: Path,
) -> None:
    activate(two_versions / "uses-one" / "1.0.0")
    path_before, registry_before = list(sys.path), dict(REGISTRY)
    with pytest.raises(
        ActivationError,
        match=r"version conflict: package uses-two needs rwtiny 2.0 .* uses-one uses rwtiny 1.0",
    ):
        activate(two_versions / "uses-two" / "1.0.0")
    assert sys.path == path_before and registry_before == REGISTRY
    assert sys.modules["rwtiny"].VERSION == "1.0"
    assert [a.name for a in active_packages()] == ["uses-one"]


def test_on_activate_that_raises_leaves_nothing_half_activated(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    install_package(
        write_package(tmp_path / "src", "refuses", on_activate="raise RuntimeError('no detector')"),
        packages,
    )
    path_before, modules_before, registry_before = list(sys.path), set(sys.modules), dict(REGISTRY)
    with pytest.raises(ActivationError, match="on_activate raised RuntimeError: no detector"):
        activate(packages / "refuses" / "1.0.0")
    assert sys.path == path_before
    assert "refuses_steps" not in sys.modules
    assert not set(sys.modules) - modules_before
    assert registry_before == REGISTRY
    assert active_packages() == []


def test_import_error_fails_activation_naming_the_module(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "broken")
    (pkg / "broken_steps.py").write_text("import not_a_module_anywhere\n")
    install_package(pkg, tmp_path / "packages")
    with pytest.raises(
        ActivationError, match="importing 'broken_steps' failed: ModuleNotFoundError"
    ):
        activate(tmp_path / "packages" / "broken" / "1.0.0")
    assert "broken.version" not in REGISTRY


def test_a_requirement_missing_from_the_wheelhouse_is_one_clear_error(
    wheelhouse: Path, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    pkg = write_package(
        tmp_path / "src", "wants-more", requirements=["rwtiny==1.0", "not-in-house==3"]
    )
    record = install_package(pkg, packages, InstallOptions(wheelhouse=wheelhouse))
    assert record["status"] == "failed"
    assert (
        record["error"] == f"requirement 'not-in-house==3' not found in the wheelhouse {wheelhouse}"
    )
    # Atomic: no vendor directory, half-filled or not; only the record of the failure.
    assert sorted(p.name for p in (packages / "wants-more" / "1.0.0").iterdir()) == ["install.json"]
    assert list((packages / ".staging").iterdir()) == []


def test_requirements_without_wheelhouse_or_network_permission_name_the_requirement(
    tmp_path: Path,
) -> None:
    pkg = write_package(
        tmp_path / "src", "net", requirements=["rwtiny==1.0"], extra_manifest={"network": True}
    )
    record = install_package(pkg, tmp_path / "packages", InstallOptions())
    assert record["status"] == "failed"
    assert record["error"] == (
        "package net needs requirement 'rwtiny==1.0': no --wheelhouse to install "
        "it from, and the server does not run with --allow-package-network"
    )
    pkg2 = write_package(tmp_path / "src", "nonet", requirements=["rwtiny==1.0"])
    record = install_package(pkg2, tmp_path / "packages", InstallOptions(allow_network=True))
    assert "the package does not say `network: true`" in record["error"]


def test_installing_the_same_version_twice_is_refused(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "twice")
    install_package(pkg, tmp_path / "packages")
    with pytest.raises(PackageError, match=r"twice 1\.0\.0 is already installed"):
        install_package(pkg, tmp_path / "packages")


def test_manifest_problems_are_named(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "bad", extra_manifest={"pipelines": ["../outside.yaml"]})
    with pytest.raises(
        PackageError, match=r"pipeline '../outside.yaml' must be a path inside the package"
    ):
        install_package(pkg, tmp_path / "packages")
    assert not (tmp_path / "packages" / "bad").exists()


def test_a_package_module_shadowing_a_loaded_module_is_refused(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "src", "shadow", extra_manifest={"modules": ["json"]})
    (pkg / "json.py").write_text("raise SystemExit('must never be imported')\n")
    install_package(pkg, tmp_path / "packages")
    json_module = sys.modules["json"]
    with pytest.raises(ActivationError, match=r"module 'json' is already loaded from .*json"):
        activate(tmp_path / "packages" / "shadow" / "1.0.0")
    assert sys.modules["json"] is json_module and active_packages() == []


def test_a_second_version_of_an_active_package_is_refused(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    install_package(write_package(tmp_path / "v1", "twov"), packages)
    install_package(write_package(tmp_path / "v2", "twov", version="2.0.0"), packages)
    first = activate(packages / "twov" / "1.0.0", user="a")
    assert activate(packages / "twov" / "1.0.0", user="b") is first  # shared, not re-imported
    with pytest.raises(ActivationError, match=r"package twov 1\.0\.0 is active; 2\.0\.0 cannot"):
        activate(packages / "twov" / "2.0.0")
