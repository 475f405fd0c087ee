"""`runwire steps`, `runwire examples`, `runwire demo-data`, and docs/steps.md kept generated."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from pipeline.docs import render_steps_markdown
from pipeline.examples import example_text
from service.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_docs_steps_md_is_the_generator_output() -> None:
    assert (ROOT / "docs" / "steps.md").read_text(encoding="utf-8") == render_steps_markdown(), (
        "docs/steps.md is stale: regenerate with `runwire steps --markdown > docs/steps.md`"
    )


def test_steps_lists_every_contract_step_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["steps"]) == 0
    out = capsys.readouterr().out
    for name in ("diag.sleep", "diag.fail", "diag.emit", "hdf5.read", "integrate.azimuthal"):
        assert f"\n{name}: " in f"\n{out}"
    assert "param seconds (float >= 0, default 1.0)" in out


def test_steps_markdown_and_selection(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["steps", "--markdown"]) == 0
    assert capsys.readouterr().out == render_steps_markdown()
    assert main(["steps", "diag.fail"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diag.fail: ") and "diag.sleep" not in out
    assert main(["steps", "diag.nope"]) == 64
    assert "unknown step(s): diag.nope" in capsys.readouterr().err


def test_examples_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples"]) == 0
    assert capsys.readouterr().out.startswith("saxs")
    assert main(["examples", "saxs"]) == 0
    assert capsys.readouterr().out == example_text("saxs")
    assert main(["examples", "nope"]) == 64
    assert "no example 'nope'" in capsys.readouterr().err


def test_demo_data_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["demo-data", str(tmp_path / "d"), "--count", "2", "--shape", "32x48", "--seed", "3"])
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["background.h5", "dark.h5", "sample_0001.h5", "sample_0002.h5"]
    assert len(capsys.readouterr().out.splitlines()) == 4
    with h5py.File(tmp_path / "d" / "sample_0001.h5") as f:
        assert f["/entry/data/data"].shape[-2:] == (32, 48)


@pytest.mark.parametrize(
    ("args", "fragment"), [(["--shape", "big"], "HxW"), (["--count", "0"], "--count")]
)
def test_demo_data_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert main(["demo-data", str(tmp_path), *args]) == 64
    assert fragment in capsys.readouterr().err


def test_cli_modules_import_only_the_standard_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.cli.run, service.cli.local; "
        "print(sorted(m for m in ('numpy', 'h5py', 'msgspec', 'yaml', 'pipeline') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
