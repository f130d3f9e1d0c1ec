"""A real mosquitto on 127.0.0.1 (free port, temp config), a test PKI, paho peers, a service factory.

mosquitto is required: a missing broker is a test failure, never a skip (CI installs
Debian's `mosquitto`). Every test uses its own topic prefix.
"""

from __future__ import annotations

import base64
import getpass
import json
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lfv_edge.inspection.pipeline import ImageSource, Inspector, Prepared
from lfv_edge.inspection.preprocess import Preprocessor
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.networks import red_mean_for_probability
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.config import OverflowPolicy, parse_config
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.transports.mqtt import MqttTransport
from tests.conftest import PackageFactory
from tests.gated import GatedRunner

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT_S = 20.0  # generous bound for any single event; tests never sleep


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- broker ----------------------------------------------------------------------------


@dataclass
class Broker:
    """One mosquitto process, restartable on the same port(s) with the same persistence."""

    folder: Path
    port: int
    extra_config: str = ""
    anonymous: bool = True  # False: every client is refused (CONNACK "Not authorized")
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        config = self.folder / "mosquitto.conf"
        config.write_text(
            # Started as root, mosquitto drops to user "mosquitto", which cannot write the
            # persistence file into our temp folder: stay who we are.
            f"user {getpass.getuser()}\n"
            f"per_listener_settings false\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            f"persistence true\n"
            f"persistence_location {self.folder}/\n"
            f"log_dest stderr\n"  # unbuffered, unlike stdout into a pipe
            f"log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"listener {self.port} 127.0.0.1\n"
            f"{self.extra_config}"
        )
        return config

    def start(self) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail(
                f"mosquitto is required for the MQTT tests (apt-get install mosquitto); not at {MOSQUITTO}"
            )
        config = self.write_config()
        process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        running = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self.log.append(line.rstrip())
                if " running" in line:
                    running.set()
            running.set()  # exited

        self._reader = threading.Thread(target=read, name="mosquitto-log", daemon=True)
        self._reader.start()
        running.wait(WAIT_S)
        self.process = process
        if process.poll() is not None or not any(" running" in line for line in self.log):
            self.stop(kill=True)
            pytest.fail("mosquitto did not start:\n" + "\n".join(self.log[-20:]))

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM: mosquitto saves its persistence database and exits."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(WAIT_S)
        if self._reader is not None:
            self._reader.join(WAIT_S)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses."""
    return f"lfvtest/{request.node.name[:40]}/{uuid.uuid4().hex[:8]}".replace("[", "_").replace(
        "]", "_"
    )


# --- PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_server_cert: Path
    rogue_server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"openssl {' '.join(args)} failed: {result.stderr}"


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert), cwd=folder)  # fmt: skip
    return cert, key


def _make_leaf(
    folder: Path, name: str, ca: tuple[Path, Path], *, server: bool
) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
             "-out", str(csr), cwd=folder)  # fmt: skip
    ext = folder / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        if server
        else "extendedKeyUsage=clientAuth\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=folder)  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with server and client certificates, and a rogue CA the client does not trust."""
    folder = tmp_path_factory.mktemp("pki")
    ca = _make_ca(folder, "test-ca")
    server = _make_leaf(folder, "server", ca, server=True)
    client = _make_leaf(folder, "client", ca, server=False)
    rogue = _make_ca(folder, "rogue-ca")
    rogue_server = _make_leaf(folder, "rogue-server", rogue, server=True)
    return Pki(ca[0], *server, *client, rogue[0], *rogue_server)


@dataclass(frozen=True)
class TlsBroker:
    broker: Broker
    tls_port: int  # server certificate from the test CA
    mtls_port: int  # same, and a client certificate from the test CA is required
    rogue_port: int  # server certificate from a CA the client does not know


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    tls_port, mtls_port, rogue_port = free_port(), free_port(), free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\n"
        f"listener {mtls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\nrequire_certificate true\n"
        f"listener {rogue_port} 127.0.0.1\ncafile {pki.rogue_ca}\n"
        f"certfile {pki.rogue_server_cert}\nkeyfile {pki.rogue_server_key}\n"
    )
    instance = Broker(tmp_path_factory.mktemp("mosquitto-tls"), free_port(), extra)
    instance.start()
    yield TlsBroker(instance, tls_port, mtls_port, rogue_port)
    instance.stop()


# --- peers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None

    def json(self) -> dict[str, Any]:
        body = json.loads(self.payload)
        assert isinstance(body, dict), "replies are JSON objects"
        return body


