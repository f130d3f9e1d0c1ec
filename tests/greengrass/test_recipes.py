"""Static checks of every recipe, the greengrass-cli layout and gdk-config.json.

Rules from the recipe reference, the nucleus and GDK 1.6 (docs: docs/greengrass.md, "Greengrass rules this component relies on");
accessControl coverage is decided by the fake nucleus's copy of the nucleus's matcher.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import lfv_edge
from lfv_edge.errors import ConfigError
from lfv_edge.greengrass.build import COMPONENT_NAME, project_version
from lfv_edge.service.config import merge_config, parse_config
from lfv_edge.transports.ipc import to_service_config, without_access_control
from tests.fake_nucleus.authorization import (
    MQTT_PROXY_SERVICE,
    PUBSUB_SERVICE,
    LookupPolicy,
    check,
    iter_policies,
    resource_matches,
)
from tests.greengrass.recipes import (
    MODEL_COMPONENT,
    RECIPES,
    REPO,
    default_configuration,
    inspector_recipe_path,
    lifecycle_strings,
    load_recipe,
    manifest_for,
    recipe_variables,
    script_of,
)

MAX_RECIPE_BYTES = 16_000  # GDK consts.MAX_RECIPE_FILE_SIZE_BYTES
NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
LIFECYCLE_STEPS = {"setenv", "install", "run", "startup", "shutdown", "recover", "bootstrap"}
STEP_KEYS = {"Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv"}
OWN_VARIABLES = {"artifacts:path", "artifacts:decompressedPath", "work:path", "kernel:rootPath",
                 "iot:thingName"}  # fmt: skip
OPERATIONS = {
    PUBSUB_SERVICE: {"aws.greengrass#PublishToTopic", "aws.greengrass#SubscribeToTopic", "*"},
    MQTT_PROXY_SERVICE: {
        "aws.greengrass#PublishToIoTCore",
        "aws.greengrass#SubscribeToIoTCore",
        "*",
    },
}
LOOKUP = {PUBSUB_SERVICE: LookupPolicy.STANDARD, MQTT_PROXY_SERVICE: LookupPolicy.MQTT_STYLE}
THING = "any-thing-name"
DEMO_ENVIRON = {"AWS_IOT_THING_NAME": THING, "LFV_EDGE_DEMO_MODEL": "/gg/demo/model"}
RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


def pointer_exists(document: Any, pointer: str) -> bool:
    """Whether an RFC 6901 pointer names a node of `document` (case-insensitive keys, as on device)."""
    node = document
    for token in pointer.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping):
            return False
        matches = [k for k in node if k.lower() == key.lower()]
        if not matches:
            return False
        node = node[matches[0]]
    return True


def variable_problems(
    recipe: Mapping[str, Any], recipes: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Recipe variables in the lifecycles that the nucleus could not resolve (left as literal text)."""
    problems: list[str] = []
    defaults = default_configuration(recipe)
    dependencies = set(recipe.get("ComponentDependencies") or {})
    for manifest in recipe["Manifests"]:
        for text in lifecycle_strings(manifest.get("Lifecycle") or {}):
            for variable in recipe_variables(text):
                parts = variable.split(":", 2)
                if len(parts) == 2:
                    if parts[0] == "configuration":
                        if not pointer_exists(defaults, parts[1]):
                            problems.append(f"{{{variable}}}: no such DefaultConfiguration key")
                    elif variable not in OWN_VARIABLES:
                        problems.append(f"{{{variable}}}: not a recipe variable")
                    continue
                component, namespace, key = parts
                if component not in dependencies:
                    problems.append(f"{{{variable}}}: {component} is not a direct dependency")
                elif namespace == "configuration":
                    other = recipes.get(component)
                    if other is not None and not pointer_exists(default_configuration(other), key):
                        problems.append(
                            f"{{{variable}}}: not in {component}'s DefaultConfiguration"
                        )
                elif f"{namespace}:{key}" not in {"artifacts:path", "artifacts:decompressedPath"}:
                    problems.append(f"{{{variable}}}: not a cross-component variable")
    return problems


