"""The service configuration: one typed, frozen object for `serve`, `agent` and the Greengrass component.

Every key is declared once below (schema.py: key name, converter, default, flag, doc). Every
source goes through `parse_config`: a JSON config file (`serve --config`), command-line flags
(turned into the same raw mapping by `raw_from_flags`), and the Greengrass component
configuration (read over IPC, and checked again when a deployment asks to validate a change).
Keys are camelCase as in the recipe; unknown keys are refused and every error names its key
path, as text and as `ConfigError.key`:

    ConfigError("mqtt.qso: unknown key (known: broker, requestsTopic, …)", key="mqtt.qso")
    ConfigError("queue.size: expected an integer between 1 and 100000, got 'eight'", key="queue.size")

Greengrass recommends numbers as strings in component configuration (a JSON number may
become a float on the device), so integers, numbers and booleans are also accepted as strings.
`{thingName}` in a topic or client id becomes `$AWS_IOT_THING_NAME`. Nothing is read at import
time. `lfv-edge config keys` prints every key; the README's table is that output.

Example (only `model.path` and one transport are required to serve):

    {"model": {"path": "/models/pkg.zip", "device": "auto", "threads": 2,
               "thresholdOverride": null, "colors": {"scratch": "#23A436"}, "probe": false},
     "imageRoots": ["/data/images"],
     "limits": {"maxPayloadBytes": 16777216, "minImageSide": 64, "maxImageSide": 4096},
     "queue": {"size": 8, "overflow": "reject", "prepareWorkers": 1},
     "results": {"includeMask": true},
     "statsIntervalS": 60, "logLevel": "INFO",
     "mqtt": {"broker": "mqtts://broker:8883", "requestsTopic": "lfv/{thingName}/requests",
              "resultsTopic": "lfv/{thingName}/results", "statusTopic": "lfv/{thingName}/status",
              "statsTopic": "lfv/{thingName}/stats", "clientId": "lfv-edge-1", "qos": 1,
              "caFile": "ca.pem", "certFile": "cert.pem", "keyFile": "key.pem",
              "username": null, "passwordFile": null, "keepaliveS": 30, "sharedGroup": null,
              "sessionExpiryS": 3600, "spoolDir": "/var/lib/lfv-edge/spool",
              "spoolMaxBytes": 67108864, "receiveMaximum": 65535},
     "ipc": {"localRequestsTopic": "lfv/requests", "localResultsTopic": "lfv/results",
             "iotCoreRequestsTopic": "lfv/{thingName}/requests",
             "iotCoreResultsTopic": "lfv/{thingName}/results", "statsTopic": "lfv/stats",
             "timeoutS": 10},
     "agent": {"socket": "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock", "socketMode": "0660",
               "models": {"com.example.PartsModel": "/models/parts.zip"},
               "startModels": ["com.example.PartsModel"], "maxPendingPerModel": 4,
               "publishResults": false},
     "http": {"listen": "127.0.0.1:8080", "tokenFile": null, "historySize": 200,
              "historyMaxBytes": 33554432, "images": true, "maxConnections": 32}}
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from lfv_edge.errors import ConfigError
from lfv_edge.service.schema import fail as _fail
from lfv_edge.service.schema import (
    find_key,
    join,
    key,
    parse_section,
    reference_rows,
    require_mapping,
    show,
    to_bool,
    to_choice,
    to_colors,
    to_int,
    to_names,
    to_number,
    to_path,
    to_paths,
    to_section,
    to_text,
    to_topic,
    to_variant_list,
    variant_row_parts,
)

Device = Literal["auto", "cpu", "gpu"]
DEVICES: tuple[Device, ...] = ("auto", "cpu", "gpu")
Runtime = Literal["dlr", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("dlr", "onnx")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The LFV Edge Agent's own default socket (its only configuration key).
DEFAULT_AGENT_SOCKET = "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock"


class OverflowPolicy(str, enum.Enum):
    """What a full request queue does. Either way the refused request is answered `Busy`."""

    REJECT = "reject"  # refuse the new request; what is queued keeps its place
    DROP_OLDEST = "drop_oldest"  # refuse the oldest queued request; the newest gets in


def _overflow(value: object, where: str) -> OverflowPolicy:
    return OverflowPolicy(to_choice([p.value for p in OverflowPolicy])(value, where))


def _device(value: object, where: str) -> Device:
    return cast(Device, to_choice(DEVICES)(value, where))


def _runtime(value: object, where: str) -> Runtime:
    return cast(Runtime, to_choice(RUNTIMES)(value, where))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which package to run and how."""

    path: Path = key(
        "path", to_path, required=True, default_doc="required to serve",
        flag="--model", metavar="PACKAGE", doc="model package zip or folder",
    )  # fmt: skip
    device: Device = key(
        "device", _device, default="auto", flag="--device", choices=DEVICES,
        doc="`auto` (the GPU when the package is a GPU build and this machine can run it), `cpu`, `gpu`",
    )  # fmt: skip
    threads: int | None = key(
        "threads", to_int(1, 1024), default=None, flag="--threads",
        default_doc="usable CPUs − 1 when serving, all for `infer`", doc="TVM worker threads",
    )  # fmt: skip
    threshold_override: float | None = key(
        "thresholdOverride", to_number(0.0), default=None, flag="--threshold",
        default_doc="the manifest's", doc="decision threshold instead of the manifest's",
    )  # fmt: skip
    colors: Mapping[str, str] = key(
        "colors", to_colors, default_factory=dict, default_doc="the LFV code's palette",
        doc='mask colour per label, `{"scratch": "#FF0000"}`',
    )  # fmt: skip
    probe: bool = key(
        "probe", to_bool, default=False, flag="--probe", flag_const=True,
        doc="load the package once in a child process first (packages from outside)",
    )  # fmt: skip
    lookout_vision_model_arn: str = key(
        "lookoutVisionModelArn", to_text, default="", default_doc="empty",
        doc="the LFV model's ARN, reported by the Edge Agent API (DescribeModel, ListModels)",
    )  # fmt: skip
    runtime: Runtime = key(
        "runtime", _runtime, default="dlr", flag="--runtime", choices=RUNTIMES,
        doc="`dlr` (the package's compiled model) or `onnx` (its converted model in ONNX "
        "Runtime: `lfv-edge convert --into-package`; needs the `onnx` extra)",
    )  # fmt: skip
    onnx_model: Path | None = key(
        "onnxModel", to_path, default=None, default_doc="`model.onnx` in the stage folder",
        flag="--onnx-model", metavar="FILE", doc="the converted model for `runtime: onnx`",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Input limits: payload bytes and LFV's 64–4096 pixel bounds."""

    max_payload_bytes: int = key(
        "maxPayloadBytes", to_int(1024, 256 << 20), default=16 << 20, default_doc="16 MiB",
        flag="--max-payload-bytes", doc="largest request payload (and encoded image)",
    )  # fmt: skip
    min_image_side: int = key(
        "minImageSide", to_int(1, 65535), default=64, doc="smallest image side in pixels (LFV: 64)"
    )
    max_image_side: int = key(
        "maxImageSide", to_int(1, 65535), default=4096,
        doc="largest image side in pixels (LFV: 4096)",
    )  # fmt: skip

    def validate_section(self, where: str) -> None:
        if self.min_image_side > self.max_image_side:
            _fail(join(where, "minImageSide"), "larger than maxImageSide")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The bounded request queue between transports and the model."""

    size: int = key(
        "size", to_int(1, 100_000), default=8, flag="--queue-size",
        doc="requests waiting for the model",
    )  # fmt: skip
    overflow: OverflowPolicy = key(
        "overflow", _overflow, default=OverflowPolicy.REJECT, flag="--overflow",
        choices=tuple(p.value for p in OverflowPolicy),
        doc="a full queue answers `Busy` to the newest (`reject`) or the oldest (`drop_oldest`) request",
    )  # fmt: skip
    prepare_workers: int = key(
        "prepareWorkers", to_int(1, 64), default=1, flag="--prepare-workers",
        doc="threads decoding and pre-processing in parallel (a GPU model outruns one)",
    )  # fmt: skip
    waiting_max_bytes: int = key(
        "waitingMaxBytes", to_int(0, 1 << 40), default=512 << 20, default_doc="512 MiB",
        flag="--waiting-max-bytes",
        doc="payload bytes of requests that can wait (MQTT QoS ≥ 1, IoT Core) held in memory "
        "beyond `size` instead of answering `Busy`",
    )  # fmt: skip
    spill_dir: Path | None = key(
        "spillDir", to_path, default=None, default_doc="`waiting/` in the cache folder",
        flag="--spill-dir", metavar="DIR",
        doc="where waiting requests go when `waitingMaxBytes` is full",
    )  # fmt: skip
    spill_max_bytes: int = key(
        "spillMaxBytes", to_int(0, 1 << 50), default=4 << 30, default_doc="4 GiB",
        flag="--spill-max-bytes",
        doc="disk budget of the spill folder (0: never spill; 512 MiB of the disk stay free)",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    """What replies carry."""

    include_mask: bool = key(
        "includeMask", to_bool, default=True, flag="--no-mask", flag_const=False,
        doc="include `AnomalyMask` (base64 PNG) for segmentation models",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """A plain MQTT broker (mosquitto, AWS IoT Core with X.509 certificates, …)."""

    broker: str = key(
        "broker", to_text, required=True, default_doc="required for `serve`",
        flag="--broker", metavar="URL", doc="`mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`",
    )  # fmt: skip
    requests_topic: str = key(
        "requestsTopic", to_topic(subscribe=True), required=True, thing_name=True,
        default_doc="required for `serve`", flag="--requests-topic", metavar="TOPIC",
        doc="subscribe here (wildcards allowed)",
    )  # fmt: skip
    results_topic: str = key(
        "resultsTopic", to_topic(subscribe=False), required=True, thing_name=True,
        default_doc="required for `serve`", flag="--results-topic", metavar="TOPIC",
        doc="replies go here",
    )  # fmt: skip
    status_topic: str | None = key(
        "statusTopic", to_topic(subscribe=False), default=None, thing_name=True,
        flag="--status-topic", metavar="TOPIC", doc="retained online/offline status",
    )  # fmt: skip
    stats_topic: str | None = key(
        "statsTopic", to_topic(subscribe=False), default=None, thing_name=True,
        flag="--stats-topic", metavar="TOPIC", doc="periodic stats snapshots",
    )  # fmt: skip
    client_id: str | None = key(
        "clientId", to_text, default=None, thing_name=True, flag="--client-id",
        default_doc="the thing name, else the host name",
        doc="MQTT client id; keep it stable across restarts (the broker keeps our session)",
    )  # fmt: skip
    qos: int = key("qos", to_int(0, 2), default=1, flag="--qos", doc="QoS of requests and replies")
    ca_file: Path | None = key(
        "caFile", to_path, default=None, flag="--ca-file", metavar="PEM",
        default_doc="the system's CA bundle", doc="CA certificates to trust",
    )  # fmt: skip
    cert_file: Path | None = key(
        "certFile", to_path, default=None, flag="--cert-file", metavar="PEM",
        doc="client certificate (mutual TLS, e.g. AWS IoT Core)",
    )  # fmt: skip
    key_file: Path | None = key(
        "keyFile", to_path, default=None, flag="--key-file", metavar="PEM",
        doc="client private key (mutual TLS)",
    )  # fmt: skip
    username: str | None = key("username", to_text, default=None, flag="--username", doc="user")
    password_file: Path | None = key(
        "passwordFile", to_path, default=None, flag="--password-file", metavar="FILE",
        doc="file whose first line is the password (never logged)",
    )  # fmt: skip
    keepalive_s: int = key(
        "keepaliveS", to_int(5, 65535), default=30, flag="--keepalive", doc="MQTT keep-alive"
    )
    shared_group: str | None = key(
        "sharedGroup", to_text, default=None, flag="--shared-group", metavar="NAME",
        doc="subscribe as `$share/NAME/<requestsTopic>` (several instances share the load)",
    )  # fmt: skip
    session_expiry_s: int = key(
        "sessionExpiryS", to_int(0, 2**32 - 1), default=3600, flag="--session-expiry",
        doc="how long the broker keeps our session and its queued requests while we are away",
    )  # fmt: skip
    spool_dir: Path | None = key(
        "spoolDir", to_path, default=None, flag="--spool-dir", metavar="DIR",
        default_doc="in memory", doc="keep unsent replies on disk here (survive a restart)",
    )  # fmt: skip
    spool_max_bytes: int = key(
        "spoolMaxBytes", to_int(0), default=64 << 20, default_doc="64 MiB",
        flag="--spool-max-bytes", doc="bound of the reply spool",
    )  # fmt: skip
    # MQTT 5 Receive Maximum: unacknowledged requests we announce we can take at once. The
    # most by default: the inbox bounds what we hold by bytes (memory, then disk), while a
    # broker holding a burst back may drop it (mosquitto beyond max_queued_messages, 1,000:
    # of a 10,000-request burst, 8,872 were lost there with a window of 64 and 1,306 with 65535,
    # tools/rss_burst.py).
    receive_maximum: int = key(
        "receiveMaximum", to_int(1, 65535), default=65535, flag="--receive-maximum",
        doc="MQTT 5 Receive Maximum announced to the broker (unanswered requests in flight); "
        "lower it to keep bursts in the broker's queue instead of ours",
    )  # fmt: skip

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

    def validate_section(self, where: str) -> None:
        parts = urlsplit(self.broker)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            _fail(
                join(where, "broker"),
                f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {show(self.broker)}",
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            _fail(join(where, "broker"), f"bad port in {show(self.broker)}")
        group = self.shared_group
        if group is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", group):
            _fail(join(where, "sharedGroup"), f"letters, digits, _ and - only, got {show(group)}")
        if (self.cert_file is None) != (self.key_file is None):
            _fail(join(where, "certFile"), "certFile and keyFile go together (mutual TLS)")
        if not self.tls and (self.cert_file or self.ca_file):
            _fail(join(where, "broker"), "caFile/certFile need an mqtts:// broker")


@dataclass(frozen=True, slots=True)
class IpcConfig:
    """Greengrass IPC topics: local publish/subscribe and/or AWS IoT Core through the nucleus."""

    local_requests_topic: str | None = key(
        "localRequestsTopic", to_topic(subscribe=True), default=None, thing_name=True,
        doc="local publish/subscribe topic of requests",
    )  # fmt: skip
    local_results_topic: str | None = key(
        "localResultsTopic", to_topic(subscribe=False), default=None, thing_name=True,
        doc="local publish/subscribe topic of replies",
    )  # fmt: skip
    iot_core_requests_topic: str | None = key(
        "iotCoreRequestsTopic", to_topic(subscribe=True), default=None, thing_name=True,
        doc="AWS IoT Core topic of requests (through the nucleus)",
    )  # fmt: skip
    iot_core_results_topic: str | None = key(
        "iotCoreResultsTopic", to_topic(subscribe=False), default=None, thing_name=True,
        doc="AWS IoT Core topic of replies (QoS 1, at most 128 KB)",
    )  # fmt: skip
    stats_topic: str | None = key(
        "statsTopic", to_topic(subscribe=False), default=None, thing_name=True,
        doc="local topic of periodic stats snapshots",
    )  # fmt: skip
    timeout_s: float = key(
        "timeoutS", to_number(0.1), default=10.0, doc="how long an IPC call may take"
    )

    def validate_section(self, where: str) -> None:
        if self.local_requests_topic is None and self.iot_core_requests_topic is None:
            _fail(where, "set localRequestsTopic and/or iotCoreRequestsTopic")
        for requests, results, name in (
            (self.local_requests_topic, self.local_results_topic, "localResultsTopic"),
            (self.iot_core_requests_topic, self.iot_core_results_topic, "iotCoreResultsTopic"),
        ):
            if requests is not None and results is None:
                _fail(join(where, name), "required when its requests topic is set")


def _socket(value: object, where: str) -> str:
    socket = to_text(value, where)
    if not socket.startswith("unix://") or len(socket) <= len("unix://"):
        _fail(where, f"expected unix:///path/to.sock, got {show(socket)}")
    return socket


def _socket_mode(value: object, where: str) -> int:
    text = str(value)
    try:
        return int(text, 8)
    except ValueError:
        return _fail(where, f"expected an octal mode like 0660, got {show(text)}")  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class AgentModelConfig:
    """One model component of the agent: its package and, where known, its LFV ARN."""

    path: Path = key("path", to_path, required=True, doc="package zip or folder")
    lookout_vision_model_arn: str = key(
        "lookoutVisionModelArn", to_text, default="", default_doc="empty",
        doc="reported by DescribeModel and ListModels",
    )  # fmt: skip


def _agent_models(value: object, where: str) -> Mapping[str, AgentModelConfig]:
    """name → package path, or name → {path, lookoutVisionModelArn}."""
    mapping = require_mapping(value, where)
    models: dict[str, AgentModelConfig] = {}
    for name, entry in mapping.items():
        path = join(where, name)
        if isinstance(entry, Mapping):
            models[name] = parse_section(AgentModelConfig, entry, path)
        else:
            models[name] = AgentModelConfig(path=to_path(entry, path))
    return models


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The LFV Edge Agent gRPC API on a Unix socket, with named models (model components)."""

    socket: str = key(
        "socket", _socket, default=DEFAULT_AGENT_SOCKET, flag="--agent-socket",
        doc="where the Edge Agent API listens (the LFV agent's default)",
    )  # fmt: skip
    socket_mode: int = key(
        "socketMode", _socket_mode, default=0o660, default_doc="`0660`",
        doc="permissions of the socket file (group access for `ggc_group`)",
    )  # fmt: skip
    models: Mapping[str, AgentModelConfig] = key(
        "models", _agent_models, default_factory=dict, default_doc="none",
        doc="model component name → package path, or → `{path, lookoutVisionModelArn}`",
    )  # fmt: skip
    start_models: tuple[str, ...] = key(
        "startModels", to_names, default=(), default_doc="none",
        doc="models started at launch (clients may also call StartModel)",
    )  # fmt: skip
    max_pending_per_model: int = key(
        "maxPendingPerModel", to_int(1, 1000), default=4,
        doc="calls admitted per model before RESOURCE_EXHAUSTED",
    )  # fmt: skip
    publish_results: bool = key(
        "publishResults", to_bool, default=False,
        doc="also publish each gRPC verdict on the results topic (with `serve`)",
    )  # fmt: skip

    def validate_section(self, where: str) -> None:
        for name in self.start_models:
            if name not in self.models:
                _fail(join(where, "startModels"), f"{name!r} is not in models")


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
DEFAULT_HTTP_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, `localhost`)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve beyond this machine


