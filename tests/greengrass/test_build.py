"""The component zip (scripts/build-component) and GDK's custom build step (--gdk).

The zip is built, not committed: it would go stale with every source change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lfv_edge.errors import BuildError
from lfv_edge.greengrass.build import (
    COMPONENT_NAME,
    ZIP_NAME,
    build_component_zip,
    default_zip_path,
    project_version,
    stage_gdk,
)
from tests.greengrass.recipes import REPO, inspector_recipe_path, load_recipe, manifest_for

REQUIRED = {"pyproject.toml", "src/lfv_edge/__init__.py", "src/lfv_edge/cli.py",
            "src/lfv_edge/transports/ipc.py", "src/lfv_edge/greengrass/component.py"}  # fmt: skip


def forbidden(name: str) -> bool:
    parts = name.split("/")
    return (
        any(part.startswith(".") for part in parts)
        or any(part in {"tests", "__pycache__"} or part.endswith(".egg-info") for part in parts)
        or name.endswith((".pyc", ".so"))
    )


def test_component_zip_carries_the_source_and_nothing_else(tmp_path: Path) -> None:
    # when
    first = build_component_zip(REPO, tmp_path / "a" / ZIP_NAME)
    second = build_component_zip(REPO, tmp_path / "b" / ZIP_NAME)
    # then
    assert first.read_bytes() == second.read_bytes(), "the same tree gives the same bytes"
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    assert set(names) >= REQUIRED, f"missing {REQUIRED - set(names)}"
    assert [n for n in names if forbidden(n)] == [], "no tests, caches, hidden or compiled files"
    assert names == sorted(names), "sorted entries"
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}, "no build-time timestamps"
    assert all(n in {"pyproject.toml", "README.md"} or n.startswith("src/") for n in names), names


def test_component_zip_skips_junk_planted_in_the_tree(tmp_path: Path) -> None:
    # given a tree with everything the zip must not carry
    root = tmp_path / "tree"
    package = root / "src" / "lfv_edge"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "9.9.9"\n')
    (package / "__init__.py").write_text("")
    junk = ["src/lfv_edge/__pycache__/x.cpython-311.pyc", "src/lfv_edge/.hidden",
            "src/.DS_Store", "src/lfv_edge/tests/test_x.py", "src/lfv_edge/test_y.py",
            "src/lfv_edge.egg-info/PKG-INFO", "src/lfv_edge/libdlr.so", "src/lfv_edge/.cache/a"]  # fmt: skip
    for name in junk:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("junk")
    # when
    built = build_component_zip(root, default_zip_path(root))
    # then
    assert built == root / "artifacts" / COMPONENT_NAME / "9.9.9" / ZIP_NAME, (
        "greengrass-cli layout"
    )
    with zipfile.ZipFile(built) as archive:
        assert archive.namelist() == ["pyproject.toml", "src/lfv_edge/__init__.py"], (
            archive.namelist()
        )


def test_component_zip_is_what_the_recipe_installs(tmp_path: Path) -> None:
    recipe = load_recipe(inspector_recipe_path())
    uri = manifest_for(recipe, "amd64")["Artifacts"][0]["URI"]
    expected = REPO / "artifacts" / COMPONENT_NAME / recipe["ComponentVersion"] / Path(uri).name
    assert default_zip_path(REPO) == expected, (
        "scripts/build-component writes the recipe's artifact"
    )
    # when: pip builds it as the Install step does (offline here: no deps, no isolation)
    built = build_component_zip(REPO, tmp_path / ZIP_NAME)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", "-w", str(tmp_path / "wheels"), str(built)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # then
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "wheels").glob("lfv_edge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "lfv-edge = lfv_edge.cli:main" in archive.read(entry_points).decode(), (
            "the lfv-edge command is installed"
        )
    assert "lfv_edge/greengrass/component.py" in names, "the Run command is installed"


def copy_project(dest: Path) -> Path:
    """What GDK needs of the project: its config, root recipe, recipes/, sources, build script."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "gdk-config.json"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    for folder in ("recipes", "scripts"):
        shutil.copytree(REPO / folder, dest / folder)
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "recipe.yaml").symlink_to(Path("recipes") / inspector_recipe_path().name)
    return dest


def test_gdk_custom_build_command_stages_greengrass_build(tmp_path: Path) -> None:
    # given a copy of the project
    project = copy_project(tmp_path / "project")
    command = json.loads((project / "gdk-config.json").read_text())["component"][COMPONENT_NAME][
        "build"
    ]["custom_build_command"]
    # when: GDK runs the custom command as-is from the project folder
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    # then
    assert done.returncode == 0, done.stderr
    version = project_version(project)
    staged = project / "greengrass-build" / "recipes" / "recipe.yaml"
    assert staged.read_bytes() == inspector_recipe_path().read_bytes(), "the recipe as written"
    artifact = project / "greengrass-build" / "artifacts" / COMPONENT_NAME / version / ZIP_NAME
    with zipfile.ZipFile(artifact) as archive:
        assert "src/lfv_edge/cli.py" in archive.namelist(), "the source is in the staged zip"
        assert not any(n.startswith(("tests/", "recipes/")) for n in archive.namelist()), (
            "nothing but the component source"
        )


def test_gdk_staging_refuses_a_version_mismatch(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    config = json.loads((project / "gdk-config.json").read_text())
    config["component"][COMPONENT_NAME]["version"] = "NEXT_PATCH"
    (project / "gdk-config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match="NEXT_PATCH breaks local deployments"):
        stage_gdk(project)
