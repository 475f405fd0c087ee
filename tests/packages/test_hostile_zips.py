"""Uploaded package zips are unpacked safely: hostile ones get a clear error and leave
nothing behind (no package, no staging files, nothing outside)."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest
from package_builders import write_package

from pipeline.packages.archive import MAX_FILES
from pipeline.packages.errors import UnsafeArchiveError
from pipeline.packages.install import InstallOptions, install_package


def _zip_of(folder: Path, out: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> Path:  # type: ignore[assignment]
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder)}")
        for info, data in extra:
            zf.writestr(info, data)
    return out


def _assert_nothing_left(packages: Path, outside: Path) -> None:
    assert not [p for p in packages.rglob("*") if p.name != ".staging"], list(packages.rglob("*"))
    assert not outside.exists()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_package(tmp_path / "src", "zipped")


def test_a_well_formed_zip_installs(good: Path, tmp_path: Path) -> None:
    record = install_package(_zip_of(good, tmp_path / "ok.zip"), tmp_path / "packages")
    assert record["status"] == "installed"
    assert (tmp_path / "packages" / "zipped" / "1.0.0" / "pipe.yaml").is_file()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil.py", "escapes the package folder"),
        ("zipped/../../evil.py", "escapes the package folder"),
        ("/tmp/evil.py", "has an absolute path"),
        ("C:/evil.py", "has an absolute path"),
    ],
)
def test_paths_that_escape_are_refused(
    good: Path, tmp_path: Path, member: str, message: str
) -> None:
    archive = _zip_of(good, tmp_path / "bad.zip", [(member, b"print('pwned')")])
    with pytest.raises(UnsafeArchiveError, match=message):
        install_package(archive, tmp_path / "packages")
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_symlinks_are_refused(good: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("zipped/passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip_of(good, tmp_path / "link.zip", [(link, b"/etc/passwd")])
    with pytest.raises(UnsafeArchiveError, match="'zipped/passwd' is a symlink"):
        install_package(archive, tmp_path / "packages")
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_ten_thousand_files_are_refused(good: Path, tmp_path: Path) -> None:
    many = [(f"zipped/junk/{i}.txt", b"") for i in range(10_000)]
    archive = _zip_of(good, tmp_path / "many.zip", many)
    with pytest.raises(UnsafeArchiveError, match=f"more than the limit of {MAX_FILES}"):
        install_package(archive, tmp_path / "packages")
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_a_zip_bomb_is_stopped_at_the_size_limit(good: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zipped/runwire-package.yaml", (good / "runwire-package.yaml").read_bytes())
        with zf.open("zipped/bomb.bin", "w") as member:  # 64 MiB of zeros, ~64 KiB compressed
            for _ in range(64):
                member.write(bytes(1 << 20))
    assert archive.stat().st_size < 1 << 20
    opts = InstallOptions(max_bytes=8 << 20)
    with pytest.raises(UnsafeArchiveError, match=f"more than the limit of {8 << 20} bytes"):
        install_package(archive, tmp_path / "packages", opts)
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_a_bomb_that_lies_about_its_size_is_stopped_while_inflating(
    good: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zipped/bomb.bin", bytes(4 << 20))
    # Rewrite the declared uncompressed size (central directory and local header) to 1 byte.
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("zipped/bomb.bin")
    real = (4 << 20).to_bytes(4, "little")
    assert data.count(real) == 2
    archive.write_bytes(bytes(data).replace(real, (1).to_bytes(4, "little")))
    with pytest.raises(UnsafeArchiveError):
        install_package(archive, tmp_path / "packages", InstallOptions(max_bytes=1 << 20))
    assert info.file_size == 4 << 20
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_a_folder_with_a_symlink_out_is_refused(good: Path, tmp_path: Path) -> None:
    (good / "secrets").symlink_to("/etc")
    with pytest.raises(UnsafeArchiveError, match="secrets is a symlink"):
        install_package(good, tmp_path / "packages")
    _assert_nothing_left(tmp_path / "packages", tmp_path / "evil.py")


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        install_package(junk, tmp_path / "packages")
