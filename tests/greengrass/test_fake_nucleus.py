"""The fake nucleus against the real awsiotsdk 1.31.0 client, plus its pure building blocks.

Every IPC call uses `*_async(...).result(timeout=...)`: the SDK's synchronous methods wait
forever when a server never answers, which would turn a fake bug into a hung test run.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from awscrt.exceptions import AwsCrtError
from awsiot.eventstreamrpc import (
    AccessDeniedError,
    ConnectionClosedError,
    LifecycleHandler,
    StreamClosedError,
)
from awsiot.greengrasscoreipc import connect
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    ConfigurationValidityReport,
    ConfigurationValidityStatus,
    InvalidArgumentsError,
    JsonMessage,
    PublishMessage,
    ReceiveMode,
    ResourceNotFoundError,
    ServiceError,
    UnauthorizedError,
)

from tests.fake_nucleus import FakeNucleus, FakeNucleusError
from tests.fake_nucleus.authorization import LookupPolicy, check, resource_matches
from tests.fake_nucleus.configstore import ConfigStore
from tests.fake_nucleus.eventstream import (
    MAX_MESSAGE_SIZE,
    ChecksumError,
    FrameError,
    Header,
    HeaderType,
    Message,
    decode_message,
    encode_message,
    read_message,
)
from tests.fake_nucleus.rpc import MessageFlag, MessageType, RpcFrame, encode_rpc, to_rpc_frame
from tests.fake_nucleus.topics import iot_core_filter_matches, local_filter_matches

TIMEOUT_S = 5.0
COMPONENT = "com.example.LfvEdge"
OTHER = "com.example.Dashboard"
SVCUID = "svcuid-under-test"
CONFIG: dict[str, Any] = {
    "PublishResultsOnTopic": "lfv/fake-thing/verdicts",
    "InferenceInterval": "5",
    "Camera": {"Device": "/dev/video0", "Fps": "10"},
    "accessControl": {
        "aws.greengrass.ipc.mqttproxy": {
            f"{COMPONENT}:mqttproxy:1": {
                "operations": ["aws.greengrass#PublishToIoTCore"],
                "resources": ["lfv/+/verdicts"],
            },
            f"{COMPONENT}:mqttproxy:2": {
                "operations": ["aws.greengrass#SubscribeToIoTCore"],
                "resources": ["lfv/+/requests/#"],
            },
        },
        "aws.greengrass.ipc.pubsub": {
            f"{COMPONENT}:pubsub:1": {"operations": ["*"], "resources": ["lfv/local/*"]},
        },
    },
}
OTHER_CONFIG: dict[str, Any] = {
    "accessControl": {
        "aws.greengrass.ipc.pubsub": {
            f"{OTHER}:pubsub:1": {"operations": ["*"], "resources": ["lfv/local/*"]},
        },
    },
}


class Lifecycle(LifecycleHandler):  # type: ignore[misc]
    """Records the connection's end; the SDK calls it on its CRT event-loop thread."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()
        self.reason: Exception | None = None

    def on_disconnect(self, reason: Exception | None) -> None:
        self.reason = reason
        self.disconnected.set()


@dataclass
class Client:
    ipc: Any  # GreengrassCoreIPCClientV2 (untyped)
    lifecycle: Lifecycle
    events: queue.Queue[Any] = field(default_factory=queue.Queue)


@contextmanager
def ipc_client(nucleus: FakeNucleus, component: str | None = None) -> Iterator[Client]:
    lifecycle = Lifecycle()
    raw = connect(
        ipc_socket=nucleus.socket_path,
        authtoken=nucleus.svcuid(component),
        lifecycle_handler=lifecycle,
        timeout=TIMEOUT_S,
    )
    # One worker keeps stream events in order (the default pool reorders them).
    ipc = GreengrassCoreIPCClientV2(client=raw, executor=ThreadPoolExecutor(max_workers=1))
    try:
        yield Client(ipc, lifecycle)
    finally:
        ipc.close()


@pytest.fixture
def nucleus() -> Iterator[FakeNucleus]:
    with FakeNucleus(COMPONENT, SVCUID, copy.deepcopy(CONFIG)) as fake:
        fake.add_component(OTHER, configuration=copy.deepcopy(OTHER_CONFIG))
        yield fake


@pytest.fixture
def client(nucleus: FakeNucleus) -> Iterator[Client]:
    with ipc_client(nucleus) as connected:
        yield connected


