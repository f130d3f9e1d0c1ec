"""`lfv_edge.transports.ipc` in-process: the real awsiotsdk client against the fake nucleus."""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lfv_edge.errors import ConfigError, TransportError
from lfv_edge.greengrass.component import GreengrassComponent
from lfv_edge.service.config import IpcConfig
from lfv_edge.service.ports import IncomingMessage, ReplyRoute
from lfv_edge.transports.ipc import (
    IOT_CORE,
    IOT_CORE_MAX_PAYLOAD_BYTES,
    LOCAL,
    IpcComponentConfig,
    IpcConnection,
    IpcTransport,
)
from tests.conftest import PackageFactory
from tests.fake_nucleus import FakeNucleus
from tests.greengrass.conftest import COMPONENT, MODEL_SPEC, THING, reply, request
from tests.greengrass.recipes import default_configuration, inspector_recipe_path, load_recipe

WAIT_S = 5.0
DEFAULTS = default_configuration(load_recipe(inspector_recipe_path()))
TOPICS = IpcConfig(
    local_requests_topic="lfv/requests",
    local_results_topic="lfv/results",
    iot_core_requests_topic=f"lfv/{THING}/requests",
    iot_core_results_topic=f"lfv/{THING}/results",
    stats_topic=f"lfv/{THING}/stats",
    timeout_s=5.0,
)