def _listen(value: object, where: str) -> str:
    """`PORT` (on 127.0.0.1), `HOST:PORT` or `[IPv6]:PORT`, normalised to `HOST:PORT`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(to_int(1, 65535)(value, where))
    text = to_text(value, where).strip()
    host, port_text = DEFAULT_HTTP_HOST, text
    if text.startswith("["):  # [::1]:8080
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            _fail(where, f"expected [IPv6]:PORT, got {show(text)}")
        host, port_text = inside, rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not host or not re.fullmatch(r"[A-Za-z0-9._:\-]+", host):
        _fail(where, f"expected PORT or HOST:PORT, got {show(text)}")
    port = to_int(0, 65535)(port_text, where)  # 0: any free port (tests)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The web view, /metrics and the health endpoints (web/); off unless configured."""

    listen: str = key(
        "listen", _listen, required=True, default_doc="off", flag="--http",
        metavar="[HOST:]PORT",
        doc="where the web view, `/metrics`, `/healthz` and `/readyz` listen: `PORT` "
        "(on 127.0.0.1) or `HOST:PORT`; beyond loopback `tokenFile` is required",
    )  # fmt: skip
    token_file: Path | None = key(
        "tokenFile", to_path, default=None, flag="--http-token-file", metavar="FILE",
        doc="file whose first line is the access token (Bearer, or the Basic-auth password; "
        "at least 16 characters, never logged)",
    )  # fmt: skip
    history_size: int = key(
        "historySize", to_int(1, 10_000), default=200, flag="--http-history", metavar="N",
        doc="last inspections kept in memory for the page (with their pictures)",
    )  # fmt: skip
    history_max_bytes: int = key(
        "historyMaxBytes", to_int(1 << 20, 1 << 31), default=32 << 20, default_doc="32 MiB",
        doc="bound of the history's pictures and replies; the oldest go first",
    )  # fmt: skip
    images: bool = key(
        "images", to_bool, default=True,
        doc="keep a thumbnail, overlay and preview of each inspection (false: verdicts only)",
    )  # fmt: skip
    max_connections: int = key(
        "maxConnections", to_int(1, 1000), default=32,
        doc="open HTTP connections at once (more are answered 503)",
    )  # fmt: skip

    @property
    def host(self) -> str:
        """The address to bind (without IPv6 brackets)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The TCP port (0: any free one)."""
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        return is_loopback(self.host)

    def validate_section(self, where: str) -> None:
        if not self.loopback and self.token_file is None:
            _fail(
                join(where, "tokenFile"),
                f"required when listening beyond loopback ({self.listen}): "
                "anything reachable from the network needs a token",
            )