def test_get_configuration_whole_leaf_object_and_missing(client: Client) -> None:
    # when
    whole = client.ipc.get_configuration_async(key_path=[]).result(timeout=TIMEOUT_S)
    leaf = client.ipc.get_configuration_async(key_path=["Camera", "Fps"]).result(timeout=TIMEOUT_S)
    subtree = client.ipc.get_configuration_async(key_path=["camera"]).result(timeout=TIMEOUT_S)
    # then
    assert whole.component_name == COMPONENT, "componentName defaults to the caller"
    assert whole.value == CONFIG, "an empty key path returns the whole configuration"
    assert leaf.value == {"Fps": "10"}, "a leaf comes back as {leafName: value}"
    assert subtree.value == CONFIG["Camera"], (
        "an object comes back as itself, keys case-insensitive"
    )
    with pytest.raises(ResourceNotFoundError) as missing:
        client.ipc.get_configuration_async(key_path=["Nope"]).result(timeout=TIMEOUT_S)
    assert missing.value.message == "Key not found", "the nucleus's message"


def test_get_configuration_of_another_component(client: Client) -> None:
    # when
    other = client.ipc.get_configuration_async(component_name=OTHER, key_path=[]).result(
        timeout=TIMEOUT_S
    )
    # then
    assert other.component_name == OTHER
    assert other.value == OTHER_CONFIG, "GetConfiguration may read another component's config"


