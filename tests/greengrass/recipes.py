"""Reading our recipes the way the nucleus and GDK do: YAML, manifests, recipe variables.

Shared by the static recipe checks and the component tests (which start the component with
the recipe's own Run command line). Pure functions over files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lfv_edge.greengrass.build import COMPONENT_NAME, project_version

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
MODEL_COMPONENT = "com.lfvedge.DemoModel"
# Nucleus KernelConfigResolver: {namespace:key} and {component:namespace:key}
CROSS_COMPONENT_VARIABLE = re.compile(r"\{([.\w]+):([.\w]+):([^:}]+)\}")
SAME_COMPONENT_VARIABLE = re.compile(r"\{([.\w]+):([^:}]+)\}")


def inspector_recipe_path() -> Path:
    """recipes/com.lfvedge.Inspector-<pyproject version>.yaml."""
    return RECIPES / f"{COMPONENT_NAME}-{project_version(REPO)}.yaml"


def load_recipe(path: Path) -> dict[str, Any]:
    """A recipe file as the nucleus reads it."""
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path} is a YAML mapping"
    return loaded


def default_configuration(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """ComponentConfiguration.DefaultConfiguration (empty if absent)."""
    configuration = recipe.get("ComponentConfiguration") or {}
    defaults = configuration.get("DefaultConfiguration") or {}
    assert isinstance(defaults, dict), "DefaultConfiguration is an object"
    return defaults


def manifest_for(recipe: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """The manifest a Linux device of `architecture` uses: the first whose Platform matches."""
    for manifest in recipe["Manifests"]:
        platform = manifest.get("Platform") or {}
        if platform.get("os", "*") in ("linux", "*") and platform.get("architecture", "*") in (
            architecture,
            "*",
        ):
            assert isinstance(manifest, dict), "a manifest is an object"
            return manifest
    msg = f"no manifest of {recipe['ComponentName']} matches linux/{architecture}"
    raise LookupError(msg)


def lifecycle_strings(lifecycle: Any) -> list[str]:
    """Every string in a lifecycle (scripts, Setenv values, …): where variables are interpolated."""
    if isinstance(lifecycle, str):
        return [lifecycle]
    if isinstance(lifecycle, dict):
        return [s for value in lifecycle.values() for s in lifecycle_strings(value)]
    if isinstance(lifecycle, list):
        return [s for value in lifecycle for s in lifecycle_strings(value)]
    return []


def script_of(step: Any) -> str:
    """A lifecycle step's script (a step is a string or an object with Script)."""
    if isinstance(step, str):
        return step
    script = step["Script"]
    assert isinstance(script, str), "a step's Script is a string"
    return script


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Replace recipe variables as the nucleus does; a variable without a value raises KeyError.

    `values` is keyed by the variable without braces, e.g. "work:path" or
    "com.lfvedge.DemoModel:artifacts:decompressedPath".
    """

    def replace(match: re.Match[str]) -> str:
        return values[match.group(0)[1:-1]]

    return SAME_COMPONENT_VARIABLE.sub(replace, CROSS_COMPONENT_VARIABLE.sub(replace, text))


def recipe_variables(text: str) -> list[str]:
    """The recipe variables a string uses, without braces."""
    found = [m.group(0)[1:-1] for m in CROSS_COMPONENT_VARIABLE.finditer(text)]
    rest = CROSS_COMPONENT_VARIABLE.sub("", text)
    return found + [m.group(0)[1:-1] for m in SAME_COMPONENT_VARIABLE.finditer(rest)]