class Received:
    """A MessageHandler that records, with a Condition to wait on."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []
        self.fatal: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, message: IncomingMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def on_fatal(self, reason: str) -> None:
        with self._changed:
            self.fatal.append(reason)
            self._changed.notify_all()

    def wait_for(self, count: int) -> list[IncomingMessage]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.messages) >= count, WAIT_S), (
                f"{len(self.messages)} of {count} messages handled"
            )
            return list(self.messages)

    def wait_fatal(self) -> str:
        with self._changed:
            assert self._changed.wait_for(lambda: bool(self.fatal), WAIT_S), "on_fatal was called"
            return self.fatal[0]


@pytest.fixture
def nucleus() -> Iterator[FakeNucleus]:
    with FakeNucleus(COMPONENT, configuration=copy.deepcopy(DEFAULTS), thing_name=THING) as fake:
        yield fake


@pytest.fixture
def connection(nucleus: FakeNucleus) -> Iterator[IpcConnection]:
    connected = IpcConnection.connect(nucleus.environ(), timeout_s=WAIT_S)
    yield connected
    connected.close()


def test_requests_are_routed_to_their_results_topic_in_arrival_order(
    nucleus: FakeNucleus, connection: IpcConnection
) -> None:
    # given
    transport = IpcTransport(connection, TOPICS)
    received = Received()
    transport.start(received, received.on_fatal)
    # when: 50 local binary messages, a JSON message, an IoT Core message
    for i in range(50):
        nucleus.publish_local("lfv/requests", f"m{i}".encode())
    nucleus.publish_local("lfv/requests", {"RequestId": "json"})
    nucleus.deliver_iot_core(f"lfv/{THING}/requests", b"cloud")
    # then
    messages = received.wait_for(52)
    assert [m.payload for m in messages[:50]] == [f"m{i}".encode() for i in range(50)], (
        "one executor worker keeps stream events in order"
    )
    assert json.loads(messages[50].payload) == {"RequestId": "json"}, "JSON messages as bytes"
    local, cloud = messages[0].reply, messages[51].reply
    assert (local.topic, local.channel, local.max_bytes) == ("lfv/results", LOCAL, None), (
        "local replies go to the local results topic, no size cap"
    )
    assert (cloud.topic, cloud.channel) == (f"lfv/{THING}/results", IOT_CORE), (
        "IoT Core replies go to the IoT Core results topic"
    )
    assert cloud.max_bytes == IOT_CORE_MAX_PAYLOAD_BYTES == 131072, "IoT Core's 128 KB limit"


def test_publish_goes_to_the_route_and_failures_are_transport_errors(
    nucleus: FakeNucleus, connection: IpcConnection
) -> None:
    transport = IpcTransport(connection, TOPICS)
    # when
    transport.publish(ReplyRoute("lfv/results", "ipc", LOCAL), b"local reply")
    transport.publish(ReplyRoute(f"lfv/{THING}/results", "ipc", IOT_CORE), b"cloud reply")
    transport.publish_stats(b'{"Received": 0}')
    transport.publish(ReplyRoute(f"lfv/{THING}/results", "ipc", IOT_CORE, b"corr-1"), b"mqtt5")
    # then
    assert nucleus.wait_for_local_publish("lfv/results").binary_message == b"local reply", (
        "PublishToTopic carries the payload as a binary message"
    )
    cloud = nucleus.wait_for_iot_core_publish(f"lfv/{THING}/results")
    assert (cloud.payload, cloud.qos) == (b"cloud reply", "1"), "PublishToIoTCore at QoS 1"
    assert nucleus.wait_for_iot_core_publish(f"lfv/{THING}/stats").qos == "0", "stats at QoS 0"
    mqtt5 = nucleus.wait_for_iot_core_publish(f"lfv/{THING}/results")
    assert mqtt5.request["correlationData"] == base64.b64encode(b"corr-1").decode(), (
        "MQTT 5 correlation data of the request is echoed"
    )
    with pytest.raises(TransportError, match="denied by accessControl"):
        transport.publish(ReplyRoute("not/allowed", "ipc", LOCAL), b"x")
    with pytest.raises(TransportError, match="exceeds the configured limit"):
        transport.publish(
            ReplyRoute(f"lfv/{THING}/results", "ipc", IOT_CORE),
            b"x" * (IOT_CORE_MAX_PAYLOAD_BYTES + 1),
        )


def test_topic_update_resubscribes_and_keeps_a_denied_channel(
    nucleus: FakeNucleus, connection: IpcConnection
) -> None:
    transport = IpcTransport(connection, TOPICS)
    received = Received()
    transport.start(received, received.on_fatal)
    nucleus.update_configuration(
        {"accessControl": {"aws.greengrass.ipc.pubsub": {
            "com.lfvedge.Inspector:pubsub:1": {"resources": ["line3/requests"]}}}}
    )  # fmt: skip
    # when: the local topic moves (allowed), the IoT Core one too (not allowed)
    wanted = IpcConfig(
        local_requests_topic="line3/requests",
        local_results_topic="line3/results",
        iot_core_requests_topic="elsewhere/requests",
        iot_core_results_topic="elsewhere/results",
        stats_topic=None,
        timeout_s=3.0,
    )
    with pytest.raises(TransportError, match="SubscribeToIoTCore elsewhere/requests: denied"):
        transport.update(wanted)
    # then: local moved; IoT Core kept its old topics; the rest applied
    nucleus.wait_for_unsubscribe("local", "lfv/requests")
    nucleus.wait_for_subscription("local", "line3/requests")
    nucleus.wait_for_subscription("iot_core", f"lfv/{THING}/requests")
    assert transport.config.local_results_topic == "line3/results", (
        "the results topic moved with it"
    )
    assert transport.config.iot_core_requests_topic == f"lfv/{THING}/requests", "still subscribed"
    assert transport.config.iot_core_results_topic == f"lfv/{THING}/results", "its replies too"
    assert (transport.config.stats_topic, connection.timeout_s) == (None, 3.0), (
        "the stats topic and the timeout are applied too"
    )
    nucleus.publish_local("line3/requests", b"moved")
    assert received.wait_for(1)[0].reply.topic == "line3/results", (
        "requests on the new topic are answered on the new results topic"
    )


def test_stop_receiving_unsubscribes(nucleus: FakeNucleus, connection: IpcConnection) -> None:
    transport = IpcTransport(connection, TOPICS)
    received = Received()
    transport.start(received, received.on_fatal)
    # when
    transport.stop_receiving()
    # then
    nucleus.wait_for_unsubscribe("local")
    nucleus.wait_for_unsubscribe("iot_core")
    assert nucleus.publish_local("lfv/requests", b"late") == 0, "nobody listens any more"


def test_a_lost_nucleus_is_fatal(nucleus: FakeNucleus, connection: IpcConnection) -> None:
    transport = IpcTransport(connection, TOPICS)
    received = Received()
    transport.start(received, received.on_fatal)
    # when
    nucleus.kill()
    # then
    assert "IPC connection lost" in received.wait_fatal(), "the reason says what happened"
    assert connection.lost_reason is not None, "the connection knows it is gone"
    with pytest.raises(TransportError):
        transport.publish(ReplyRoute("lfv/results", "ipc", LOCAL), b"x")


def test_connect_refusals_are_transport_errors(nucleus: FakeNucleus) -> None:
    with pytest.raises(TransportError, match="run this as a Greengrass component"):
        IpcConnection.connect({})
    environ = {**nucleus.environ(), "SVCUID": "not-the-token"}
    # a refused token surfaces as AccessDeniedError or AWS_IO_SOCKET_CLOSED (a race in the SDK)
    with pytest.raises(TransportError, match="cannot connect to the Greengrass nucleus"):
        IpcConnection.connect(environ, timeout_s=WAIT_S)


def test_every_call_is_bounded_by_a_timeout() -> None:
    # given an SDK future the nucleus never completes
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    connection = IpcConnection(client=None, timeout_s=0.05)
    # then
    with pytest.raises(TransportError, match=r"UpdateState RUNNING: no answer .* within 0.05 s"):
        connection.call("UpdateState RUNNING", lambda: never)


def test_component_configuration_read_check_and_watch(
    nucleus: FakeNucleus, connection: IpcConnection
) -> None:
    environ = {"AWS_IOT_THING_NAME": THING, "LFV_EDGE_DEMO_MODEL": "/models/demo"}
    config = IpcComponentConfig(connection, environ)
    # when
    raw = config.read_raw()
    parsed = config.read()
    # then
    assert "accessControl" in raw, "read_raw is the whole configuration"
    assert parsed.model is not None, "model is configured"
    assert parsed.model.path == Path("/models/demo"), "${LFV_EDGE_DEMO_MODEL} expanded"
    with pytest.raises(ConfigError, match=r"limits\.minImageSide: larger than maxImageSide"):
        config.check({**raw, "limits": {"minImageSide": "5000"}})
    # and: one event per changed leaf
    paths: list[tuple[str, ...]] = []
    changed = threading.Condition()

    def on_change(path: tuple[str, ...]) -> None:
        with changed:
            paths.append(path)
            changed.notify_all()

    config.watch(on_change)
    nucleus.wait_for_subscription("configuration", "")
    nucleus.update_configuration({"queue": {"size": "4", "overflow": "drop_oldest"}})
    with changed:
        assert changed.wait_for(lambda: len(paths) == 2, WAIT_S), paths
    assert sorted(paths) == [("queue", "overflow"), ("queue", "size")], (
        "one event per changed leaf, none for the parent"
    )


class Records(logging.Handler):
    """Log records of one logger, with a Condition to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, count: int = 1) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: sum(text in m for m in self.messages) >= count, WAIT_S
            ), self.messages