def test_publish_to_iot_core_is_recorded_with_payload_bytes(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    payload = bytes(range(256))  # not UTF-8: proves base64 round trip
    # when
    client.ipc.publish_to_iot_core_async(
        topic_name="lfv/fake-thing/verdicts", qos=QOS.AT_LEAST_ONCE, payload=payload
    ).result(timeout=TIMEOUT_S)
    # then
    record = nucleus.wait_for_iot_core_publish("lfv/+/verdicts", TIMEOUT_S)
    assert record.payload == payload, "payload bytes survive base64 in JSON"
    assert (record.component, record.topic, record.qos) == (
        COMPONENT,
        "lfv/fake-thing/verdicts",
        "1",
    )
    assert nucleus.iot_core_publishes == [record]
    assert nucleus.protocol_errors == [], "the real client speaks the fake's protocol"


def test_publish_to_iot_core_outside_access_control_is_unauthorized(
    nucleus: FakeNucleus, client: Client
) -> None:
    # when
    with pytest.raises(UnauthorizedError) as denied:
        client.ipc.publish_to_iot_core_async(
            topic_name="lfv/fake-thing/secrets", qos=QOS.AT_MOST_ONCE, payload=b"x"
        ).result(timeout=TIMEOUT_S)
    # then
    assert denied.value.message == "Not Authorized", "MqttProxyIPCAgent's message"
    [denial] = nucleus.denied
    assert (denial.service, denial.operation, denial.resource) == (
        "aws.greengrass.ipc.mqttproxy",
        "aws.greengrass#PublishToIoTCore",
        "lfv/fake-thing/secrets",
    )
    assert nucleus.iot_core_publishes == [], "a denied publish is not recorded"


def test_publish_to_iot_core_above_128_kib_is_a_service_error(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    topic = "lfv/fake-thing/verdicts"
    # when
    client.ipc.publish_to_iot_core_async(
        topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=b"x" * 131072
    ).result(timeout=TIMEOUT_S)
    with pytest.raises(ServiceError) as too_big:
        client.ipc.publish_to_iot_core_async(
            topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=b"x" * 131073
        ).result(timeout=TIMEOUT_S)
    # then
    assert "131073 bytes exceeds the configured limit of 131072 bytes" in too_big.value.message
    assert [len(r.payload) for r in nucleus.iot_core_publishes] == [131072], "128 KiB exactly fits"


def test_publish_with_wildcard_topic_is_rejected(client: Client) -> None:
    # when / then: IoT Core - allowed by the policy (`+` matches itself), refused by MqttClient
    with pytest.raises(ServiceError) as iot_core:
        client.ipc.publish_to_iot_core_async(
            topic_name="lfv/+/verdicts", qos=QOS.AT_LEAST_ONCE, payload=b"x"
        ).result(timeout=TIMEOUT_S)
    assert "should not contain wildcard" in iot_core.value.message
    # when / then: local pub/sub
    with pytest.raises(InvalidArgumentsError) as local:
        client.ipc.publish_to_topic_async(
            topic="lfv/local/*",
            publish_message=PublishMessage(binary_message=BinaryMessage(message=b"x")),
        ).result(timeout=TIMEOUT_S)
    assert local.value.message == "Publish topic must not contain a wildcard."


def test_subscribe_to_topic_receives_publish_local(nucleus: FakeNucleus, client: Client) -> None:
    # given
    subscribed = client.ipc.subscribe_to_topic_async(
        topic="lfv/local/requests", on_stream_event=client.events.put
    )[0]
    subscribed.result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("local", "lfv/local/requests", TIMEOUT_S)
    # when
    binary_count = nucleus.publish_local("lfv/local/requests", b"\x00image")
    json_count = nucleus.publish_local("lfv/local/requests", {"RequestId": "r1"})
    # then
    binary = client.events.get(timeout=TIMEOUT_S)
    json_event = client.events.get(timeout=TIMEOUT_S)
    assert (binary_count, json_count) == (1, 1)
    assert binary.binary_message.message == b"\x00image"
    assert binary.binary_message.context.topic == "lfv/local/requests"
    assert json_event.json_message.message == {"RequestId": "r1"}


def test_publish_to_topic_reaches_other_components_subscriber(nucleus: FakeNucleus) -> None:
    with ipc_client(nucleus) as publisher, ipc_client(nucleus, OTHER) as subscriber:
        # given: OTHER listens on a wildcard, the publisher listens to its own topic from others
        subscriber.ipc.subscribe_to_topic_async(
            topic="lfv/local/#", on_stream_event=subscriber.events.put
        )[0].result(timeout=TIMEOUT_S)
        publisher.ipc.subscribe_to_topic_async(
            topic="lfv/local/results",
            receive_mode=ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS,
            on_stream_event=publisher.events.put,
        )[0].result(timeout=TIMEOUT_S)
        nucleus.wait_for_subscription("local", "lfv/local/#", TIMEOUT_S, component=OTHER)
        nucleus.wait_for_subscription("local", "lfv/local/results", TIMEOUT_S)
        # when
        publisher.ipc.publish_to_topic_async(
            topic="lfv/local/results",
            publish_message=PublishMessage(json_message=JsonMessage(message={"IsAnomalous": True})),
        ).result(timeout=TIMEOUT_S)
        # then
        event = subscriber.events.get(timeout=TIMEOUT_S)
        assert event.json_message.message == {"IsAnomalous": True}
        assert event.json_message.context.topic == "lfv/local/results", "context has the topic"
        record = nucleus.wait_for_local_publish("lfv/local/results", TIMEOUT_S)
        assert record.json_message == {"IsAnomalous": True}
        nucleus.publish_local("lfv/local/results", b"from someone else")
        own = publisher.events.get(timeout=TIMEOUT_S)
        assert own.binary_message.message == b"from someone else", (
            "RECEIVE_MESSAGES_FROM_OTHERS skipped the component's own publish, not others'"
        )


def test_pubsub_policy_reads_mqtt_wildcards_literally() -> None:
    # given: a pubsub policy for the filter `alerts/#` (STANDARD lookup)
    config = {
        "accessControl": {
            "aws.greengrass.ipc.pubsub": {
                "p": {"operations": ["*"], "resources": ["alerts/#"]},
            }
        }
    }
    with FakeNucleus(COMPONENT, SVCUID, config) as nucleus, ipc_client(nucleus) as c:
        # when
        c.ipc.subscribe_to_topic_async(topic="alerts/#", on_stream_event=c.events.put)[0].result(
            timeout=TIMEOUT_S
        )
        # then
        with pytest.raises(UnauthorizedError) as denied:
            c.ipc.publish_to_topic_async(
                topic="alerts/a",
                publish_message=PublishMessage(binary_message=BinaryMessage(message=b"x")),
            ).result(timeout=TIMEOUT_S)
    assert denied.value.message == (
        f"Principal {COMPONENT} is not authorized to perform "
        "aws.greengrass.ipc.pubsub:aws.greengrass#PublishToTopic on resource alerts/a"
    )


def test_subscribe_to_iot_core_with_wildcard_filter_receives_deliveries(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    client.ipc.subscribe_to_iot_core_async(
        topic_name="lfv/fake-thing/requests/#",
        qos=QOS.AT_LEAST_ONCE,
        on_stream_event=client.events.put,
    )[0].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("iot_core", "lfv/fake-thing/requests/#", TIMEOUT_S)
    # when
    delivered = nucleus.deliver_iot_core("lfv/fake-thing/requests/cam1", b'{"RequestId": "r2"}')
    missed = nucleus.deliver_iot_core("lfv/other-thing/requests/cam1", b"{}")
    # then
    event = client.events.get(timeout=TIMEOUT_S)
    assert (delivered, missed) == (1, 0), "only the matching filter receives"
    assert event.message.topic_name == "lfv/fake-thing/requests/cam1"
    assert event.message.payload == b'{"RequestId": "r2"}'


def test_subscribe_to_iot_core_outside_access_control_is_unauthorized(
    nucleus: FakeNucleus, client: Client
) -> None:
    # when
    with pytest.raises(UnauthorizedError):
        client.ipc.subscribe_to_iot_core_async(
            topic_name="lfv/#", qos=QOS.AT_LEAST_ONCE, on_stream_event=client.events.put
        )[0].result(timeout=TIMEOUT_S)
    # then
    assert [d.operation for d in nucleus.denied] == ["aws.greengrass#SubscribeToIoTCore"]


def test_closing_a_subscription_stream_unsubscribes(nucleus: FakeNucleus, client: Client) -> None:
    # given
    response, operation = client.ipc.subscribe_to_topic_async(
        topic="lfv/local/requests", on_stream_event=client.events.put
    )
    response.result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("local", "lfv/local/requests", TIMEOUT_S)
    # when
    operation.close().result(timeout=TIMEOUT_S)
    # then
    nucleus.wait_for_unsubscribe("local", "lfv/local/requests", TIMEOUT_S)
    assert nucleus.publish_local("lfv/local/requests", b"x") == 0


def test_update_state_is_recorded(nucleus: FakeNucleus, client: Client) -> None:
    # when
    client.ipc.update_state_async(state="RUNNING").result(timeout=TIMEOUT_S)
    client.ipc.update_state_async(state="ERRORED").result(timeout=TIMEOUT_S)
    # then
    assert nucleus.wait_for_state("RUNNING", TIMEOUT_S).component == COMPONENT
    nucleus.wait_for_state("ERRORED", TIMEOUT_S)
    assert nucleus.states == ["RUNNING", "ERRORED"]


def test_configuration_update_sends_one_event_per_changed_leaf(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    client.ipc.subscribe_to_configuration_update_async(
        key_path=[], on_stream_event=client.events.put
    )[0].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("configuration", None, TIMEOUT_S)
    # when: three leaves change, one is rewritten with the same value
    changed = nucleus.update_configuration(
        {
            "InferenceInterval": "10",
            "Camera": {"Fps": "15", "Exposure": "auto", "Device": "/dev/video0"},
        }
    )
    nucleus.update_configuration({"Sentinel": "1"})
    # then
    paths = [
        tuple(client.events.get(timeout=TIMEOUT_S).configuration_update_event.key_path)
        for _ in range(4)
    ]
    expected = {("InferenceInterval",), ("Camera", "Fps"), ("Camera", "Exposure")}
    assert set(paths[:3]) == expected, "one event per changed leaf, none for unchanged Device"
    assert paths[3] == ("Sentinel",), "no further events before the next update"
    assert set(changed) == expected
    value = client.ipc.get_configuration_async(key_path=["Camera"]).result(timeout=TIMEOUT_S).value
    assert value == {"Device": "/dev/video0", "Fps": "15", "Exposure": "auto"}


def test_configuration_subscription_on_a_key_path_sees_only_that_subtree(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    client.ipc.subscribe_to_configuration_update_async(
        key_path=["Camera"], on_stream_event=client.events.put
    )[0].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("configuration", "Camera", TIMEOUT_S)
    # when
    nucleus.update_configuration({"InferenceInterval": "1"})
    nucleus.update_configuration({"Camera": {"Fps": "1"}})
    # then
    event = client.events.get(timeout=TIMEOUT_S).configuration_update_event
    assert (event.component_name, event.key_path) == (COMPONENT, ["Camera", "Fps"])


def test_reset_restores_defaults_and_removes_keys_without_one(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    nucleus.update_configuration({"Camera": {"Fps": "30", "Exposure": "auto"}})
    client.ipc.subscribe_to_configuration_update_async(
        key_path=["Camera"], on_stream_event=client.events.put
    )[0].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("configuration", "Camera", TIMEOUT_S)
    # when: RESET is applied before MERGE
    changed = nucleus.update_configuration(
        {"Camera": {"Device": "/dev/video1"}}, reset=["/Camera/Fps", "/Camera/Exposure"]
    )
    # then
    assert nucleus.configuration()["Camera"] == {"Device": "/dev/video1", "Fps": "10"}
    assert set(changed) == {("Camera", "Fps"), ("Camera", "Device"), ("Camera", "Exposure")}
    paths = {
        tuple(client.events.get(timeout=TIMEOUT_S).configuration_update_event.key_path)
        for _ in range(3)
    }
    assert paths == set(changed), "a removed leaf is reported too"


def test_component_update_configuration_notifies_subscribers(
    nucleus: FakeNucleus, client: Client
) -> None:
    # given
    with pytest.raises(ResourceNotFoundError):  # the key path must exist to be watched
        client.ipc.subscribe_to_configuration_update_async(key_path=["Runtime"])[0].result(
            timeout=TIMEOUT_S
        )
    client.ipc.subscribe_to_configuration_update_async(
        key_path=[], on_stream_event=client.events.put
    )[0].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("configuration", None, TIMEOUT_S)
    # when
    client.ipc.update_configuration_async(
        key_path=["Runtime"], timestamp=_now(), value_to_merge={"LastModel": "v2"}
    ).result(timeout=TIMEOUT_S)
    # then
    event = client.events.get(timeout=TIMEOUT_S).configuration_update_event
    assert event.key_path == ["Runtime", "LastModel"]
    assert nucleus.configuration()["Runtime"] == {"LastModel": "v2"}
    with pytest.raises(InvalidArgumentsError):  # accessControl is off limits for IPC updates
        client.ipc.update_configuration_async(
            key_path=[], timestamp=_now(), value_to_merge={"accessControl": {}}
        ).result(timeout=TIMEOUT_S)


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.timezone.utc)


def test_validation_round_trip_accepted_and_rejected(nucleus: FakeNucleus, client: Client) -> None:
    # given: a validator that requires InferenceInterval to be digits
    def on_validate(event: Any) -> None:
        request = event.validate_configuration_update_event
        interval = str(request.configuration.get("InferenceInterval", ""))
        ok = interval.isdigit()
        report = ConfigurationValidityReport(
            status=ConfigurationValidityStatus.ACCEPTED
            if ok
            else ConfigurationValidityStatus.REJECTED,
            deployment_id=request.deployment_id,
            message=None if ok else f"InferenceInterval: expected digits, got {interval!r}",
        )
        # V2 allows IPC from a stream callback (it runs on the executor, not the CRT thread)
        client.ipc.send_configuration_validity_report_async(
            configuration_validity_report=report
        ).result(timeout=TIMEOUT_S)

    client.ipc.subscribe_to_validate_configuration_updates_async(on_stream_event=on_validate)[
        0
    ].result(timeout=TIMEOUT_S)
    nucleus.wait_for_subscription("validate_configuration", None, TIMEOUT_S)
    # when
    accepted = nucleus.validate_configuration(
        {**CONFIG, "InferenceInterval": "10"}, "d-1", TIMEOUT_S
    )
    rejected = nucleus.validate_configuration(
        {**CONFIG, "InferenceInterval": "ten"}, "d-2", TIMEOUT_S
    )
    # then
    assert (accepted.status, accepted.deployment_id, accepted.message) == ("ACCEPTED", "d-1", None)
    assert (rejected.status, rejected.message) == (
        "REJECTED",
        "InferenceInterval: expected digits, got 'ten'",
    )
    assert nucleus.configuration()["InferenceInterval"] == "5", "validation does not apply"


def test_validate_without_a_validator_and_unsolicited_report(
    nucleus: FakeNucleus, client: Client
) -> None:
    # when / then
    with pytest.raises(FakeNucleusError):
        nucleus.validate_configuration(CONFIG, "d-1", TIMEOUT_S)
    with pytest.raises(InvalidArgumentsError) as unsolicited:
        client.ipc.send_configuration_validity_report_async(
            configuration_validity_report=ConfigurationValidityReport(
                status=ConfigurationValidityStatus.ACCEPTED, deployment_id="d-9"
            )
        ).result(timeout=TIMEOUT_S)
    assert unsolicited.value.message == "Validation request either timed out or was never made"


def test_wrong_svcuid_is_refused(nucleus: FakeNucleus) -> None:
    # when: the nucleus sends CONNECT_ACK without CONNECTION_ACCEPTED and closes at once
    with pytest.raises((AccessDeniedError, AwsCrtError)) as refused:
        connect(ipc_socket=nucleus.socket_path, authtoken="not-the-svcuid", timeout=TIMEOUT_S)
    # then: which error wins is a race between the SDK's close and the server's EOF
    if isinstance(refused.value, AwsCrtError):
        assert refused.value.name == "AWS_IO_SOCKET_CLOSED"
    assert nucleus.rejected_connects == 1


def test_wrong_svcuid_is_access_denied_when_the_server_waits() -> None:
    with FakeNucleus(COMPONENT, SVCUID, close_on_reject=False) as nucleus:
        # when
        with pytest.raises(AccessDeniedError) as refused:
            connect(ipc_socket=nucleus.socket_path, authtoken="not-the-svcuid", timeout=TIMEOUT_S)
        # then
        assert refused.value.args == (
            "aws#AccessDenied",
            "Connection access denied to event stream RPC server",
        )
        assert nucleus.protocol_errors == [], "the client closed without sending anything else"


def test_kill_fires_on_disconnect_and_later_calls_raise(nucleus: FakeNucleus) -> None:
    with ipc_client(nucleus) as c:
        # given
        closed = threading.Event()
        c.ipc.subscribe_to_topic_async(
            topic="lfv/local/requests", on_stream_event=c.events.put, on_stream_closed=closed.set
        )[0].result(timeout=TIMEOUT_S)
        # when
        nucleus.kill()
        # then
        assert c.lifecycle.disconnected.wait(TIMEOUT_S), "LifecycleHandler.on_disconnect fires"
        assert getattr(c.lifecycle.reason, "name", None) == "AWS_IO_SOCKET_CLOSED"
        assert closed.wait(TIMEOUT_S), "open streams get on_stream_closed"
        with pytest.raises(ConnectionClosedError):
            c.ipc.update_state_async(state="ERRORED").result(timeout=TIMEOUT_S)


def test_unknown_operation_fails_the_call_with_stream_closed(
    nucleus: FakeNucleus, client: Client
) -> None:
    # when: the Java server's reply has no service-model-type, so the SDK drops it
    with pytest.raises(StreamClosedError):
        client.ipc.list_components_async().result(timeout=TIMEOUT_S)
    # then
    assert nucleus.unsupported_operations == ["aws.greengrass#ListComponents"]
    client.ipc.update_state_async(state="RUNNING").result(timeout=TIMEOUT_S)  # still connected


@contextmanager
def raw_socket(nucleus: FakeNucleus) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)  # a missing reply fails the test instead of hanging it
    with sock:
        sock.connect(nucleus.socket_path)
        yield sock


def read_rpc(sock: socket.socket) -> RpcFrame:
    message = read_message(sock)
    assert message is not None, "the nucleus closed the connection"
    return to_rpc_frame(message)


def connect_frame(token: str, version: str = "0.1.0") -> bytes:
    return encode_rpc(
        MessageType.CONNECT,
        headers=[Header.string(":version", version)],
        payload=json.dumps({"authToken": token}).encode(),
    )


def test_wire_handshake_ping_request_and_corrupt_frame(nucleus: FakeNucleus) -> None:
    with raw_socket(nucleus) as sock:
        # CONNECT is answered on stream 0 with CONNECTION_ACCEPTED
        sock.sendall(connect_frame(SVCUID))
        ack = read_rpc(sock)
        assert (ack.message_type, ack.flags, ack.stream_id) == (
            MessageType.CONNECT_ACK,
            MessageFlag.CONNECTION_ACCEPTED,
            0,
        )
        # PING echoes application headers and payload, not ':' ones
        sock.sendall(
            encode_rpc(
                MessageType.PING,
                headers=[Header.string("x-echo", "1"), Header.string(":private", "no")],
                payload=b"ping",
            )
        )
        pong = read_rpc(sock)
        assert (pong.message_type, pong.headers, pong.payload) == (
            MessageType.PING_RESPONSE,
            (Header.string("x-echo", "1"),),
            b"ping",
        )
        # a unary request on stream 1 gets a JSON response that terminates the stream
        sock.sendall(
            encode_rpc(
                MessageType.APPLICATION_MESSAGE,
                stream_id=1,
                headers=[
                    Header.string("operation", "aws.greengrass#GetConfiguration"),
                    Header.string(":content-type", "application/json"),
                    Header.string("service-model-type", "aws.greengrass#GetConfigurationRequest"),
                ],
                payload=b'{"keyPath": ["InferenceInterval"]}',
            )
        )
        response = read_rpc(sock)
        assert (response.stream_id, response.flags) == (1, MessageFlag.TERMINATE_STREAM)
        assert response.string_header("service-model-type") == (
            "aws.greengrass#GetConfigurationResponse"
        )
        assert json.loads(response.payload)["value"] == {"InferenceInterval": "5"}
        # a corrupt frame drops the connection
        corrupt = bytearray(encode_rpc(MessageType.PING))
        corrupt[-1] ^= 0x01
        sock.sendall(bytes(corrupt))
        assert read_message(sock) is None, "the nucleus closed the connection"
    assert "message CRC mismatch" in nucleus.protocol_errors[-1]


def test_wire_protocol_violations(nucleus: FakeNucleus) -> None:
    with raw_socket(nucleus) as sock:
        # anything before CONNECT is a protocol error
        sock.sendall(encode_rpc(MessageType.PING))
        assert read_rpc(sock).message_type is MessageType.PROTOCOL_ERROR
        assert read_message(sock) is None
    with raw_socket(nucleus) as sock:
        # a CONNECT for another protocol version is refused
        sock.sendall(connect_frame(SVCUID, version="0.2.0"))
        refused = read_rpc(sock)
        assert (refused.message_type, refused.flags) == (MessageType.CONNECT_ACK, MessageFlag.NONE)
        assert read_message(sock) is None
    assert nucleus.rejected_connects == 1
    assert nucleus.protocol_errors == ["connection 1: PING before CONNECT"]


COMPONENT_SCRIPT = textwrap.dedent(
    """
    import os
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from awsiot.greengrasscoreipc.model import QOS

    ipc = GreengrassCoreIPCClientV2()  # reads the socket path and SVCUID from the environment
    config = ipc.get_configuration_async(key_path=["PublishResultsOnTopic"]).result(timeout=5)
    topic = config.value["PublishResultsOnTopic"]
    thing = os.environ["AWS_IOT_THING_NAME"].encode()
    ipc.publish_to_iot_core_async(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=thing).result(
        timeout=5
    )
    ipc.update_state_async(state="RUNNING").result(timeout=5)
    ipc.close()
    """
)


def test_component_subprocess_connects_with_the_nucleus_environment(nucleus: FakeNucleus) -> None:
    # when
    done = subprocess.run(
        [sys.executable, "-c", COMPONENT_SCRIPT],
        env={**os.environ, **nucleus.environ()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then
    assert done.returncode == 0, done.stderr
    record = nucleus.wait_for_iot_core_publish("lfv/fake-thing/verdicts", TIMEOUT_S)
    assert record.payload == b"fake-thing", "AWS_IOT_THING_NAME reached the component"
    nucleus.wait_for_state("RUNNING", TIMEOUT_S)


# ---------------------------------------------------------------------- building blocks

EVERY_HEADER_TYPE = (
    Header.bool_("true", True),
    Header.bool_("false", False),
    Header.byte("byte", -128),
    Header.int16("int16", -32768),
    Header.int32("int32", 2**31 - 1),
    Header.int64("int64", -(2**63)),
    Header.byte_buf("buf", b"\x00\xff" * 10),
    Header.string("string", "grüße"),
    Header.timestamp("timestamp", 1_700_000_000_123),
    Header.uuid("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
)


def test_frame_round_trips_every_header_type() -> None:
    # given
    message = Message(EVERY_HEADER_TYPE, b'{"x": 1}')
    # when
    frame = encode_message(message)
    # then
    assert {h.type for h in EVERY_HEADER_TYPE} == set(HeaderType), "all ten types covered"
    assert decode_message(frame) == message
    assert int.from_bytes(frame[:4], "big") == len(frame), "total_length covers the whole frame"
    assert int.from_bytes(frame[8:12], "big") == zlib.crc32(frame[:8]), "prelude CRC"
    assert int.from_bytes(frame[-4:], "big") == zlib.crc32(frame[:-4]), "message CRC"


@pytest.mark.parametrize(
    ("offset", "error"),
    [(2, ChecksumError), (9, ChecksumError), (20, ChecksumError), (-1, ChecksumError)],
    ids=["total-length", "prelude-crc", "header-byte", "message-crc"],
)
def test_frame_corruption_is_detected(offset: int, error: type[Exception]) -> None:
    # given
    frame = bytearray(encode_message(Message(EVERY_HEADER_TYPE, b"payload")))
    # when
    frame[offset] ^= 0x01
    # then
    with pytest.raises(error):
        decode_message(bytes(frame))


def test_frame_length_and_value_limits() -> None:
    frame = encode_message(Message((Header.string("a", "b"),), b""))
    with pytest.raises(FrameError, match="prelude says"):
        decode_message(frame[:-1])
    with pytest.raises(FrameError, match="does not fit INT16"):
        encode_message(Message((Header.int16("n", 40000),)))
    with pytest.raises(FrameError, match="name must be"):
        encode_message(Message((Header.string("n" * 256, ""),)))
    with pytest.raises(FrameError, match="limit 32767"):
        encode_message(Message((Header.string("n", "x" * 32768),)))
    with pytest.raises(FrameError, match="limit"):
        encode_message(Message((), b"x" * MAX_MESSAGE_SIZE))


def test_read_message_from_a_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        frame = encode_message(Message((Header.int32(":stream-id", 7),), b"body"))
        left.sendall(frame + frame[:5])
        left.shutdown(socket.SHUT_WR)
        assert read_message(right) == decode_message(frame)
        with pytest.raises(FrameError, match="connection closed"):
            read_message(right)


@pytest.mark.parametrize(
    ("pattern", "resource", "policy", "allowed"),
    [
        ("lfv/+/verdicts", "lfv/t1/verdicts", LookupPolicy.MQTT_STYLE, True),
        ("lfv/+/verdicts", "lfv/a/b/verdicts", LookupPolicy.MQTT_STYLE, False),
        ("lfv/#", "lfv", LookupPolicy.MQTT_STYLE, True),
        ("lfv/#", "lfv/a/b", LookupPolicy.MQTT_STYLE, True),
        ("lfv/#", "lfvx", LookupPolicy.MQTT_STYLE, False),
        ("lfv/*", "lfv/a/b", LookupPolicy.MQTT_STYLE, True),
        ("a+b", "axb", LookupPolicy.MQTT_STYLE, False),
        ("a+b", "a+b", LookupPolicy.MQTT_STYLE, True),
        ("lfv/#", "lfv/a", LookupPolicy.STANDARD, False),
        ("lfv/#", "lfv/#", LookupPolicy.STANDARD, True),
        ("lfv/+", "lfv/a", LookupPolicy.STANDARD, False),
        ("lfv/*/out", "lfv/a/b/out", LookupPolicy.STANDARD, True),
        ("${*}", "*", LookupPolicy.STANDARD, True),
        ("${*}", "x", LookupPolicy.STANDARD, False),
        ("*", "any/thing", LookupPolicy.STANDARD, True),
    ],
)
def test_resource_patterns(
    pattern: str, resource: str, policy: LookupPolicy, allowed: bool
) -> None:
    assert resource_matches(pattern, resource, policy) is allowed


def test_policy_check_operations_and_invalid_resources() -> None:
    config = {
        "AccessControl": {  # keys are case-insensitive on the device
            "aws.greengrass.ipc.pubsub": {
                "a": {"operations": ["aws.greengrass#SubscribeToTopic"], "resources": ["in/*"]},
                "b": {"operations": ["*"], "resources": ["what?"]},
            }
        }
    }
    service = "aws.greengrass.ipc.pubsub"
    assert check(config, service, "aws.greengrass#SubscribeToTopic", "in/x", LookupPolicy.STANDARD)
    assert not check(
        config, service, "aws.greengrass#PublishToTopic", "in/x", LookupPolicy.STANDARD
    )
    assert not check(
        config, service, "aws.greengrass#PublishToTopic", "what?", LookupPolicy.STANDARD
    )


@pytest.mark.parametrize(
    ("topic_filter", "topic", "iot_core", "local"),
    [
        ("a/#", "a", True, False),
        ("a/#", "a/b/c", True, True),
        ("a/+", "a/b", True, True),
        ("a/+", "a/b/c", False, False),
        ("#", "$aws/things/x", False, True),
        ("a/b", "a/b", True, True),
    ],
)
def test_topic_filters(topic_filter: str, topic: str, iot_core: bool, local: bool) -> None:
    assert iot_core_filter_matches(topic_filter, topic) is iot_core, "MQTT 3.1.1"
    assert local_filter_matches(topic_filter, topic) is local, "nucleus SubscriptionTrie"


def test_config_store_reset_defaults_merge() -> None:
    # given
    store = ConfigStore({"Camera": {"Fps": "10"}, "Tags": ["a", "b"]})
    store.update({"camera": {"fps": "30", "Extra": "1"}, "Tags": ["c"]})
    # when
    changed = store.update({"New": {}}, reset=["/Camera"])
    # then
    assert store.snapshot() == {"Camera": {"Fps": "10"}, "Tags": ["c"], "New": {}}
    assert set(changed) == {("Camera", "Fps"), ("Camera", "Extra")}
    assert store.update({"Tags": ["c"]}) == [], "an unchanged list is no change"
    with pytest.raises(ValueError, match="list element"):
        store.update({}, reset=["/Tags/0"])
