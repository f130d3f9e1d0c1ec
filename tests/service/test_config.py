"""Configuration parsing: every section, key-path errors, strings as numbers, {thingName}."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lfv_edge.errors import ConfigError
from lfv_edge.service.config import (
    AgentConfig,
    AgentModelConfig,
    OverflowPolicy,
    merge_config,
    parse_config,
    read_config_file,
    read_config_mapping,
)

THING = {"AWS_IOT_THING_NAME": "press-7"}

FULL = {
    "model": {"path": "/models/pkg.zip", "device": "cpu", "threads": 2, "thresholdOverride": 0.4,
              "colors": {"scratch": "#23a436"}},
    "imageRoots": ["/data/images", "/data/more"],
    "limits": {"maxPayloadBytes": 1 << 20, "minImageSide": 32, "maxImageSide": 2048},
    "queue": {"size": 4, "overflow": "drop_oldest"},
    "results": {"includeMask": False},
    "statsIntervalS": 15, "logLevel": "debug",
    "mqtt": {"broker": "mqtts://broker:8883", "requestsTopic": "lfv/{thingName}/requests",
             "resultsTopic": "lfv/{thingName}/results", "statusTopic": "lfv/{thingName}/status",
             "statsTopic": "lfv/{thingName}/stats", "clientId": "{thingName}", "qos": 2,
             "caFile": "ca.pem", "certFile": "cert.pem", "keyFile": "key.pem",
             "username": "edge", "passwordFile": "/run/secret", "keepaliveS": 45,
             "sharedGroup": "line-3", "sessionExpiryS": 600, "spoolDir": "/var/spool/lfv",
             "spoolMaxBytes": 1024},
    "ipc": {"localRequestsTopic": "lfv/requests", "localResultsTopic": "lfv/results",
            "iotCoreRequestsTopic": "lfv/{thingName}/req", "iotCoreResultsTopic": "lfv/{thingName}/res",
            "statsTopic": "lfv/stats", "timeoutS": 5},
    "agent": {"socket": "unix:///tmp/agent.sock", "socketMode": "0600",
              "models": {"parts": "/models/parts.zip"}, "startModels": ["parts"],
              "maxPendingPerModel": 2, "publishResults": True},
}  # fmt: skip


def test_every_section_parses_into_typed_values() -> None:
    # given a configuration using every key
    # when it is parsed
    config = parse_config(FULL, THING)
    # then every section is typed, with units and defaults applied
    assert config.model is not None
    assert config.model.path == Path("/models/pkg.zip"), "model.path is a Path"
    assert (config.model.device, config.model.threads, config.model.threshold_override) == (
        "cpu",
        2,
        0.4,
    )
    assert config.model.colors == {"scratch": "#23A436"}, "colours are normalised to upper case"
    assert config.image_roots == (Path("/data/images"), Path("/data/more")), "imageRoots"
    assert (config.limits.max_payload_bytes, config.limits.min_image_side, config.limits.max_image_side) == (
        1 << 20, 32, 2048)  # fmt: skip
    assert config.queue.size == 4, "queue.size"
    assert config.queue.overflow is OverflowPolicy.DROP_OLDEST, "queue.overflow"
    assert config.results.include_mask is False, "results.includeMask"
    assert (config.stats_interval_s, config.log_level) == (15.0, "DEBUG"), "log level upper-cased"
    mqtt = config.mqtt
    assert mqtt is not None
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("broker", 8883, True), "broker URL parts"
    assert mqtt.requests_topic == "lfv/press-7/requests", "{thingName} in topics"
    assert mqtt.client_id == "press-7", "{thingName} in the client id"
    assert (mqtt.qos, mqtt.keepalive_s, mqtt.session_expiry_s, mqtt.spool_max_bytes) == (
        2,
        45,
        600,
        1024,
    )
    assert (mqtt.shared_group, mqtt.username) == ("line-3", "edge"), "sharedGroup and username"
    assert mqtt.spool_dir == Path("/var/spool/lfv"), "spoolDir is a Path"
    assert config.ipc is not None
    assert config.ipc.iot_core_requests_topic == "lfv/press-7/req", "{thingName} in IPC topics"
    assert config.ipc.timeout_s == 5.0, "ipc.timeoutS"
    assert config.agent == AgentConfig(socket="unix:///tmp/agent.sock", socket_mode=0o600,
                                       models={"parts": AgentModelConfig(Path("/models/parts.zip"))}, start_models=("parts",),
                                       max_pending_per_model=2, publish_results=True), "agent section"  # fmt: skip


def test_defaults_for_a_minimal_mqtt_configuration() -> None:
    # given only what serve needs
    raw = {"model": {"path": "m.zip"}, "mqtt": {"broker": "mqtt://localhost",
           "requestsTopic": "a/#", "resultsTopic": "b"}}  # fmt: skip
    # when parsed
    config = parse_config(raw, {})
    # then the documented defaults apply
    assert config.mqtt is not None
    assert (config.mqtt.port, config.mqtt.qos, config.mqtt.session_expiry_s) == (1883, 1, 3600)
    assert config.mqtt.spool_dir is None, "no spool folder: the in-memory spool"
    assert (config.queue.size, config.queue.overflow) == (8, OverflowPolicy.REJECT), (
        "queue defaults"
    )
    assert config.results.include_mask is True, "masks by default"
    assert config.mqtt.requests_topic == "a/#", "a subscription may use wildcards"


def test_numbers_and_booleans_may_be_strings_as_greengrass_sends_them() -> None:
    # given numbers and booleans written as strings (and a float that is an integer)
    raw = {"model": {"path": "m.zip", "threads": "3", "thresholdOverride": "0.25"},
           "queue": {"size": 8.0}, "results": {"includeMask": "false"}, "statsIntervalS": "2.5",
           "mqtt": {"broker": "mqtt://h:1", "requestsTopic": "a", "resultsTopic": "b", "qos": "0",
                    "spoolMaxBytes": "4096"}}  # fmt: skip
    # when parsed
    config = parse_config(raw, {})
    # then they become numbers and booleans
    assert config.model is not None
    assert config.model.threads == 3, "'3' → 3"
    assert config.model.threshold_override == 0.25, "'0.25' → 0.25"
    assert config.queue.size == 8, "8.0 → 8"
    assert config.results.include_mask is False, "'false' → False"
    assert config.stats_interval_s == 2.5, "'2.5' → 2.5"
    assert config.mqtt is not None
    assert (config.mqtt.qos, config.mqtt.spool_max_bytes) == (0, 4096), "mqtt numbers"


BASE = {
    "model": {"path": "m.zip"},
    "mqtt": {"broker": "mqtt://h", "requestsTopic": "a", "resultsTopic": "b"},
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"modle": {}}, "modle: unknown key (known: model, imageRoots"),
        ({"model": {"path": "m.zip", "treads": 2}}, "model.treads: unknown key"),
        ({"mqtt": {"qso": 1}}, "mqtt.qso: unknown key (known: broker,"),
        (
            {"queue": {"size": "eight"}},
            "queue.size: expected an integer between 1 and 100000, got 'eight'",
        ),
        ({"queue": {"size": 0}}, "queue.size: expected an integer between 1 and 100000, got 0"),
        (
            {"queue": {"overflow": "drop_newest"}},
            "queue.overflow: expected one of reject, drop_oldest",
        ),
        ({"mqtt": {"qos": 3}}, "mqtt.qos: expected an integer between 0 and 2, got 3"),
        ({"mqtt": {"qos": True}}, "mqtt.qos: expected an integer"),
        ({"mqtt": {"broker": "http://h"}}, "mqtt.broker: expected mqtt://HOST[:PORT] or mqtts://"),
        ({"mqtt": {"broker": "mqtt://h:notaport"}}, "mqtt.broker: bad port"),
        ({"mqtt": {"resultsTopic": "b/#"}}, "mqtt.resultsTopic: a publish topic cannot contain"),
        ({"mqtt": {"statusTopic": "s/+"}}, "mqtt.statusTopic: a publish topic cannot contain"),
        (
            {"mqtt": {"requestsTopic": "lfv/{thingName}/r"}},
            "mqtt.requestsTopic: uses {thingName} but AWS_IOT_THING_NAME",
        ),
        (
            {"mqtt": {"clientId": "{thingName}"}},
            "mqtt.clientId: uses {thingName} but AWS_IOT_THING_NAME",
        ),
        ({"mqtt": {"certFile": "c.pem"}}, "mqtt.certFile: certFile and keyFile go together"),
        ({"mqtt": {"caFile": "ca.pem"}}, "mqtt.broker: caFile/certFile need an mqtts:// broker"),
        ({"mqtt": {"sharedGroup": "a/b"}}, "mqtt.sharedGroup: letters, digits, _ and - only"),
        ({"mqtt": {"keepaliveS": 1}}, "mqtt.keepaliveS: expected an integer between 5 and 65535"),
        ({"mqtt": "mqtt://h"}, "mqtt: expected an object"),
        (
            {"limits": {"minImageSide": 100, "maxImageSide": 50}},
            "limits.minImageSide: larger than maxImageSide",
        ),
        (
            {"limits": {"maxPayloadBytes": 10}},
            "limits.maxPayloadBytes: expected an integer between 1024",
        ),
        (
            {"results": {"includeMask": "yes"}},
            "results.includeMask: expected true or false, got 'yes'",
        ),
        (
            {"model": {"path": "m.zip", "colors": {"scratch": "green"}}},
            "model.colors.scratch: expected a colour",
        ),
        (
            {"model": {"path": "m.zip", "device": "tpu"}},
            "model.device: expected one of auto, cpu, gpu",
        ),
        ({"model": {"path": ""}}, "model.path: required"),
        ({"imageRoots": [1]}, "imageRoots[0]: expected a string"),
        ({"statsIntervalS": "nan"}, "statsIntervalS: expected a number"),
        ({"logLevel": "loud"}, "logLevel: expected one of DEBUG, INFO, WARNING, ERROR"),
        ({"ipc": {"timeoutS": 1}}, "ipc: set localRequestsTopic and/or iotCoreRequestsTopic"),
        ({"ipc": {"localRequestsTopic": "a"}}, "ipc.localResultsTopic: required when"),
        ({"agent": {"socket": "/tmp/x.sock"}}, "agent.socket: expected unix:///path/to.sock"),
        ({"agent": {"socketMode": "rw"}}, "agent.socketMode: expected an octal mode"),
        ({"agent": {"startModels": ["x"]}}, "agent.startModels: 'x' is not in models"),
    ],
)
def test_errors_name_the_key_path(override: dict[str, object], message: str) -> None:
    # given a configuration with one mistake
    raw = merge_config(BASE, override)
    # when it is parsed
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, {})
    # then the error names the key path and what was expected
    assert message in str(raised.value), f"expected {message!r} in {raised.value}"


def test_model_is_required_once_a_transport_is_configured() -> None:
    # given an mqtt section without a model
    raw = {"mqtt": BASE["mqtt"]}
    # when parsed
    with pytest.raises(ConfigError, match=r"^model: required when mqtt or ipc is configured"):
        parse_config(raw, {})
    # then (without transports) a model-less configuration is fine for the agent
    assert parse_config({"agent": {}}, {}).model is None, "the agent may start without a model"


def test_image_roots_may_be_one_string_with_path_separators() -> None:
    # given roots as one string, as a shell variable would give them
    raw = {"imageRoots": f"/a{os.pathsep}/b"}
    # when parsed
    # then they are split
    assert parse_config(raw, {}).image_roots == (Path("/a"), Path("/b")), "split on os.pathsep"


def test_merge_config_merges_objects_and_replaces_the_rest() -> None:
    # given a base and overrides
    base = {"mqtt": {"broker": "mqtt://a", "qos": 1}, "imageRoots": ["/x"]}
    # when merged
    merged = merge_config(base, {"mqtt": {"qos": 0}, "imageRoots": ["/y"]})
    # then objects merge key by key and lists are replaced
    assert merged == {"mqtt": {"broker": "mqtt://a", "qos": 0}, "imageRoots": ["/y"]}, "deep merge"
    assert base["mqtt"] == {"broker": "mqtt://a", "qos": 1}, "the base is not modified"


def test_config_files_report_their_problems(tmp_path: Path) -> None:
    # given a valid file, a file with a JSON error, a JSON list, and a missing file
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "model": {"path": "m.zip"},\n  "mqtt": {broker}\n}')
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    # when read
    # then the valid one parses and the others name the file and the problem
    assert read_config_file(good, {}).mqtt is not None, "a valid file parses"
    assert read_config_mapping(good) == BASE, "the raw mapping is the file's JSON"
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON: .* at line 3 column"):
        read_config_file(broken, {})
    with pytest.raises(ConfigError, match=r"list.json: expected a JSON object"):
        read_config_mapping(listed)
    with pytest.raises(ConfigError, match=r"missing.json: cannot read"):
        read_config_file(tmp_path / "missing.json", {})
