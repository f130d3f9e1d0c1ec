"""MqttTransport's bookkeeping against a fake paho client: acks, redeliveries, races, fatal codes.

The broker tests show the behaviour end to end; these pin the orderings a real broker cannot
be made to produce on demand (a PUBACK that beats publish()'s return, a redelivery while the
request is still in the pipeline, a session the broker forgot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lfv_edge.service.config import MqttConfig
from lfv_edge.service.ports import IncomingMessage
from lfv_edge.transports.mqtt import MqttTransport


@dataclass
class Info:
    mid: int
    rc: int = 0


@dataclass
class FakeClient:
    """Records what the transport asks of paho; tests play the network thread's callbacks."""

    published: list[tuple[str, bytes, int, bool, Any]] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    next_mid: int = 100
    puback_inside_publish: bool = False  # the race: PUBACK handled before publish() returns
    on_connect: Any = None
    on_disconnect: Any = None
    on_subscribe: Any = None
    on_message: Any = None
    on_publish: Any = None
    on_log: Any = None

    def will_set(self, *args: object, **kwargs: object) -> None:
        pass

    def connect(self, *args: object, **kwargs: object) -> None:
        pass

    def loop_start(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, properties: Any) -> Info:
        self.next_mid += 1
        self.published.append((topic, payload, qos, retain, properties))
        if self.puback_inside_publish:
            self.on_publish(self, None, self.next_mid, ReasonCode(PacketTypes.PUBACK), None)
        return Info(self.next_mid)

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))

    def subscribe(self, topic: str, options: object = None) -> tuple[int, int]:
        self.subscriptions.append(topic)
        self.next_mid += 1
        return 0, self.next_mid

    def unsubscribe(self, topic: str) -> None:
        pass


CONFIG = MqttConfig(broker="mqtt://b", requests_topic="req", results_topic="res", status_topic=None)


