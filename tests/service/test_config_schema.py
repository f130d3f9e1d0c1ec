"""One declaration per configuration key: parsing, flags, the README table and the recipe agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lfv_edge.cli import build_parser
from lfv_edge.errors import ConfigError
from lfv_edge.service.config import (
    ServiceConfig,
    merge_config,
    parse_config,
    raw_from_flags,
    reference_table,
)
from lfv_edge.service.schema import reference_rows, variant_row_parts
from tests.greengrass.recipes import default_configuration, inspector_recipe_path, load_recipe

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "model": {"path": "m.zip"},
    "mqtt": {"broker": "mqtt://h", "requestsTopic": "a", "resultsTopic": "b"},
}
# A value each flag accepts, as a string (what argparse hands over).
FLAG_VALUES: dict[str, str] = {
    "model.path": "/models/p.zip", "model.device": "cpu", "model.threads": "3",
    "model.thresholdOverride": "0.25", "imageRoots": "/data", "limits.maxPayloadBytes": "4096",
    "queue.size": "5", "queue.overflow": "drop_oldest", "queue.prepareWorkers": "2",
    "queue.waitingMaxBytes": "1000", "queue.spillDir": "/spill", "queue.spillMaxBytes": "0",
    "stopTimeoutS": "4", "model.runtime": "onnx", "model.onnxModel": "/m/model.onnx",
    "statsIntervalS": "7", "logLevel": "debug", "mqtt.broker": "mqtts://b:8883",
    "mqtt.requestsTopic": "r/#", "mqtt.resultsTopic": "res", "mqtt.statusTopic": "st",
    "mqtt.statsTopic": "sts", "mqtt.clientId": "c1", "mqtt.qos": "0", "mqtt.caFile": "ca.pem",
    "mqtt.certFile": "c.pem", "mqtt.keyFile": "k.pem", "mqtt.username": "u",
    "mqtt.passwordFile": "/run/pw", "mqtt.keepaliveS": "20", "mqtt.sharedGroup": "g",
    "mqtt.sessionExpiryS": "60", "mqtt.spoolDir": "/spool", "mqtt.spoolMaxBytes": "100",
    "mqtt.receiveMaximum": "9", "agent.socket": "unix:///tmp/a.sock",
    "http.listen": "127.0.0.1:9090", "http.tokenFile": "/run/web-token", "http.historySize": "50",
    "capture.triggerTopic": "line/triggers", "capture.keep.dir": "/kept",
}  # fmt: skip


def _value_at(config: object, path: str) -> Any:
    """The parsed value of the key at `path` (walking field names by key names)."""
    from lfv_edge.service.schema import keys_of

    node: Any = config
    for name in path.split("."):
        field = next(f for f, spec in keys_of(type(node)) if spec.name == name)
        node = getattr(node, field.name)
    return node


def test_every_flag_sets_its_key() -> None:
    # given every key that declares a serve flag (a source's flags: tests/capture/test_config.py)
    rows = [
        row
        for row in reference_rows(ServiceConfig)
        if row.spec.flag and variant_row_parts(row.path) is None
    ]
    assert {row.path for row in rows} - {"results.includeMask", "model.probe"} == set(
        FLAG_VALUES
    ), "FLAG_VALUES names every flag (update it with the schema)"
    argv = ["serve"]
    for row in rows:
        if row.spec.flag_const is None:
            argv += [str(row.spec.flag), FLAG_VALUES[row.path]]
        else:
            argv.append(str(row.spec.flag))
    # when serve's parser reads all of them
    args = build_parser().parse_args(argv)
    config = parse_config(raw_from_flags(args), {})
    # then each one set its key, converted as in a file
    for row in rows:
        value = _value_at(config, row.path)
        if row.spec.flag_const is not None:
            assert value == row.spec.flag_const, row.path
        else:
            expected = parse_config(merge_config(BASE, _nest(row.path, FLAG_VALUES[row.path])), {})
            assert value == _value_at(expected, row.path), f"{row.spec.flag} sets {row.path}"


def _nest(path: str, value: object) -> dict[str, object]:
    *sections, name = path.split(".")
    raw: dict[str, object] = {name: [value] if path == "imageRoots" else value}
    for section in reversed(sections):
        raw = {section: raw}
    if path.startswith("mqtt.") and path not in ("mqtt.broker",):
        raw = merge_config(raw, {"mqtt": {"broker": "mqtts://b:8883"}})
    if path.startswith("http.") and path != "http.listen":
        raw = merge_config(raw, {"http": {"listen": "9090"}})
    if path in ("mqtt.certFile", "mqtt.keyFile"):
        raw = merge_config(raw, {"mqtt": {"certFile": "c.pem", "keyFile": "k.pem"}})
    return raw


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"queue": {"size": "eight"}}, "queue.size"),
        ({"mqtt": {"qso": 1}}, "mqtt.qso"),
        ({"model": {"path": "m.zip", "colors": {"scratch": "green"}}}, "model.colors.scratch"),
        ({"limits": {"minImageSide": 100, "maxImageSide": 50}}, "limits.minImageSide"),
        ({"imageRoots": [1]}, "imageRoots[0]"),
        ({"agent": {"startModels": ["x"]}}, "agent.startModels"),
    ],
)
def test_errors_carry_the_key_path_as_a_field(override: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(merge_config(BASE, override), {})
    assert raised.value.key == key, f"{raised.value} carries key {key}"
    assert str(raised.value).startswith(f"{key}: "), "and the text starts with it"


def test_the_readme_table_is_the_schema() -> None:
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- config-keys:[^>]*-->\n(.*?)\n<!-- /config-keys -->", readme, re.S)
    assert found, "README.md has the generated configuration table"
    assert found.group(1).strip() == reference_table(), (
        "README's table differs from the schema: paste `lfv-edge config keys` into README.md"
    )


def test_every_key_of_the_recipe_default_configuration_is_declared() -> None:
    # given the component recipe's DefaultConfiguration (accessControl is the nucleus's)
    recipe = load_recipe(inspector_recipe_path())
    defaults = {k: v for k, v in default_configuration(recipe).items() if k != "accessControl"}
    declared = {row.path for row in reference_rows(ServiceConfig)}
    declared |= {row.path.split("[]")[0] for row in reference_rows(ServiceConfig)}  # lists

    def leaves(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict) and not prefix.endswith("colors"):
            return [p for k, v in node.items() for p in leaves(v, f"{prefix}.{k}" if prefix else k)]
        return [prefix]

    # then every leaf is a key of the schema (a typo would be refused at deployment)
    assert sorted(set(leaves(defaults, "")) - declared) == [], "undeclared recipe keys"


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(merge_config(BASE, {"queue": {"size": 0}})))
    run = [sys.executable, "-m", "lfv_edge", "config", "check"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "valid (model, mqtt)" in ok.stdout
    refused = subprocess.run(
        [*run, "--json", str(bad)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2, refused.stderr
    assert json.loads(refused.stdout)["Key"] == "queue.size", refused.stdout
    plain = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert plain.returncode == 2, "a configuration error exits 2"
    assert "queue.size: expected an integer between 1 and 100000, got 0" in plain.stderr
