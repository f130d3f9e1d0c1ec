"""Build the Greengrass component artifact, and stage GDK's build folder from `recipes/`.

Owns the component zip's content and bytes. The zip holds what `pip install` needs and nothing
else, with sorted entries, fixed timestamps and permissions (same tree, same bytes):

    com.lfvedge.Inspector.zip
    ├── pyproject.toml
    ├── README.md                 # when present (pyproject's readme)
    └── src/lfv_edge/…            # no tests, caches, compiled objects or hidden files

    scripts/build-component        → artifacts/com.lfvedge.Inspector/<version>/com.lfvedge.Inspector.zip
                                     (the layout `greengrass-cli deployment create --artifactDir` reads)
    scripts/build-component --gdk  → greengrass-build/recipes/recipe.yaml (= recipes/<name>-<version>.yaml)
                                     greengrass-build/artifacts/<name>/<version>/<name>.zip
                                     (what GDK's `custom` build system expects; `gdk component publish`
                                     uploads it and rewrites the artifact URI)

Pure stdlib (no PyYAML on the device or in GDK's environment is assumed).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lfv_edge.errors import BuildError

logger = logging.getLogger(__name__)

COMPONENT_NAME = "com.lfvedge.Inspector"
ZIP_NAME = f"{COMPONENT_NAME}.zip"
GDK_BUILD_DIR = "greengrass-build"
GDK_ROOT_RECIPE = "recipe.yaml"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: no build-time leaks in
_SKIPPED_DIRS = frozenset({"__pycache__", "tests", "test", "build", "dist"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo", ".so", ".o", ".egg-info", ".partial", ".orig"})
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"\s*$', re.MULTILINE)


def project_version(root: Path) -> str:
    """`[project] version` of pyproject.toml (also the component version)."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    match = _VERSION_LINE.search(project)
    if match is None:
        msg = f"{root / 'pyproject.toml'}: no version in [project]"
        raise BuildError(msg)
    return match.group(1)


def _wanted(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith(".") for part in parts):
        return False
    if any(part in _SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
        return False
    name = parts[-1]
    return not (name.startswith("test_") or Path(name).suffix in _SKIPPED_SUFFIXES)


def component_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(name in the zip, file) for everything the component zip carries, sorted by name."""
    if not (root / "pyproject.toml").is_file() or not (root / "src").is_dir():
        msg = f"{root}: not the lfv-edge source tree (pyproject.toml and src/ expected)"
        raise BuildError(msg)
    entries = [("pyproject.toml", root / "pyproject.toml")]
    if (root / "README.md").is_file():
        entries.append(("README.md", root / "README.md"))
    for path in (root / "src").rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and _wanted(relative):
            entries.append((relative.as_posix(), path))
    yield from sorted(entries)


def build_component_zip(root: Path, dest: Path) -> Path:
    """Write the component zip to `dest` (atomically) and return it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, path in component_files(root):
                info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so the mode below is honoured
                info.external_attr = (0o100644) << 16
                archive.writestr(info, path.read_bytes(), compresslevel=9)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def default_zip_path(root: Path) -> Path:
    """Where greengrass-cli's `--artifactDir artifacts` expects our zip."""
    return root / "artifacts" / COMPONENT_NAME / project_version(root) / ZIP_NAME


def _recipe_field(text: str, key: str) -> str | None:
    match = re.search(rf"^{key}:\s*['\"]?([^'\"\n#]+?)['\"]?\s*(?:#.*)?$", text, re.MULTILINE)
    return match.group(1) if match else None


def stage_gdk(root: Path) -> Path:
    """Fill `greengrass-build/` as GDK's `custom` build system must; returns the staged recipe.

    GDK finds the recipe only as `recipe.yaml` in the project root (a symlink to
    `recipes/<name>-<version>.yaml` here) and does not transform recipes of custom builds, so
    the name and version are checked against gdk-config.json and pyproject.toml instead.

    Raises:
        BuildError: the three disagree, the version is NEXT_PATCH, or a file is missing.
    """
    try:
        gdk = json.loads((root / "gdk-config.json").read_text(encoding="utf-8"))
        [(name, component)] = gdk["component"].items()
        version = str(component["version"])
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        msg = f"{root / 'gdk-config.json'}: cannot read the one component's name and version: {exc}"
        raise BuildError(msg) from exc
    if name != COMPONENT_NAME:
        msg = f"gdk-config.json names {name}, the component is {COMPONENT_NAME}"
        raise BuildError(msg)
    if version != project_version(root):
        msg = (
            f"gdk-config.json version {version} != pyproject.toml version "
            f"{project_version(root)} (use a fixed version: NEXT_PATCH breaks local deployments)"
        )
        raise BuildError(msg)
    source = root / "recipes" / f"{name}-{version}.yaml"
    if not source.is_file():
        msg = f"{source}: no recipe for {name} {version}"
        raise BuildError(msg)
    text = source.read_text(encoding="utf-8")
    for key, expected in (("ComponentName", name), ("ComponentVersion", version)):
        if _recipe_field(text, key) != expected:
            msg = f"{source}: {key} is not {expected}"
            raise BuildError(msg)
    build = root / GDK_BUILD_DIR
    recipes, artifacts = build / "recipes", build / "artifacts" / name / version
    for folder in (recipes, artifacts):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    staged = recipes / GDK_ROOT_RECIPE
    staged.write_text(text, encoding="utf-8")
    build_component_zip(root, artifacts / ZIP_NAME)
    return staged


def main(argv: Sequence[str] | None = None) -> int:
    """`scripts/build-component [--gdk] [--root DIR] [--out ZIP]`."""
    parser = argparse.ArgumentParser(
        prog="build-component", description="Build the com.lfvedge.Inspector component zip."
    )
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[3])
    parser.add_argument("--out", type=Path, help="zip path (default: the artifacts/ layout)")
    parser.add_argument(
        "--gdk", action="store_true", help="stage greengrass-build/ for `gdk component build`"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.root.resolve()
    try:
        if args.gdk:
            staged = stage_gdk(root)
            logger.info("staged %s and its artifacts for GDK", staged.relative_to(root))
            return 0
        out = build_component_zip(root, args.out or default_zip_path(root))
    except (BuildError, OSError) as exc:
        print(f"build-component: {exc}", file=sys.stderr)
        return 1
    logger.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