# --- capture sources (lfv_edge.capture; docs/capture.md) -----------------------------------

_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VIDEO_DEVICE = re.compile(r"/dev/video[0-9]+")
_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


class KeepPolicy(str, enum.Enum):
    """Which inspected images a capture source keeps (original, overlay, verdict JSON)."""

    ALL = "all"
    ANOMALOUS = "anomalous"
    NONE = "none"


class TriggerFrame(str, enum.Enum):
    """Which frame a trigger inspects."""

    LATEST = "latest"  # the freshest frame already decoded: no wait
    NEXT = "next"  # the first frame decoded after the trigger: waits up to one frame interval


class Replay(str, enum.Enum):
    """How a video file is read."""

    REALTIME = "realtime"  # at the file's own frame rate, like a camera (frames can be skipped)
    EVERY_FRAME = "every_frame"  # each frame inspected once, as fast as the model goes


def _source_id(value: object, where: str) -> str:
    text = to_text(value, where)
    if not _SOURCE_ID.fullmatch(text):
        _fail(where, f"letters, digits, _ . - (1–64, not starting with . - _), got {show(text)}")
    return text


def _keep(value: object, where: str) -> KeepPolicy:
    return KeepPolicy(to_choice([p.value for p in KeepPolicy])(value, where))


def _trigger_frame(value: object, where: str) -> TriggerFrame:
    return TriggerFrame(to_choice([p.value for p in TriggerFrame])(value, where))


