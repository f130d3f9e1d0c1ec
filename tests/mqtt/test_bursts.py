"""Bursts at the default configuration: QoS 1 requests wait and get verdicts, QoS 0 ones get Busy.

Also what Debian's mosquitto 2.0 does with an MQTT 5 Receive Maximum, measured with a raw
paho client: the reason the service bounds what it holds by bytes instead of trusting it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.service.config import parse_config
from lfv_edge.service.wiring import build_service
from lfv_edge.transports.mqtt import MqttTransport
from tests.mqtt.conftest import (
    WAIT_S,
    Broker,
    ObservedInspector,
    Peer,
    body_request,
    jpeg,
    red_rgb,
)
from tests.mqtt.test_serve_process import ServeProcess


def test_a_thousand_request_burst_at_defaults_gets_a_thousand_verdicts(
    broker: Broker, topic: str, small_package: Path, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    # given `lfv-edge serve` with nothing but the required settings (queue 8, Receive Maximum 64)
    serve = ServeProcess(
        ["--model", str(small_package), "--broker", broker.url,
         "--requests-topic", f"{topic}/requests", "--results-topic", f"{topic}/results",
         "--status-topic", f"{topic}/status", "--client-id", f"burst-{uuid.uuid4().hex[:8]}"],
        tmp_path / "serve.log",
    )  # fmt: skip
    try:
        peer = peers(broker.port).connect(f"{topic}/results", f"{topic}/status")
        peer.wait_for(1, f"{topic}/status", where=lambda m: m.json()["Status"] == "online")
        image = jpeg(red_rgb(64, 64, 0.9))
        # when a camera fires 1,000 QoS 1 requests as fast as it can
        for i in range(1000):
            peer.publish(f"{topic}/requests", body_request(f"b{i}", image), wait=False)
        replies = peer.wait_for(1000, f"{topic}/results")
    finally:
        serve.stop()
    # then every one is answered with a verdict, late rather than refused
    bodies = [r.json() for r in replies]
    busy = [b["RequestId"] for b in bodies if b.get("Error", {}).get("Code") == "Busy"]
    assert busy == [], f"{len(busy)} Busy replies: {busy[:5]}"
    assert sorted(b["RequestId"] for b in bodies) == sorted(f"b{i}" for i in range(1000))


def test_qos0_requests_beyond_the_queue_are_answered_busy(
    broker: Broker, topic: str, inspector: Inspector, peers: Callable[..., Peer]
) -> None:
    # given the default configuration subscribing at QoS 0, with the model held
    config = parse_config(
        {"model": {"path": "unused"},
         "mqtt": {"broker": broker.url, "requestsTopic": f"{topic}/requests",
                  "resultsTopic": f"{topic}/results", "qos": 0,
                  "clientId": f"q0-{uuid.uuid4().hex[:8]}"}}, {})  # fmt: skip
    assert config.mqtt is not None
    observed = ObservedInspector(inspector)
    transport = MqttTransport.from_config(config.mqtt)
    service = build_service(config, observed, [transport], {})
    service.start()
    try:
        assert transport.wait_ready(WAIT_S)
        peer = peers(broker.port).connect(f"{topic}/results")
        image = jpeg(red_rgb(64, 64, 0.9))
        # when 30 requests arrive while the model is busy
        for i in range(30):
            peer.publish(f"{topic}/requests", body_request(f"z{i}", image), qos=0)
        busy = peer.wait_for(30 - 8 - 3, f"{topic}/results")
        observed.gated.gate.set()
        replies = peer.wait_for(30, f"{topic}/results")
    finally:
        observed.gated.gate.set()
        service.stop(WAIT_S)
    # then beyond the queue (8) and what is in the pipeline, QoS 0 requests are refused:
    # nothing can wait for them (the sender asked for at most once)
    codes = [r.json().get("Error", {}).get("Code") for r in replies]
    assert codes.count("Busy") >= 30 - 8 - 4, codes
    assert all(r.json()["Error"]["Code"] == "Busy" for r in busy[:5])
    assert codes.count(None) >= 8, "the queue's requests got verdicts"


def test_mosquitto_does_not_hold_deliveries_at_the_receive_maximum(
    broker: Broker, topic: str, peers: Callable[..., Peer]
) -> None:
    # given a subscriber announcing Receive Maximum 4 that acknowledges by hand, and 20 QoS 1
    # messages waiting for it in its session
    received: list[paho.MQTTMessage] = []
    changed = threading.Condition()
    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rm-{uuid.uuid4().hex[:8]}",
                             protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)  # fmt: skip

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with changed:
            received.append(message)
            changed.notify_all()

    subscriber.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = 4
    properties.SessionExpiryInterval = 60
    subscriber.connect("127.0.0.1", broker.port, 30, clean_start=True, properties=properties)
    subscriber.subscribe(f"{topic}/rm", qos=1)
    subscriber.loop_start()

    def count_after(quiet_s: float) -> int:
        with changed:
            while changed.wait(quiet_s):
                pass  # until the broker stops sending for `quiet_s`
            return len(received)

    try:
        count_after(0.5)
        publisher = peers(broker.port).connect()
        for i in range(20):
            publisher.publish(f"{topic}/rm", f"m{i}")
        # when nothing is acknowledged, then one message, then three more
        before = count_after(0.5)
        subscriber.ack(received[0].mid, 1)
        after_one = count_after(0.5)
        for message in received[1:4]:
            subscriber.ack(message.mid, 1)
        after_four = count_after(0.5)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    # then it holds the window only until the first acknowledgement (measured on 2.0.11:
    # 4, then 8, then all 20): a client must bound what it holds itself
    assert before == 4, f"{before} delivered before any acknowledgement"
    assert after_one > before + 1, f"one acknowledgement let {after_one - before} more through"
    assert after_four == 20, f"{after_four} after four acknowledgements"
