"""Delivery guarantees against a real mosquitto: persistent sessions, broker restarts, shared groups."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from tests.mqtt.conftest import (
    WAIT_S,
    Broker,
    ObservedInspector,
    Peer,
    Running,
    body_request,
    jpeg,
    red_rgb,
    request_ids,
)


def test_requests_published_while_the_service_is_down_are_answered_after_it_restarts(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service that connected once with a stable client id, then stopped
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    first = serve(broker.url, topic, clientId=client_id)
    assert first.stop(), "the first service stopped cleanly"
    peer = peers(broker.port).connect(first.results)
    # when requests are published while no service runs
    image = jpeg(red_rgb(64, 64, 0.9))
    for i in range(5):
        peer.publish(first.requests, body_request(f"down-{i}", image))
    # then a service with the same client id answers all of them after it starts
    serve(broker.url, topic, clientId=client_id)
    replies = peer.wait_for(5, first.results)
    assert sorted(request_ids(replies)) == [f"down-{i}" for i in range(5)], (
        "the persistent session kept every request"
    )


def test_a_broker_restart_mid_stream_loses_no_request_or_reply(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    inspector: Inspector,
    tmp_path: Path,
) -> None:
    # given a service with a disk spool whose model is held busy with 10 requests received
    observed = ObservedInspector(inspector)
    running = serve(
        broker.url, topic, inspector_=observed, queue_size=16, spoolDir=str(tmp_path / "spool")
    )
    camera = peers(broker.port, persistent=True).connect()
    dashboard = peers(broker.port, persistent=True).connect(running.results)
    image = jpeg(red_rgb(64, 64, 0.9))
    for i in range(10):
        camera.publish(running.requests, body_request(f"before-{i}", image))
    observed.wait_prepared(3)
    # when the broker restarts (persistence on, same port) while replies are produced
    broker.stop()
    assert running.transport.wait_disconnected(WAIT_S), "the service noticed the broker is gone"
    observed.gated.gate.set()  # replies now come out while the broker is down: spooled
    broker.start()
    camera.wait_connected()
    for i in range(10):
        camera.publish(running.requests, body_request(f"after-{i}", image))
    # then every request is answered
    expected = {f"before-{i}" for i in range(10)} | {f"after-{i}" for i in range(10)}
    replies = dashboard.wait_for(
        20, running.results, where=lambda m: m.json()["RequestId"] in expected
    )
    counts = Counter(request_ids(replies))
    assert set(counts) == expected, f"missing replies: {sorted(expected - set(counts))}"
    assert all("DetectAnomalyResult" in r.json() for r in replies), "every reply is a verdict"
    # The broker redelivered the 10 unacknowledged requests after the restart; they were
    # recognised by packet id (their replies were already spooled), so none ran twice.
    assert max(counts.values()) == 1, f"no request was processed twice: {counts}"
    assert running.stop(), "the service drained and stopped"
    assert len(running.transport.spool) == 0, "every spooled reply was published and removed"


def test_two_instances_in_a_shared_group_answer_each_request_exactly_once(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    small_package: Path,
) -> None:
    # given two services (each with its own model) in one shared group
    second_inspector = Inspector.load(read_model_package(small_package), device="cpu")
    one = serve(broker.url, topic, sharedGroup="inspectors")
    two = serve(broker.url, topic, sharedGroup="inspectors", inspector_=second_inspector)
    peer = peers(broker.port).connect(one.results)
    # when 20 requests are published
    image = jpeg(red_rgb(64, 64, 0.1))
    for i in range(20):
        peer.publish(one.requests, body_request(f"s{i}", image))
    # then each is answered exactly once, and both instances took part
    replies = peer.wait_for(20, one.results)
    assert one.stop(), "instance one stopped"
    assert two.stop(), "instance two stopped"
    counts = Counter(request_ids(replies))
    assert counts == Counter({f"s{i}": 1 for i in range(20)}), f"exactly once each: {counts}"
    answered = (one.service.stats.answered, two.service.stats.answered)
    assert sum(answered) == 20, f"the two instances answered 20 in total: {answered}"
    assert min(answered) > 0, f"the broker split the stream between both: {answered}"


def test_status_is_retained_online_then_offline_on_a_clean_stop(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service with a status topic
    status = f"{topic}/status"
    running = serve(broker.url, topic, statusTopic=status)
    # when a dashboard subscribes later
    late = peers(broker.port).connect(status)
    # then it sees the retained online status with the model identity
    (online,) = late.wait_for(1, status)
    body = online.json()
    assert online.retain, "the status is retained"
    assert body["Status"] == "online", f"online while serving: {body}"
    assert body["Model"] == {"Name": "t"}, "the status names the model"
    assert "Timestamp" in body, "the status is timestamped"
    # when the service stops cleanly
    assert running.stop(), "the service stopped"
    # then the retained status says offline (stopped), not the will
    offline = late.wait_for(1, status, where=lambda m: m.json()["Status"] == "offline")
    assert offline[0].json()["Reason"] == "stopped", "a clean stop says so"
    again = peers(broker.port).connect(status)
    (retained,) = again.wait_for(1, status)
    assert retained.json()["Status"] == "offline", "offline is what a newcomer sees"