def _replay(value: object, where: str) -> Replay:
    return Replay(to_choice([p.value for p in Replay])(value, where))


def camera_kind(url: str) -> Literal["device", "stream", "file"]:
    """`device` (/dev/videoN), `stream` (rtsp://, http://, …) or `file` (a path or file://)."""
    if _VIDEO_DEVICE.fullmatch(url):
        return "device"
    if urlsplit(url).scheme.lower() in _STREAM_SCHEMES:
        return "stream"
    return "file"


def _camera_url(value: object, where: str) -> str:
    url = to_text(value, where).strip()
    scheme = urlsplit(url).scheme.lower()
    if not url or "\0" in url:
        _fail(where, "expected /dev/videoN, an rtsp:// or http:// URL, or a video file")
    if scheme and len(scheme) > 1 and scheme not in (*_STREAM_SCHEMES, "file"):
        _fail(where, f"unsupported scheme {scheme!r} (rtsp, rtsps, http, https, file)")
    if url.startswith("/dev/") and not _VIDEO_DEVICE.fullmatch(url):
        _fail(where, f"expected a V4L2 device /dev/videoN, got {show(url)}")
    return url


@dataclass(frozen=True, slots=True)
class FolderSourceConfig:
    """A hot folder: every new image file is inspected once, then moved to done/ or failed/."""

    id: str = key(
        "id", _source_id, required=True, doc="source id (in replies, kept files, triggers)"
    )
    path: Path = key(
        "path", to_path, required=True, flag="--watch", metavar="DIR",
        doc="the watched folder; files written under a hidden or `.part`/`.tmp` name are skipped until renamed",
    )  # fmt: skip
    done_dir: Path | None = key(
        "doneDir", to_path, default=None, default_doc="`<path>/done`",
        doc="inspected files go here, each with a `.json` sidecar",
    )  # fmt: skip
    failed_dir: Path | None = key(
        "failedDir", to_path, default=None, default_doc="`<path>/failed`",
        doc="files that could not be inspected go here, each with a `.json` sidecar with the error code",
    )  # fmt: skip
    settle_s: float = key(
        "settleS", to_number(0.0, 3600.0), default=0.5,
        doc="a file is read once its size and time stamp stayed the same this long (a JPEG or PNG must also be complete)",
    )  # fmt: skip
    poll_s: float = key(
        "pollS", to_number(0.01, 60.0), default=0.2, doc="how often the folder is scanned"
    )
    max_in_flight: int = key(
        "maxInFlight", to_int(1, 64), default=3, doc="files of this folder in the pipeline at once"
    )
    keep: KeepPolicy = key(
        "keep", _keep, default=KeepPolicy.NONE, choices=tuple(p.value for p in KeepPolicy),
        doc="keep `all`, `anomalous` or `none` of the inspected images in `capture.keep.dir`",
    )  # fmt: skip

    @property
    def done(self) -> Path:
        """Where inspected files go."""
        return self.done_dir if self.done_dir is not None else self.path / "done"

    @property
    def failed(self) -> Path:
        """Where files that could not be inspected go."""
        return self.failed_dir if self.failed_dir is not None else self.path / "failed"


