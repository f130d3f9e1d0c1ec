"""The service configuration: one typed, frozen object for `lfv-edge serve` and the Greengrass component.

Every source goes through `parse_config`: a JSON config file (`serve --config`), command-line
flags (turned into the same raw mapping), and the Greengrass component configuration (read
over IPC, and checked again when a deployment asks to validate a change). Keys are camelCase
as in the recipe; unknown keys are refused and every error names its key path:

    ConfigError("mqtt.qso: unknown key (known: broker, caFile, …)")
    ConfigError("queue.size: expected an integer ≥ 1, got 'eight'")

Greengrass recommends numbers as strings in component configuration (a JSON number may
become a float on the device), so integers, numbers and booleans are also accepted as strings.
`{thingName}` in a topic becomes `$AWS_IOT_THING_NAME`. Nothing is read at import time.

Example (all keys; only `model.path` and one transport are required):

    {"model": {"path": "/models/pkg.zip", "device": "auto", "threads": 2,
               "thresholdOverride": null, "colors": {"scratch": "#23A436"}, "probe": false},
     "imageRoots": ["/data/images"],
     "limits": {"maxPayloadBytes": 16777216, "minImageSide": 64, "maxImageSide": 4096},
     "queue": {"size": 8, "overflow": "reject"},
     "results": {"includeMask": true},
     "statsIntervalS": 60, "logLevel": "INFO",
     "mqtt": {"broker": "mqtts://broker:8883", "requestsTopic": "lfv/{thingName}/requests",
              "resultsTopic": "lfv/{thingName}/results", "statusTopic": "lfv/{thingName}/status",
              "statsTopic": "lfv/{thingName}/stats", "clientId": "lfv-edge-1", "qos": 1,
              "caFile": "ca.pem", "certFile": "cert.pem", "keyFile": "key.pem",
              "username": null, "passwordFile": null, "keepaliveS": 30, "sharedGroup": null,
              "sessionExpiryS": 3600, "spoolDir": "/var/lib/lfv-edge/spool", "spoolMaxBytes": 67108864,
              "receiveMaximum": 64},
     "ipc": {"localRequestsTopic": "lfv/requests", "localResultsTopic": "lfv/results",
             "iotCoreRequestsTopic": "lfv/{thingName}/requests",
             "iotCoreResultsTopic": "lfv/{thingName}/results", "statsTopic": "lfv/stats",
             "timeoutS": 10},
     "agent": {"socket": "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock", "socketMode": "0660",
               "models": {"com.example.PartsModel": "/models/parts.zip"},
               "startModels": ["com.example.PartsModel"], "maxPendingPerModel": 4,
               "publishResults": false}}
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from lfv_edge.errors import ConfigError

T = TypeVar("T")
Device = Literal["auto", "cpu", "gpu"]
_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class OverflowPolicy(str, enum.Enum):
    """What a full request queue does. Either way the refused request is answered `Busy`."""

    REJECT = "reject"  # refuse the new request; what is queued keeps its place
    DROP_OLDEST = "drop_oldest"  # refuse the oldest queued request; the newest gets in


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which package to run and how."""

    path: Path
    device: Device = "auto"
    threads: int | None = None  # TVM workers; None = every CPU this process may use
    threshold_override: float | None = None
    colors: Mapping[str, str] = field(default_factory=dict)
    probe: bool = False  # load once in a child process first (packages from outside)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Input limits: payload bytes and LFV's 64–4096 pixel bounds."""

    max_payload_bytes: int = 16 << 20
    min_image_side: int = 64
    max_image_side: int = 4096


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The bounded request queue between transports and the model."""

    size: int = 8
    overflow: OverflowPolicy = OverflowPolicy.REJECT


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    """What replies carry."""

    include_mask: bool = True  # LFV's AnomalyMask (base64 PNG) for segmentation models


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """A plain MQTT broker (mosquitto, AWS IoT Core with X.509 certificates, …)."""

    broker: str
    requests_topic: str
    results_topic: str
    status_topic: str | None = None
    stats_topic: str | None = None
    client_id: str | None = None
    qos: int = 1
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = 30
    shared_group: str | None = None
    session_expiry_s: int = 3600
    spool_dir: Path | None = None
    spool_max_bytes: int = 64 << 20
    # MQTT 5 Receive Maximum: unacknowledged requests the broker may push to us at once. It
    # bounds our memory under a burst (each holds its payload until its reply is out); the
    # rest waits in the broker's session queue (mosquitto: max_queued_messages).
    receive_maximum: int = 64

    @property
    def tls(self) -> bool:
        """True for `mqtts://` brokers."""
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        """Broker port (1883 for mqtt://, 8883 for mqtts:// when not given)."""
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)


