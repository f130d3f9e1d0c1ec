"""The layers contract (import-linter, run by scripts/check) fails on an import that runs back up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=src.parent, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: scripts/setup installs import-linter")
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src" / "lfv_edge", copy / "lfv_edge",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return copy


def test_the_tree_keeps_its_layers(source_copy: Path) -> None:
    result = _lint(source_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("model/elf.py", "lfv_edge.service.config"),  # the package format reaching the service
        ("inspection/imaging.py", "lfv_edge.transports.mqtt"),  # inspection reaching an adapter
        ("transports/memory.py", "lfv_edge.capture.sources"),  # one adapter into another
    ],
)
def test_an_import_that_breaks_the_layers_fails_the_check(
    source_copy: Path, module: str, upward: str
) -> None:
    # given one import against the layers
    path = source_copy / "lfv_edge" / module
    path.write_text(path.read_text() + f"\nimport {upward}  # noqa\n")
    # when the contract is checked
    result = _lint(source_copy)
    # then it fails and names the import
    assert result.returncode != 0, "the broken contract must fail scripts/check"
    assert "BROKEN" in result.stdout, result.stdout
    assert upward in result.stdout, result.stdout