class Peer:
    """A real paho MQTT 5 client playing a camera, a dashboard or a PLC gateway."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str | None = None,
        persistent: bool = False,
        tls: Mapping[str, Path] | None = None,
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"peer-{uuid.uuid4().hex[:10]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if tls is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(tls["ca"]))
            if "cert" in tls:
                context.load_cert_chain(str(tls["cert"]), str(tls["key"]))
            self.client.tls_set_context(context)
        self.port = port
        self.persistent = persistent
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.connect_failures: list[str] = []
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._subscriptions: list[str] = []

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason: ReasonCode, properties: object) -> None:  # fmt: skip
        if reason.is_failure:
            self.connect_failures.append(str(reason))
            return
        for sub in self._subscriptions:
            client.subscribe(sub, qos=1)
        self._connected.set()

    def _on_subscribe(self, *args: object) -> None:
        self._subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object,
                       reason: ReasonCode, properties: object) -> None:  # fmt: skip
        self._connected.clear()
        with self._changed:
            self.connect_failures.append(f"disconnected: {reason}")
            self._changed.notify_all()

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        with self._changed:
            self.connect_failures.append("connect failed")
            self._changed.notify_all()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._changed:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain), correlation)
            )
            self._changed.notify_all()

    def connect(self, *subscriptions: str) -> Peer:
        """Connect, subscribe (QoS 1) and wait until the broker confirmed."""
        self._subscriptions = list(subscriptions)
        properties = None
        if self.persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", self.port, 30, clean_start=not self.persistent,
                            properties=properties)  # fmt: skip
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), f"peer connected to port {self.port}"
        if subscriptions:
            assert self._subscribed.wait(WAIT_S), "the broker confirmed the subscription"
        return self

    def wait_connected(self) -> None:
        """After a broker restart: block until paho reconnected (its backoff is 1–2 s)."""
        assert self._connected.wait(WAIT_S), f"peer reconnected to port {self.port}"

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        wait: bool = True,
    ) -> None:
        properties = None
        if response_topic is not None or correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if wait:
            info.wait_for_publish(WAIT_S)

    def on(self, topic: str) -> list[Received]:
        with self._changed:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, count: int, topic: str, *, where: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        """Block until `count` messages matched on `topic`; return all matching ones."""

        def matching() -> list[Received]:
            return [m for m in self.messages if m.topic == topic and (where is None or where(m))]

        with self._changed:
            ok = self._changed.wait_for(lambda: len(matching()) >= count, timeout=WAIT_S)
            found = matching()
        assert ok, f"{len(found)} of {count} messages on {topic} within {WAIT_S} s"
        return found

    def wait_disconnected(self) -> list[str]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self.connect_failures), timeout=WAIT_S)
            return list(self.connect_failures)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """`peers(port, ...)` → a Peer; all are closed after the test."""
    made: list[Peer] = []

    def make(port: int, **kwargs: object) -> Peer:
        peer = Peer(port, **kwargs)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


# --- requests --------------------------------------------------------------------------


def red_rgb(height: int, width: int, probability: float) -> np.ndarray:
    """An image the controllable classifier scores at `probability`."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (round(red_mean_for_probability(probability) * 255), 90, 60)
    return image


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok, "JPEG encoding works"
    return data.tobytes()


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok, "PNG encoding works"
    return data.tobytes()


def body_request(request_id: str, image: bytes, content_type: str = "image/jpeg") -> bytes:
    return json.dumps(
        {
            "RequestId": request_id,
            "Body": base64.b64encode(image).decode(),
            "ContentType": content_type,
        }
    ).encode()


def request_ids(messages: list[Received]) -> list[Any]:
    return [m.json().get("RequestId") for m in messages]


# --- services --------------------------------------------------------------------------


class ObservedInspector(Inspector):
    """The real inspector with a gated runner and a count of prepared messages."""

    def __init__(self, base: Inspector) -> None:
        self.gated = GatedRunner(base.runner)
        super().__init__(base.package, self.gated, device=base.device, limits=base.limits)
        self._prepared = 0
        self._changed = threading.Condition()

    def prepare(
        self,
        source: ImageSource,
        out: np.ndarray | None = None,
        *,
        keep_pixels: bool = False,
        preprocessor: Preprocessor | None = None,
    ) -> Prepared:
        prepared = super().prepare(source, out, keep_pixels=keep_pixels, preprocessor=preprocessor)
        with self._changed:
            self._prepared += 1
            self._changed.notify_all()
        return prepared

    def wait_prepared(self, count: int) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: self._prepared >= count, timeout=WAIT_S)
        assert ok, f"{self._prepared} of {count} messages prepared"


@pytest.fixture(scope="module")
def small_package(make_package: PackageFactory) -> Path:
    return make_package(PackageSpec(image_width=64, image_height=64))


@pytest.fixture(scope="module")
def inspector(small_package: Path) -> Inspector:
    """One loaded model for the module's services (they run one after another)."""
    return Inspector.load(read_model_package(small_package), device="cpu")


@dataclass
class Running:
    service: Service
    transport: MqttTransport
    results: str
    requests: str

    def stop(self, timeout_s: float = WAIT_S) -> bool:
        return self.service.stop(timeout_s)


@pytest.fixture
def serve(inspector: Inspector) -> Iterator[Callable[..., Running]]:
    """`serve(broker_url, topic, **mqtt_keys)` → a started Service on an MqttTransport."""
    running: list[Running] = []

    def start(
        broker_url: str,
        topic: str,
        *,
        inspector_: Inspector | None = None,
        image_roots: tuple[Path, ...] = (),
        max_payload_bytes: int = 16 << 20,
        overflow: OverflowPolicy = OverflowPolicy.REJECT,
        queue_size: int = 8,
        wait_ready: bool = True,
        **mqtt: object,
    ) -> Running:
        raw: dict[str, object] = {
            "broker": broker_url,
            "requestsTopic": f"{topic}/requests",
            "resultsTopic": f"{topic}/results",
            "clientId": f"svc-{uuid.uuid4().hex[:10]}",
            **mqtt,
        }
        config = parse_config({"model": {"path": "unused"}, "mqtt": raw}, {})
        assert config.mqtt is not None
        transport = MqttTransport.from_config(config.mqtt, status_fields={"Model": {"Name": "t"}})
        service = Service(
            inspector_ or inspector,
            [transport],
            settings=ServiceSettings(
                image_roots=image_roots, max_payload_bytes=max_payload_bytes, overflow=overflow
            ),
            queue_size=queue_size,
            stats_interval_s=0,
        )
        service.start()
        if wait_ready:
            assert transport.wait_ready(WAIT_S), "the service connected and subscribed"
        handle = Running(service, transport, config.mqtt.results_topic, config.mqtt.requests_topic)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.stop(5.0)