@dataclass
class Harness:
    client: FakeClient
    transport: MqttTransport
    received: list[IncomingMessage] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def connect(self, *, session_present: bool) -> None:
        self.client.on_connect(self.client, None, paho.ConnectFlags(session_present),
                               ReasonCode(PacketTypes.CONNACK), None)  # fmt: skip
        self.client.on_subscribe(self.client, None, self.client.next_mid,
                                 [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)  # fmt: skip

    def disconnect(self, code: int = 0x80) -> None:
        self.client.on_disconnect(self.client, None, paho.DisconnectFlags(False),
                                  ReasonCode(PacketTypes.DISCONNECT, identifier=code), None)  # fmt: skip

    def deliver(self, mid: int, *, dup: bool = False, response_topic: str | None = None) -> None:
        message = paho.MQTTMessage(mid, b"req")
        message.payload = b'{"RequestId": "x"}'
        message.qos, message.dup = 1, dup
        if response_topic is not None:
            message.properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            message.properties.ResponseTopic = response_topic
        self.client.on_message(self.client, None, message)

    def puback(self, mid: int) -> None:
        self.client.on_publish(self.client, None, mid, ReasonCode(PacketTypes.PUBACK), None)


@pytest.fixture
def harness() -> Harness:
    client = FakeClient()
    transport = MqttTransport(client, CONFIG, client_id="unit")  # type: ignore[arg-type]
    made = Harness(client, transport)
    transport.start(made.received.append, made.fatal.append)
    made.connect(session_present=False)
    return made


def test_every_connect_subscribes(harness: Harness) -> None:
    # given a connected transport
    # when the connection drops and comes back
    harness.disconnect()
    harness.connect(session_present=True)
    # then it subscribed on both connects
    assert harness.client.subscriptions == ["req", "req"], "subscribed in on_connect, each time"


def test_a_request_is_acknowledged_only_once_its_reply_is_acknowledged(harness: Harness) -> None:
    # given a received request whose reply was published and handed back by the service
    harness.deliver(7)
    (message,) = harness.received
    harness.transport.publish(message.reply, b"{}")
    assert message.ack is not None
    message.ack()
    # then no PUBACK goes out before the broker acknowledged the reply
    assert harness.client.acks == [], "the request waits for its reply's PUBACK"
    # when the reply's PUBACK arrives
    harness.puback(harness.client.next_mid)
    # then the request is acknowledged
    assert harness.client.acks == [(7, 1)], "acknowledged after the reply is safe"


def test_a_puback_that_beats_publish_returning_still_counts(harness: Harness) -> None:
    # given paho handling the reply's PUBACK before publish() returns to us
    harness.client.puback_inside_publish = True
    harness.deliver(8)
    (message,) = harness.received
    # when the service publishes and acks
    harness.transport.publish(message.reply, b"{}")
    assert message.ack is not None
    message.ack()
    # then the request is acknowledged anyway
    assert harness.client.acks == [(8, 1)], "the early PUBACK was matched after publish returned"


def test_a_redelivery_of_a_request_in_the_pipeline_is_not_processed_twice(harness: Harness) -> None:
    # given a request in the pipeline when the connection drops and the session resumes
    harness.deliver(9)
    harness.disconnect()
    harness.connect(session_present=True)
    # when the broker redelivers it
    harness.deliver(9, dup=True)
    # then the service does not see it again, and its eventual reply acknowledges it on the new connection
    assert len(harness.received) == 1, "the redelivery was recognised"
    (message,) = harness.received
    harness.transport.publish(message.reply, b"{}")
    assert message.ack is not None
    message.ack()
    harness.puback(harness.client.next_mid)
    assert harness.client.acks == [(9, 1)], "acknowledged once, on the resumed session"


def test_requests_of_a_session_the_broker_forgot_are_never_acknowledged(harness: Harness) -> None:
    # given a request in the pipeline when the broker restarts without our session
    harness.deliver(10)
    harness.disconnect()
    harness.connect(session_present=False)
    # when a new message happens to get the same packet id
    harness.deliver(10)
    # then it is a new request, and the old reply does not acknowledge it
    assert len(harness.received) == 2, "the new message is processed"
    old = harness.received[0]
    harness.transport.publish(old.reply, b"{}")
    assert old.ack is not None
    old.ack()
    harness.puback(harness.client.next_mid)
    assert harness.client.acks == [], "a packet id of a forgotten session is never acknowledged"


def test_replies_while_disconnected_are_spooled_then_published_and_acknowledged(
    harness: Harness,
) -> None:
    # given a request whose reply is produced while the broker is unreachable
    harness.deliver(11)
    harness.disconnect()
    (message,) = harness.received
    harness.transport.publish(message.reply, b'{"r":1}')
    assert message.ack is not None
    message.ack()
    assert len(harness.transport.spool) == 1, "the reply waits in the spool"
    assert harness.client.published == [], "nothing was handed to paho while disconnected"
    # when the connection (and the session) come back
    harness.connect(session_present=True)
    # then the spooled reply goes out; its PUBACK empties the spool and acknowledges the request
    assert [p[1] for p in harness.client.published] == [b'{"r":1}'], (
        "the spooled reply was published"
    )
    harness.puback(harness.client.next_mid)
    assert len(harness.transport.spool) == 0, "the acknowledged reply left the spool"
    assert harness.client.acks == [(11, 1)], "the request was acknowledged on the resumed session"


def test_an_invalid_response_topic_falls_back_to_the_results_topic(harness: Harness) -> None:
    # given requests with a valid and a wildcard response topic
    harness.deliver(12, response_topic="clients/7/replies")
    harness.deliver(13, response_topic="clients/+/replies")
    # then the first is answered there, the second on the results topic
    assert [m.reply.topic for m in harness.received] == ["clients/7/replies", "res"], "routes"


@pytest.mark.parametrize(
    ("code", "why"), [(0x86, "refused"), (0x87, "refused")], ids=["bad-password", "not-authorized"]
)
def test_permanent_connack_refusals_are_fatal(harness: Harness, code: int, why: str) -> None:
    # when the broker refuses the connection for a reason no retry fixes
    harness.client.on_connect(harness.client, None, paho.ConnectFlags(False),
                              ReasonCode(PacketTypes.CONNACK, identifier=code), None)  # fmt: skip
    # then the service is told to stop
    assert len(harness.fatal) == 1, "one fatal report"
    assert why in harness.fatal[0], f"the reason says {why}: {harness.fatal}"


def test_a_busy_broker_is_retried_not_fatal(harness: Harness) -> None:
    # when the broker says it is busy (0x89)
    harness.client.on_connect(harness.client, None, paho.ConnectFlags(False),
                              ReasonCode(PacketTypes.CONNACK, identifier=0x89), None)  # fmt: skip
    # then nothing is fatal: paho retries
    assert harness.fatal == [], "a transient refusal is retried"


def test_losing_the_session_to_another_client_is_fatal(harness: Harness) -> None:
    # when another client with our id takes over the session
    harness.disconnect(0x8E)
    # then the service stops, naming the client id
    assert harness.fatal, "fatal"
    assert "'unit'" in harness.fatal[0], f"the message names the client id: {harness.fatal[0]}"