@dataclass(frozen=True, slots=True)
class IpcConfig:
    """Greengrass IPC topics: local publish/subscribe and/or AWS IoT Core through the nucleus."""

    local_requests_topic: str | None = None
    local_results_topic: str | None = None
    iot_core_requests_topic: str | None = None
    iot_core_results_topic: str | None = None
    stats_topic: str | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The LFV Edge Agent gRPC API on a Unix socket, with named models (model components)."""

    socket: str = "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock"  # the LFV agent's default
    socket_mode: int = 0o660
    models: Mapping[str, Path] = field(default_factory=dict)  # model component name → package
    start_models: tuple[
        str, ...
    ] = ()  # started at launch (the agent's clients call StartModel too)
    max_pending_per_model: int = 4
    publish_results: bool = False  # also publish each gRPC verdict on the results topic(s)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything `lfv-edge serve`, `lfv-edge agent` and the Greengrass component need."""

    model: ModelConfig | None
    image_roots: tuple[Path, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    queue: QueueConfig = QueueConfig()
    results: ResultsConfig = ResultsConfig()
    stats_interval_s: float = 60.0
    log_level: str = "INFO"
    mqtt: MqttConfig | None = None
    ipc: IpcConfig | None = None
    agent: AgentConfig | None = None


# --- parsing ---------------------------------------------------------------------------


class _Section:
    """A mapping being parsed: remembers its key path and which keys were used."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path or '(top level)'}: expected an object, got {_show(raw)}")
        self.raw: Mapping[str, object] = raw
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def check_keys(self, known: tuple[str, ...]) -> None:
        for key in self.raw:
            if key not in known:
                raise ConfigError(f"{self.where(key)}: unknown key (known: {', '.join(known)})")

    def get(self, key: str, convert: Callable[[object, str], T], default: T) -> T:
        value = self.raw.get(key)
        if value is None or value == "":
            return default
        return convert(value, self.where(key))

    def require(self, key: str, convert: Callable[[object, str], T]) -> T:
        value = self.raw.get(key)
        if value is None or value == "":
            raise ConfigError(f"{self.where(key)}: required")
        return convert(value, self.where(key))


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


# ASCII digits only: str.isdigit() also accepts "²", which int() refuses (found by fuzzing), and
# a bounded length keeps int() under Python's 4,300-digit limit.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,30}")


def _int(minimum: int, maximum: int = 1 << 62) -> Callable[[object, str], int]:
    def convert(value: object, where: str) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)  # Greengrass may turn "8" into 8.0
        elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            number = int(value)
        if number is None or not minimum <= number <= maximum:
            bound = f"between {minimum} and {maximum}" if maximum < 1 << 62 else f"≥ {minimum}"
            raise ConfigError(f"{where}: expected an integer {bound}, got {_show(value)}")
        return number

    return convert


def _number(minimum: float = -math.inf) -> Callable[[object, str], float]:
    def convert(value: object, where: str) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number < minimum:
            raise ConfigError(f"{where}: expected a number ≥ {minimum}, got {_show(value)}")
        return number

    return convert


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {_show(value)}")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    return value


def _expand(text: str, where: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # "~someone" for a user that does not exist
        raise ConfigError(f"{where}: cannot expand {_show(text)}: {exc}") from exc


def _path(value: object, where: str) -> Path:
    return _expand(_text(value, where), where)


def _choice(options: tuple[str, ...]) -> Callable[[object, str], str]:
    def convert(value: object, where: str) -> str:
        if value not in options:
            raise ConfigError(f"{where}: expected one of {', '.join(options)}, got {_show(value)}")
        return str(value)

    return convert


def _topic(environ: Mapping[str, str], *, subscribe: bool) -> Callable[[object, str], str]:
    def convert(value: object, where: str) -> str:
        topic = _text(value, where)
        if "{thingName}" in topic:
            thing = environ.get("AWS_IOT_THING_NAME")
            if not thing:
                raise ConfigError(f"{where}: uses {{thingName}} but AWS_IOT_THING_NAME is not set")
            topic = topic.replace("{thingName}", thing)
        if not topic or len(topic.encode()) > 65535 or "\0" in topic:
            raise ConfigError(f"{where}: not a valid MQTT topic: {_show(value)}")
        if not subscribe and ("+" in topic or "#" in topic):
            raise ConfigError(f"{where}: a publish topic cannot contain the wildcards + or #")
        return topic

    return convert


def _thing_text(environ: Mapping[str, str]) -> Callable[[object, str], str]:
    """A string in which `{thingName}` becomes $AWS_IOT_THING_NAME (e.g. an MQTT client id)."""

    def convert(value: object, where: str) -> str:
        text = _text(value, where)
        if "{thingName}" in text:
            thing = environ.get("AWS_IOT_THING_NAME")
            if not thing:
                raise ConfigError(f"{where}: uses {{thingName}} but AWS_IOT_THING_NAME is not set")
            text = text.replace("{thingName}", thing)
        return text

    return convert


def _colors(value: object, where: str) -> Mapping[str, str]:
    section = _Section(value, where)
    colors: dict[str, str] = {}
    for label, color in section.raw.items():
        if not isinstance(color, str) or not _HEX_COLOR.match(color):
            raise ConfigError(
                f"{section.where(label)}: expected a colour like #23A436, got {_show(color)}"
            )
        colors[label] = color.upper()
    return colors


def _path_list(value: object, where: str) -> tuple[Path, ...]:
    if isinstance(value, str):  # one root, or several separated by os.pathsep
        return tuple(_expand(part, where) for part in value.split(os.pathsep) if part)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of folders, got {_show(value)}")
    return tuple(_path(item, f"{where}[{i}]") for i, item in enumerate(value))


def _model(value: object, where: str) -> ModelConfig:
    section = _Section(value, where)
    section.check_keys(("path", "device", "threads", "thresholdOverride", "colors", "probe"))
    return ModelConfig(
        path=section.require("path", _path),
        device=section.get("device", _choice(("auto", "cpu", "gpu")), "auto"),  # type: ignore[arg-type]
        threads=section.get("threads", _int(1, 1024), None),
        threshold_override=section.get("thresholdOverride", _number(0.0), None),
        colors=section.get("colors", _colors, {}),
        probe=section.get("probe", _bool, False),
    )


def _limits(value: object, where: str) -> LimitsConfig:
    section = _Section(value, where)
    section.check_keys(("maxPayloadBytes", "minImageSide", "maxImageSide"))
    defaults = LimitsConfig()
    limits = LimitsConfig(
        max_payload_bytes=section.get(
            "maxPayloadBytes", _int(1024, 256 << 20), defaults.max_payload_bytes
        ),
        min_image_side=section.get("minImageSide", _int(1, 65535), defaults.min_image_side),
        max_image_side=section.get("maxImageSide", _int(1, 65535), defaults.max_image_side),
    )
    if limits.min_image_side > limits.max_image_side:
        raise ConfigError(f"{section.where('minImageSide')}: larger than maxImageSide")
    return limits


def _queue(value: object, where: str) -> QueueConfig:
    section = _Section(value, where)
    section.check_keys(("size", "overflow"))
    overflow = section.get("overflow", _choice(tuple(p.value for p in OverflowPolicy)), "reject")
    return QueueConfig(
        size=section.get("size", _int(1, 100_000), 8), overflow=OverflowPolicy(overflow)
    )


def _results(value: object, where: str) -> ResultsConfig:
    section = _Section(value, where)
    section.check_keys(("includeMask",))
    return ResultsConfig(include_mask=section.get("includeMask", _bool, True))


def _mqtt(environ: Mapping[str, str]) -> Callable[[object, str], MqttConfig]:
    def convert(value: object, where: str) -> MqttConfig:
        section = _Section(value, where)
        section.check_keys(
            (
                "broker", "requestsTopic", "resultsTopic", "statusTopic", "statsTopic", "clientId",
                "qos", "caFile", "certFile", "keyFile", "username", "passwordFile", "keepaliveS",
                "sharedGroup", "sessionExpiryS", "spoolDir", "spoolMaxBytes", "receiveMaximum",
            )
        )  # fmt: skip
        broker = section.require("broker", _text)
        parts = urlsplit(broker)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ConfigError(
                f"{section.where('broker')}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {_show(broker)}"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError(f"{section.where('broker')}: bad port in {_show(broker)}") from exc
        group = section.get("sharedGroup", _text, None)
        if group is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", group):
            raise ConfigError(
                f"{section.where('sharedGroup')}: letters, digits, _ and - only, got {_show(group)}"
            )
        cert = section.get("certFile", _path, None)
        key = section.get("keyFile", _path, None)
        if (cert is None) != (key is None):
            raise ConfigError(
                f"{section.where('certFile')}: certFile and keyFile go together (mutual TLS)"
            )
        config = MqttConfig(
            broker=broker,
            requests_topic=section.require("requestsTopic", _topic(environ, subscribe=True)),
            results_topic=section.require("resultsTopic", _topic(environ, subscribe=False)),
            status_topic=section.get("statusTopic", _topic(environ, subscribe=False), None),
            stats_topic=section.get("statsTopic", _topic(environ, subscribe=False), None),
            client_id=section.get("clientId", _thing_text(environ), None),
            qos=section.get("qos", _int(0, 2), 1),
            ca_file=section.get("caFile", _path, None),
            cert_file=cert,
            key_file=key,
            username=section.get("username", _text, None),
            password_file=section.get("passwordFile", _path, None),
            keepalive_s=section.get("keepaliveS", _int(5, 65535), 30),
            shared_group=group,
            session_expiry_s=section.get("sessionExpiryS", _int(0, 2**32 - 1), 3600),
            spool_dir=section.get("spoolDir", _path, None),
            spool_max_bytes=section.get("spoolMaxBytes", _int(0), 64 << 20),
            receive_maximum=section.get("receiveMaximum", _int(1, 65535), 64),
        )
        if not config.tls and (cert or config.ca_file):
            raise ConfigError(f"{section.where('broker')}: caFile/certFile need an mqtts:// broker")
        return config

    return convert


def _ipc(environ: Mapping[str, str]) -> Callable[[object, str], IpcConfig]:
    def convert(value: object, where: str) -> IpcConfig:
        section = _Section(value, where)
        section.check_keys(
            (
                "localRequestsTopic", "localResultsTopic", "iotCoreRequestsTopic",
                "iotCoreResultsTopic", "statsTopic", "timeoutS",
            )
        )  # fmt: skip
        sub, pub = _topic(environ, subscribe=True), _topic(environ, subscribe=False)
        config = IpcConfig(
            local_requests_topic=section.get("localRequestsTopic", sub, None),
            local_results_topic=section.get("localResultsTopic", pub, None),
            iot_core_requests_topic=section.get("iotCoreRequestsTopic", sub, None),
            iot_core_results_topic=section.get("iotCoreResultsTopic", pub, None),
            stats_topic=section.get("statsTopic", pub, None),
            timeout_s=section.get("timeoutS", _number(0.1), 10.0),
        )
        if config.local_requests_topic is None and config.iot_core_requests_topic is None:
            raise ConfigError(f"{where}: set localRequestsTopic and/or iotCoreRequestsTopic")
        for requests, results, name in (
            (config.local_requests_topic, config.local_results_topic, "localResultsTopic"),
            (config.iot_core_requests_topic, config.iot_core_results_topic, "iotCoreResultsTopic"),
        ):
            if requests is not None and results is None:
                raise ConfigError(f"{section.where(name)}: required when its requests topic is set")
        return config

    return convert


def _names(value: object, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_text(item, f"{where}[{i}]") for i, item in enumerate(items))


def _agent(value: object, where: str) -> AgentConfig:
    section = _Section(value, where)
    section.check_keys(
        ("socket", "socketMode", "models", "startModels", "maxPendingPerModel", "publishResults")
    )
    socket = section.get("socket", _text, "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock")
    if not socket.startswith("unix://") or len(socket) <= len("unix://"):
        raise ConfigError(
            f"{section.where('socket')}: expected unix:///path/to.sock, got {_show(socket)}"
        )
    mode_text = section.get("socketMode", lambda v, w: _text(str(v), w), "0660")
    try:
        mode = int(mode_text, 8)
    except ValueError as exc:
        raise ConfigError(
            f"{section.where('socketMode')}: expected an octal mode like 0660, got {_show(mode_text)}"
        ) from exc
    models_section = _Section(section.raw.get("models") or {}, section.where("models"))
    models = {
        name: _path(path, models_section.where(name)) for name, path in models_section.raw.items()
    }
    start: tuple[str, ...] = section.get("startModels", _names, ())
    for name in start:
        if name not in models:
            raise ConfigError(f"{section.where('startModels')}: {name!r} is not in models")
    return AgentConfig(
        socket=socket,
        socket_mode=mode,
        models=models,
        start_models=start,
        max_pending_per_model=section.get("maxPendingPerModel", _int(1, 1000), 4),
        publish_results=section.get("publishResults", _bool, False),
    )


TOP_LEVEL_KEYS = (
    "model", "imageRoots", "limits", "queue", "results", "statsIntervalS", "logLevel", "mqtt",
    "ipc", "agent",
)  # fmt: skip


def parse_config(
    raw: Mapping[str, object], environ: Mapping[str, str] = os.environ
) -> ServiceConfig:
    """Check and type a raw configuration mapping.

    Raises:
        ConfigError: names the key path and what was expected.
    """
    section = _Section(raw, "")
    section.check_keys(TOP_LEVEL_KEYS)
    config = ServiceConfig(
        model=section.get("model", _model, None),
        image_roots=section.get("imageRoots", _path_list, ()),
        limits=section.get("limits", _limits, LimitsConfig()),
        queue=section.get("queue", _queue, QueueConfig()),
        results=section.get("results", _results, ResultsConfig()),
        stats_interval_s=section.get("statsIntervalS", _number(0.0), 60.0),
        log_level=section.get(
            "logLevel", lambda v, w: _choice(_LOG_LEVELS)(str(v).upper(), w), "INFO"
        ),
        mqtt=section.get("mqtt", _mqtt(environ), None),
        ipc=section.get("ipc", _ipc(environ), None),
        agent=section.get("agent", _agent, None),
    )
    if config.model is None and (config.mqtt is not None or config.ipc is not None):
        raise ConfigError("model: required when mqtt or ipc is configured")
    return config


def read_config_file(path: Path, environ: Mapping[str, str] = os.environ) -> ServiceConfig:
    """Read a JSON configuration file and parse it.

    Raises:
        ConfigError: unreadable file, bad JSON (with line and column) or invalid content.
    """
    return parse_config(read_config_mapping(path), environ)


def read_config_mapping(path: Path) -> dict[str, object]:
    """Read a JSON configuration file as a raw mapping (to merge flags into before parsing).

    Raises:
        ConfigError: unreadable file, bad JSON (with line and column), not an object.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:  # json.loads gives up on deep nesting with RecursionError
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw


def merge_config(base: Mapping[str, object], overrides: Mapping[str, object]) -> dict[str, object]:
    """Deep-merge `overrides` into `base` (objects merge, everything else replaces)."""
    merged: dict[str, object] = dict(base)
    for key, value in overrides.items():
        existing = merged.get(key)
        if isinstance(existing, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_config(existing, value)
        else:
            merged[key] = value
    return merged