@dataclass(frozen=True, slots=True)
class CameraSourceConfig:
    """A camera (V4L2 device, RTSP or HTTP MJPEG stream) or a video file, read by OpenCV."""

    id: str = key(
        "id", _source_id, required=True, doc="source id (in replies, kept files, triggers)"
    )
    url: str = key(
        "url", _camera_url, required=True, flag="--camera", metavar="URL",
        doc="`/dev/videoN`, `rtsp://…`, `http://…` (MJPEG) or a video file",
    )  # fmt: skip
    fps: float = key(
        "fps", to_number(0.0, 1000.0), default=0.0, flag="--fps", metavar="N",
        doc="free-running: inspect the freshest frame N times a second (0 = off); frames the model cannot keep up with are dropped and counted",
    )  # fmt: skip
    interval_s: float = key(
        "intervalS", to_number(0.0, 86400.0), default=0.0,
        doc="inspect the freshest frame every S seconds (0 = off)",
    )  # fmt: skip
    trigger_topic: str | None = key(
        "triggerTopic", to_topic(subscribe=True), default=None, thing_name=True,
        default_doc="`capture.triggerTopic`",
        doc="trigger messages for this source (`{\"RequestId\": …, \"Source\": id}`)",
    )  # fmt: skip
    trigger_frame: TriggerFrame = key(
        "triggerFrame", _trigger_frame, default=TriggerFrame.LATEST,
        choices=tuple(p.value for p in TriggerFrame),
        doc="a trigger inspects the `latest` frame already decoded, or the `next` one",
    )  # fmt: skip
    # 3: one being finished (post-processing, reply), one in the model, one prepared and
    # waiting for it; with 2 the model idled while the oldest was post-processed (C3 at 1080p,
    # back to back on 2 cores: 0.63 of the bare model loop with 2, 0.75 with 3).
    max_in_flight: int = key(
        "maxInFlight", to_int(1, 64), default=3,
        doc="inspections of this source in the pipeline at once (free-running and interval)",
    )  # fmt: skip
    replay: Replay = key(
        "replay", _replay, default=Replay.REALTIME, choices=tuple(p.value for p in Replay),
        doc="video files: `realtime` (at the file's frame rate) or `every_frame` (each frame once)",
    )  # fmt: skip
    loop: bool = key("loop", to_bool, default=False, doc="video files: start again at the end")
    width: int | None = key(
        "width", to_int(1, 16384), default=None, doc="V4L2 devices: the frame width to ask for"
    )
    height: int | None = key(
        "height", to_int(1, 16384), default=None, doc="V4L2 devices: the frame height to ask for"
    )
    ffmpeg_options: str | None = key(
        "ffmpegOptions", to_text, default=None,
        doc="FFmpeg options for streams as `key;value` pairs (e.g. `rtsp_transport;tcp`)",
    )  # fmt: skip
    open_timeout_s: float = key(
        "openTimeoutS", to_number(0.1, 600.0), default=10.0, doc="how long opening may take"
    )
    read_timeout_s: float = key(
        "readTimeoutS", to_number(0.1, 600.0), default=5.0,
        doc="a stream silent this long is lost (reconnect)",
    )  # fmt: skip
    reconnect_max_s: float = key(
        "reconnectMaxS", to_number(0.1, 3600.0), default=30.0,
        doc="longest wait between reconnect attempts (the wait doubles from 0.5 s)",
    )  # fmt: skip
    keep: KeepPolicy = key(
        "keep", _keep, default=KeepPolicy.NONE, choices=tuple(p.value for p in KeepPolicy),
        doc="keep `all`, `anomalous` or `none` of the inspected images in `capture.keep.dir`",
    )  # fmt: skip

    @property
    def kind(self) -> Literal["device", "stream", "file"]:
        """What `url` names."""
        return camera_kind(self.url)

    def validate_section(self, where: str) -> None:
        if self.fps > 0 and self.interval_s > 0:
            _fail(join(where, "intervalS"), "fps and intervalS exclude each other")
        if self.kind != "file" and (self.replay is Replay.EVERY_FRAME or self.loop):
            _fail(join(where, "replay" if self.loop is False else "loop"),
                  "replay every_frame and loop are for video files")  # fmt: skip
        if (self.width is None) != (self.height is None):
            _fail(join(where, "width"), "width and height go together")