def all_recipes() -> dict[str, dict[str, Any]]:
    return {load_recipe(path)["ComponentName"]: load_recipe(path) for path in RECIPE_FILES}


def iter_values(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from iter_values(value, f"{path}/{key}")
    else:
        yield path, node


DOCS = REPO / "docs" / "greengrass.md"
TEMPLATE_MARKER = "# model component template"


def documented_template(folder: Path) -> Path:
    """The model component template of docs/greengrass.md, saved as `<name>-<version>.yaml`."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    [text] = [block for block in blocks if block.startswith(TEMPLATE_MARKER)]
    recipe = yaml.safe_load(text)
    path = folder / f"{recipe['ComponentName']}-{recipe['ComponentVersion']}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", RECIPE_FILES, ids=[p.name for p in RECIPE_FILES])
def test_recipe_follows_the_recipe_reference_and_gdk_schema(path: Path) -> None:
    check_recipe(path)


def test_documented_model_component_template_is_a_valid_model_component(tmp_path: Path) -> None:
    path = documented_template(tmp_path)
    check_recipe(path)
    [manifest] = load_recipe(path)["Manifests"]
    [artifact] = manifest["Artifacts"]
    assert manifest["Lifecycle"] == {}, "a model component runs nothing"
    assert (artifact["Unarchive"], artifact["Permission"]["Read"]) == ("ZIP", "ALL"), (
        "unpacked, and readable by the Inspector's user"
    )


def check_recipe(path: Path) -> None:
    """The recipe reference's and GDK's rules for one recipe file."""
    recipe = load_recipe(path)
    assert path.stat().st_size <= MAX_RECIPE_BYTES, "GDK refuses recipes above 16,000 bytes"
    for key in ("RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"):
        assert key in recipe, f"{path.name}: {key} is required"
    assert recipe["RecipeFormatVersion"] == "2020-01-25", "the only recipe format (a string)"
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    assert NAME.match(name), f"{name}: letters, digits, - _ . only"
    assert len(name) <= 128, name
    assert not name.lower().startswith("aws.greengrass"), "would replace a public component"
    assert SEMVER.match(str(version)), f"{version} is semver"
    assert path.name == f"{name}-{version}.yaml", "greengrass-cli --recipeDir naming"
    assert "ComponentType" not in recipe, "the service sets it"
    for manifest in recipe["Manifests"]:
        assert manifest["Platform"]["os"] == "linux", manifest["Platform"]
        lifecycle = manifest.get("Lifecycle") or {}
        assert {step.lower() for step in lifecycle} <= LIFECYCLE_STEPS, lifecycle.keys()
        for step, body in lifecycle.items():
            if step.lower() != "setenv" and isinstance(body, dict):
                assert set(body) <= STEP_KEYS, f"{step}: {set(body) - STEP_KEYS}"
                assert not body.get("RequiresPrivilege"), f"{step} must run unprivileged"
        artifacts = manifest.get("Artifacts") or []
        names = [Path(a["URI"]).name for a in artifacts]
        assert len(names) == len(set(names)), "artifact file names are unique within a manifest"
        for artifact in artifacts:
            assert artifact["URI"].startswith("s3://"), artifact["URI"]
            assert artifact.get("Unarchive", "NONE") in ("ZIP", "NONE"), artifact
            for permission in (artifact.get("Permission") or {}).values():
                assert permission in ("NONE", "OWNER", "ALL"), artifact
    assert variable_problems(recipe, all_recipes()) == [], "every recipe variable resolves"


def test_variable_check_catches_what_the_nucleus_would_leave_as_text() -> None:
    # given our recipe with a bad configuration pointer and an undeclared dependency
    recipe = copy.deepcopy(load_recipe(inspector_recipe_path()))
    run = recipe["Manifests"][0]["Lifecycle"]
    run["Run"]["Script"] += " --x {configuration:/model/pth} {com.other.Model:artifacts:path}"
    # when
    problems = variable_problems(recipe, all_recipes())
    # then
    assert sorted(problems) == [
        "{com.other.Model:artifacts:path}: com.other.Model is not a direct dependency",
        "{configuration:/model/pth}: no such DefaultConfiguration key",
    ], problems


def test_inspector_default_configuration_is_what_parse_config_accepts() -> None:
    defaults = default_configuration(load_recipe(inspector_recipe_path()))
    # then: the recipe's keys are lfv_edge.service.config's keys (unknown keys would be refused)
    parsed = parse_config(without_access_control(defaults), {"AWS_IOT_THING_NAME": THING})
    assert parsed.ipc is not None, "ipc is configured"
    assert parsed.ipc.iot_core_requests_topic == f"lfv/{THING}/requests", "{thingName} expands"
    component = to_service_config(defaults, DEMO_ENVIRON)
    assert component.model is not None, "model is configured"
    assert component.model.path == Path("/gg/demo/model"), "the component expands Setenv's value"
    numbers = [(path, value) for path, value in iter_values(defaults)
               if isinstance(value, int | float) and not isinstance(value, bool)]  # fmt: skip
    assert numbers == [], f"numbers are strings, as Greengrass advises: {numbers}"
    for key in ("model", "ipc", "imageRoots", "queue", "limits", "results", "statsIntervalS",
                "logLevel", "sources", "capture", "accessControl"):  # fmt: skip
        assert key in defaults, f"DefaultConfiguration documents {key}"


def required_grants(defaults: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(service, operation, topic) for every topic the component uses, {thingName} expanded."""
    ipc = defaults["ipc"]
    wanted = [
        (PUBSUB_SERVICE, "aws.greengrass#SubscribeToTopic", ipc.get("localRequestsTopic")),
        (PUBSUB_SERVICE, "aws.greengrass#PublishToTopic", ipc.get("localResultsTopic")),
        (MQTT_PROXY_SERVICE, "aws.greengrass#SubscribeToIoTCore", ipc.get("iotCoreRequestsTopic")),
        (MQTT_PROXY_SERVICE, "aws.greengrass#PublishToIoTCore", ipc.get("iotCoreResultsTopic")),
        (MQTT_PROXY_SERVICE, "aws.greengrass#PublishToIoTCore", ipc.get("statsTopic")),
    ]
    # Capture: trigger topics are local subscriptions, source status goes where verdicts go
    # (local pub/sub when localResultsTopic is set).
    capture = defaults.get("capture") or {}
    triggers = [capture.get("triggerTopic")] + [
        source.get("triggerTopic") for source in defaults.get("sources") or []
    ]
    wanted += [(PUBSUB_SERVICE, "aws.greengrass#SubscribeToTopic", t) for t in triggers]
    wanted.append((PUBSUB_SERVICE, "aws.greengrass#PublishToTopic", capture.get("statusTopic")))
    return [(s, o, t.replace("{thingName}", THING)) for s, o, t in wanted if t]


def test_access_control_grants_exactly_the_configured_topics() -> None:
    recipe = load_recipe(inspector_recipe_path())
    defaults = default_configuration(recipe)
    grants = required_grants(defaults)
    # every call the component makes is allowed …
    for service, operation, topic in grants:
        assert check(defaults, service, operation, topic, LOOKUP[service]), (
            f"{operation} on {topic} is allowed"
        )
    # … and every operation × resource of every policy is one of those calls
    assert set(defaults["accessControl"]) == {PUBSUB_SERVICE, MQTT_PROXY_SERVICE}, (
        "both IPC services the component uses, nothing else"
    )
    for service in (PUBSUB_SERVICE, MQTT_PROXY_SERVICE):
        for policy in iter_policies(defaults, service):
            assert policy.policy_id.startswith(f"{COMPONENT_NAME}:"), "policy ids are unique"
            assert set(policy.operations) <= OPERATIONS[service], policy
            assert "*" not in policy.operations, f"{policy.policy_id}: least privilege"
            for operation in policy.operations:
                for resource in policy.resources:
                    assert any(
                        s == service and o == operation
                        and resource_matches(resource, topic, LOOKUP[service])
                        for s, o, topic in grants
                    ), f"{policy.policy_id}: {operation} on {resource} is not needed"  # fmt: skip
    ids = {policy.policy_id for s in OPERATIONS for policy in iter_policies(defaults, s)}
    assert {f"{COMPONENT_NAME}:mqttproxy:1", f"{COMPONENT_NAME}:pubsub:1"} <= ids, ids


def test_access_control_check_notices_a_topic_change_without_its_policy() -> None:
    # given a MERGE that moves the local requests topic but forgets accessControl
    defaults = copy.deepcopy(default_configuration(load_recipe(inspector_recipe_path())))
    defaults["ipc"]["localRequestsTopic"] = "line3/requests"
    # then
    service, operation, topic = required_grants(defaults)[0]
    assert not check(defaults, service, operation, topic, LOOKUP[service]), (
        "the nucleus would deny the new subscription"
    )


def test_inspector_manifests_install_and_run_as_documented() -> None:
    recipe = load_recipe(inspector_recipe_path())
    for architecture in ("amd64", "aarch64"):
        manifest = manifest_for(recipe, architecture)
        assert manifest["Platform"]["architecture"] == architecture, "a manifest per architecture"
        lifecycle = manifest["Lifecycle"]
        run = script_of(lifecycle["Run"])
        assert run == "exec '{work:path}/.venv/bin/lfv-edge' greengrass", run
        install = lifecycle["Install"]
        script = script_of(install)
        assert install["Timeout"] >= 900, "pip installs ~200 MB of wheels on a slow device"
        assert 'pip install --no-cache-dir --disable-pip-version-check --quiet "$ZIP"' in script, (
            "installs our zip with pip"
        )
        assert 'python3 -m venv "$VENV"' in script, "a venv …"
        assert "VENV='{work:path}/.venv'" in script, "… in the work folder"
        assert 'if [ -f "$STAMP" ]' in script, "skipped when already built for this zip"
        assert "LFV_EDGE_DEMO_MODEL" in lifecycle["Setenv"], architecture
        uris = [a["URI"] for a in manifest["Artifacts"]]
        assert [Path(u).name for u in uris] == [f"{COMPONENT_NAME}.zip"], uris
    amd64 = script_of(manifest_for(recipe, "amd64")["Lifecycle"]["Install"])
    aarch64 = script_of(manifest_for(recipe, "aarch64")["Lifecycle"]["Install"])
    assert 'lfv-edge" runtime install' in amd64, "x86-64 fetches the CPU libdlr.so"
    assert 'lfv-edge" runtime install' not in aarch64, "no PyPI CPU libdlr.so there: must not fail"
    assert "enable_phone_home" in aarch64, "DLR telemetry off on aarch64 too"


def test_versions_agree() -> None:
    recipe = load_recipe(inspector_recipe_path())
    gdk = json.loads((REPO / "gdk-config.json").read_text())
    assert recipe["ComponentVersion"] == project_version(REPO) == lfv_edge.__version__, (
        "recipe, pyproject.toml and lfv_edge.__version__ agree"
    )
    assert gdk["component"][COMPONENT_NAME]["version"] == recipe["ComponentVersion"], (
        "a fixed semver: NEXT_PATCH breaks greengrass-cli local deployments"
    )


def test_model_component_is_readable_by_the_inspector() -> None:
    recipes = all_recipes()
    inspector = load_recipe(inspector_recipe_path())
    model = recipes[MODEL_COMPONENT]
    requirement = inspector["ComponentDependencies"][MODEL_COMPONENT]
    assert requirement["VersionRequirement"] == ">=1.0.0 <2.0.0", requirement
    assert model["ComponentVersion"].startswith("1."), "satisfies the Inspector's requirement"
    for manifest in model["Manifests"]:
        assert manifest.get("Lifecycle") == {}, "a model component runs nothing"
        [artifact] = manifest["Artifacts"]
        assert artifact["Unarchive"] == "ZIP", "the Inspector reads the extracted folder"
        assert artifact["Permission"]["Read"] == "ALL", "read by another component's user"
        zip_name = Path(artifact["URI"]).name
        folder = Path(zip_name).stem  # Unarchive: ZIP extracts a.zip into <decompressedPath>/a/
        setenv = manifest_for(inspector, "amd64")["Lifecycle"]["Setenv"]["LFV_EDGE_DEMO_MODEL"]
        assert setenv == f"{{{MODEL_COMPONENT}:artifacts:decompressedPath}}/{folder}", setenv


def test_demo_model_artifact_is_in_the_local_deployment_layout() -> None:
    model = all_recipes()[MODEL_COMPONENT]
    for manifest in model["Manifests"]:
        for artifact in manifest["Artifacts"]:
            name = Path(artifact["URI"]).name
            local = REPO / "artifacts" / MODEL_COMPONENT / model["ComponentVersion"] / name
            assert local.is_file(), f"greengrass-cli --artifactDir artifacts needs {local}"


def test_environment_expansion_names_the_key_when_setenv_is_missing() -> None:
    defaults = default_configuration(load_recipe(inspector_recipe_path()))
    with pytest.raises(ConfigError, match=r"model\.path: \$\{LFV_EDGE_DEMO_MODEL\} is not set"):
        to_service_config(defaults, {"AWS_IOT_THING_NAME": THING})
    with pytest.raises(ConfigError, match="mqtt: not used by the Greengrass component"):
        to_service_config({**defaults, "mqtt": {"broker": "mqtt://x"}}, DEMO_ENVIRON)


# ------------------------------------------------------------------------------ GDK


def test_gdk_config_follows_gdk_1_6_rules() -> None:
    gdk = json.loads((REPO / "gdk-config.json").read_text())
    assert set(gdk) <= {"component", "gdk_version", "test-e2e"}, gdk.keys()
    assert SEMVER.match(gdk["gdk_version"]), "gdk_version is required and semver"
    assert tuple(int(p) for p in gdk["gdk_version"].split(".")) >= (1, 6, 0), "GDK 1.6 or newer"
    [(name, component)] = gdk["component"].items()  # exactly one component
    assert name == COMPONENT_NAME, name
    assert {"author", "version", "build", "publish"} <= set(component), component.keys()
    build = component["build"]
    assert build["build_system"] == "custom", "stages greengrass-build/ from recipes/"
    command = build["custom_build_command"]
    assert isinstance(command, list), "an argv list: no shell parsing"
    assert shutil.which(command[0]), f"{command[0]} is on PATH"
    script = REPO / command[1]
    assert os.access(script, os.X_OK), f"{script} exists and is executable"
    assert component["publish"]["bucket"], "publish.bucket is required"
    # GDK looks for exactly one of recipe.json / recipe.yaml in the project root
    roots = [p for p in ("recipe.json", "recipe.yaml") if (REPO / p).exists()]
    assert roots == ["recipe.yaml"], roots
    assert (REPO / "recipe.yaml").resolve() == inspector_recipe_path().resolve(), (
        "the root recipe is recipes/ (one source of truth)"
    )
    assert "greengrass-build/" in (REPO / ".gitignore").read_text().splitlines(), (
        "GDK's build folder is not committed"
    )


def test_documented_configuration_updates_are_valid_and_authorized() -> None:
    # given every JSON example of docs/greengrass.md that updates the Inspector's configuration
    defaults = default_configuration(load_recipe(inspector_recipe_path()))
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.DOTALL)]
    updates: list[dict[str, Any]] = []
    for block in blocks:
        inspector = block.get("components", block).get(COMPONENT_NAME, {})
        update = inspector.get("configurationUpdate", inspector)
        merge = update.get("merge", update.get("MERGE"))
        updates.append(
            {
                "merge": json.loads(merge) if isinstance(merge, str) else merge or {},
                "reset": update.get("reset", []),
            }
        )
    assert len(updates) == 3, "the fleet deployment, the topic MERGE and the RESET examples"
    environ = {**DEMO_ENVIRON, "LFV_EDGE_GREENGRASS_ROOT": "/greengrass/v2"}
    for update in updates:
        # then: RESET pointers name real keys, and the merged configuration parses and is allowed
        for pointer in update["reset"]:
            assert pointer_exists(defaults, pointer), f"RESET {pointer} names a default"
        merged = merge_config(defaults, update["merge"])
        to_service_config(merged, environ)
        for service, operation, topic in required_grants(merged):
            assert check(merged, service, operation, topic, LOOKUP[service]), (
                f"{operation} on {topic} is allowed after the documented MERGE"
            )