def test_a_burst_of_changes_is_applied_once(
    nucleus: FakeNucleus, connection: IpcConnection, make_package: PackageFactory, tmp_path: Path
) -> None:
    # given the component in-process, on a real model
    package = make_package.copy(MODEL_SPEC, dest=tmp_path / "model")
    environ = {"AWS_IOT_THING_NAME": THING, "LFV_EDGE_DEMO_MODEL": str(package)}
    component = GreengrassComponent(
        connection, IpcComponentConfig(connection, environ), environ, debounce_s=0.3
    )
    records = Records()
    logger = logging.getLogger("lfv_edge.greengrass.component")
    logger.addHandler(records)
    root_level = logging.getLogger().level  # the component sets it from logLevel
    try:
        component.start()
        nucleus.wait_for_state("RUNNING")
        # when: one deployment changes five leaves
        changed = nucleus.update_configuration(
            {
                "model": {"thresholdOverride": "0.95"},
                "queue": {"size": "3", "overflow": "drop_oldest"},
                "imageRoots": [str(tmp_path)],
                "results": {"includeMask": False},
            }
        )
        records.wait_for("configuration applied")
        # then
        assert len(changed) == 5, changed
        assert component.applied == 1, "five events, one GetConfiguration and one apply"
        nucleus.publish_local("lfv/requests", request("r1", 0.9))
        answer = reply(nucleus.wait_for_local_publish("lfv/results").binary_message)
        assert answer["Threshold"] == 0.95, answer
        assert answer["DetectAnomalyResult"]["IsAnomalous"] is False, "0.9 < 0.95"
        # and: a validation request is answered between updates
        assert component.validate({**nucleus.configuration(), "logLevel": "LOUD"}) is not None, (
            "an invalid logLevel is named by the validator"
        )
    finally:
        logger.removeHandler(records)
        logging.getLogger().setLevel(root_level)
        component.request_stop("test over")
        assert component.wait() == 0, "stopped on request: exit 0"
        component.close()