CaptureSource = FolderSourceConfig | CameraSourceConfig
SOURCE_KINDS: dict[str, type] = {"folder": FolderSourceConfig, "camera": CameraSourceConfig}
# `serve --watch DIR` / `--camera URL` describe one source each, with these ids.
SOURCE_FLAG_IDS = {"folder": "folder1", "camera": "cam1"}


@dataclass(frozen=True, slots=True)
class KeepStoreConfig:
    """Where capture sources keep images, and the bounds that keep the disk from filling."""

    dir: Path | None = key(
        "dir", to_path, default=None, flag="--keep-dir", metavar="DIR",
        doc="kept images: `<dir>/<source>/<day>/<time>-<RequestId>.png`, `.overlay.png`, `.json`",
    )  # fmt: skip
    max_bytes: int = key(
        "maxBytes", to_int(1 << 20), default=1 << 30, default_doc="1 GiB",
        doc="the oldest kept files are deleted beyond this total",
    )  # fmt: skip
    max_age_s: float = key(
        "maxAgeS", to_number(0.0), default=7 * 86400.0, default_doc="604800 (7 days)",
        doc="kept files older than this are deleted (0 = no age limit)",
    )  # fmt: skip
    min_free_bytes: int = key(
        "minFreeBytes", to_int(0), default=1 << 30, default_doc="1 GiB",
        doc="never leave less free disk space than this: the oldest kept files go first, else the image is not kept",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What capture sources share: the trigger and status topics, the kept-image store."""

    trigger_topic: str | None = key(
        "triggerTopic", to_topic(subscribe=True), default=None, thing_name=True,
        flag="--trigger-topic", metavar="TOPIC",
        doc="trigger messages for every camera source (`Source` picks one); replies go to the results topic",
    )  # fmt: skip
    status_topic: str | None = key(
        "statusTopic", to_topic(subscribe=False), default=None, thing_name=True,
        doc="source status changes (connected, lost, reconnecting) as JSON",
    )  # fmt: skip
    keep: KeepStoreConfig = key(
        "keep", to_section(KeepStoreConfig), default=KeepStoreConfig(), doc="kept images"
    )


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything `lfv-edge serve`, `lfv-edge agent` and the Greengrass component need."""

    model: ModelConfig | None = key(
        "model", to_section(ModelConfig), default=None, doc="the model package"
    )
    image_roots: tuple[Path, ...] = key(
        "imageRoots", to_paths, default=(), default_doc="none", flag="--image-root",
        flag_append=True, metavar="DIR", doc="folders `ImagePath` requests may read from",
    )  # fmt: skip
    limits: LimitsConfig = key(
        "limits", to_section(LimitsConfig), default=LimitsConfig(), doc="input limits"
    )
    queue: QueueConfig = key(
        "queue", to_section(QueueConfig), default=QueueConfig(), doc="the request queue"
    )
    results: ResultsConfig = key(
        "results", to_section(ResultsConfig), default=ResultsConfig(), doc="reply contents"
    )
    stop_timeout_s: float = key(
        "stopTimeoutS", to_number(0.5, 3600.0), default=30.0, flag="--stop-timeout",
        metavar="S",
        doc="on SIGTERM, time to answer what was received (the Greengrass nucleus kills a "
        "component 5 s after SIGTERM: its recipe sets 4)",
    )  # fmt: skip
    stats_interval_s: float = key(
        "statsIntervalS", to_number(0.0), default=60.0, flag="--stats-interval", metavar="S",
        doc="period of stats snapshots (0 = off)",
    )  # fmt: skip
    log_level: str = key(
        "logLevel", to_choice(LOG_LEVELS, upper=True), default="INFO", flag="--log-level",
        doc="`DEBUG`, `INFO`, `WARNING`, `ERROR`",
    )  # fmt: skip
    mqtt: MqttConfig | None = key(
        "mqtt", to_section(MqttConfig), default=None, doc="an MQTT broker (`serve`)"
    )
    ipc: IpcConfig | None = key(
        "ipc", to_section(IpcConfig), default=None, doc="Greengrass IPC (the component)"
    )
    agent: AgentConfig | None = key(
        "agent", to_section(AgentConfig), default=None, doc="the Edge Agent gRPC API"
    )
    http: HttpConfig | None = key(
        "http", to_section(HttpConfig), default=None, doc="the web view, metrics and health"
    )
    sources: tuple[CaptureSource, ...] = key(
        "sources", to_variant_list(SOURCE_KINDS, flag_ids=SOURCE_FLAG_IDS), default=(),
        default_doc="none", doc="capture sources (docs/capture.md)",
    )  # fmt: skip
    capture: CaptureConfig = key(
        "capture", to_section(CaptureConfig), default=CaptureConfig(),
        doc="what capture sources share",
    )  # fmt: skip

    def validate_section(self, where: str) -> None:
        if self.model is None and (self.mqtt is not None or self.ipc is not None):
            _fail("model", "required when mqtt or ipc is configured")
        seen: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            at = f"sources[{index}]"
            if source.id in seen:
                _fail(f"{at}.id", f"{source.id!r} is also sources[{seen[source.id]}]'s id")
            seen[source.id] = index
            if source.keep is not KeepPolicy.NONE and self.capture.keep.dir is None:
                _fail(f"{at}.keep", f"{source.keep.value}: set capture.keep.dir (where to keep)")
            if isinstance(source, CameraSourceConfig):
                triggered = self.trigger_topic_of(source) is not None
                replayed = source.replay is Replay.EVERY_FRAME
                if not (source.fps > 0 or source.interval_s > 0 or triggered or replayed):
                    _fail(at, "a camera needs fps, intervalS or a trigger topic (triggerTopic, "
                          "or capture.triggerTopic); a video file may replay every_frame")  # fmt: skip
        folders = [(i, s) for i, s in enumerate(self.sources) if isinstance(s, FolderSourceConfig)]
        for index, folder in folders:
            for other_index, other in folders:
                if other_index < index and folder.path.resolve() == other.path.resolve():
                    _fail(f"sources[{index}].path", f"also sources[{other_index}]'s folder")

    def trigger_topic_of(self, source: CameraSourceConfig) -> str | None:
        """The topic a camera source takes triggers from (its own, else the shared one)."""
        return source.trigger_topic or self.capture.trigger_topic


TOP_LEVEL_KEYS = tuple(row.path.split(".")[0] for row in reference_rows(ServiceConfig))


def parse_config(
    raw: Mapping[str, object], environ: Mapping[str, str] = os.environ
) -> ServiceConfig:
    """Check and type a raw configuration mapping.

    Raises:
        ConfigError: names the key path and what was expected.
    """
    return parse_section(ServiceConfig, raw, "", environ)


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
    for name, value in overrides.items():
        existing = merged.get(name)
        if isinstance(existing, Mapping) and isinstance(value, Mapping):
            merged[name] = merge_config(existing, value)
        else:
            merged[name] = value
    return merged


# --- command-line flags and docs, derived from the declarations -----------------------------


def _dest(path: str) -> str:
    parts = variant_row_parts(path)
    if parts is not None:  # sources[].url (camera) → config__sources__camera__url
        path = ".".join((parts[0], parts[2], parts[1]))
    return "config__" + path.replace(".", "__")


def add_config_flags(parser: argparse.ArgumentParser, paths: Sequence[str] | None = None) -> None:
    """Add the flags of the keys at `paths` (default: every key that declares one).

    Flag values are strings, parsed like the same key in a file; a flag not given is left out.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for row in reference_rows(ServiceConfig):
        spec = row.spec
        if spec.flag is None or (paths is not None and row.path not in paths):
            continue
        parts = variant_row_parts(row.path)
        if parts is not None:
            section = f"{parts[0]} (one {parts[2]}; a list in --config)"
        else:
            section = row.path.split(".")[0] if "." in row.path else "settings"
        group = groups.get(section) or groups.setdefault(
            section, parser.add_argument_group(section)
        )
        text = spec.doc.replace("`", "").replace("%", "%%")
        default = row.default.replace("`", "").replace("%", "%%")
        help_text = f"{text} [{row.path}; default {default}]"
        if spec.flag_const is not None:
            group.add_argument(
                spec.flag, dest=_dest(row.path), action="store_const", const=spec.flag_const,
                help=f"{help_text}",
            )  # fmt: skip
        else:
            group.add_argument(
                spec.flag, dest=_dest(row.path),
                metavar=spec.metavar or (None if spec.choices else "VALUE"),
                action="append" if spec.flag_append else "store",
                choices=spec.choices, help=help_text,
            )  # fmt: skip


def raw_from_flags(args: argparse.Namespace) -> dict[str, object]:
    """The configuration mapping the given flags stand for (flags not given are left out).

    Flags of a list's entries (`--watch DIR`, `--camera URL --fps N`) describe one entry per
    kind, with the id `SOURCE_FLAG_IDS` gives it; they replace the list of a --config file.
    """
    raw: dict[str, object] = {}
    entries: dict[tuple[str, str], dict[str, object]] = {}
    for row in reference_rows(ServiceConfig):
        value = getattr(args, _dest(row.path), None)
        if value is None:
            continue
        parts = variant_row_parts(row.path)
        if parts is not None:
            list_name, name, kind = parts
            entry = entries.setdefault((list_name, kind), {"type": kind})
            entry[name] = value
            continue
        *sections, name = row.path.split(".")
        target = raw
        for section in sections:
            target = cast(dict[str, object], target.setdefault(section, {}))
        target[name] = value
    for (list_name, kind), entry in entries.items():
        entry.setdefault("id", SOURCE_FLAG_IDS.get(kind, kind))
        cast(list[object], raw.setdefault(list_name, [])).append(entry)
    return raw


def flag_of(path: str) -> str | None:
    """The flag standing for the key at `path`, if any (`sources[0].url` → `--camera`)."""
    entry = re.fullmatch(r"(?P<list>\w+)\[\d+\]\.(?P<key>\w+)", path)
    if entry is not None:
        flags = {
            row.spec.flag
            for row in reference_rows(ServiceConfig)
            if row.spec.flag
            and (parts := variant_row_parts(row.path)) is not None
            and parts[:2] == (entry["list"], entry["key"])
        }
        return flags.pop() if len(flags) == 1 else None
    try:
        return find_key(ServiceConfig, path).flag
    except KeyError:
        return None


def reference_table() -> str:
    """The Markdown table of every key: path, default, flag, meaning (the README shows it)."""
    lines = ["| Key | Default | Flag (`serve`) | Meaning |", "|---|---|---|---|"]
    for row in reference_rows(ServiceConfig):
        flag = f"`{row.spec.flag}`" if row.spec.flag else ""
        lines.append(f"| `{row.path}` | {row.default} | {flag} | {row.spec.doc} |")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_AGENT_SOCKET",
    "SOURCE_FLAG_IDS",
    "AgentConfig",
    "AgentModelConfig",
    "CameraSourceConfig",
    "CaptureConfig",
    "CaptureSource",
    "Device",
    "FolderSourceConfig",
    "HttpConfig",
    "IpcConfig",
    "KeepPolicy",
    "KeepStoreConfig",
    "LimitsConfig",
    "ModelConfig",
    "MqttConfig",
    "OverflowPolicy",
    "QueueConfig",
    "Replay",
    "ResultsConfig",
    "ServiceConfig",
    "TriggerFrame",
    "add_config_flags",
    "camera_kind",
    "flag_of",
    "merge_config",
    "parse_config",
    "raw_from_flags",
    "read_config_file",
    "read_config_mapping",
    "reference_table",
]
