"""MQTT 5 Receive Maximum: the broker holds the backlog, our memory stays bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable

from lfv_edge.inspection.pipeline import Inspector
from tests.mqtt.conftest import (
    Broker,
    ObservedInspector,
    Peer,
    Running,
    body_request,
    jpeg,
    red_rgb,
    request_ids,
)


def test_the_broker_pushes_at_most_receive_maximum_unanswered_requests(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    inspector: Inspector,
) -> None:
    # given a service that allows 3 unacknowledged requests, with its model held
    observed = ObservedInspector(inspector)
    running = serve(broker.url, topic, inspector_=observed, queue_size=100, receiveMaximum=3)
    peer = peers(broker.port).connect(running.results)
    image = jpeg(red_rgb(64, 64, 0.9))
    # when ten requests are published
    for i in range(10):
        peer.publish(running.requests, body_request(f"f{i}", image))
    assert observed.gated.entered.acquire(timeout=20), "the first request reached the model"
    observed.wait_prepared(3)
    threading.Event().wait(0.5)  # give the broker time to push more, which it must not
    # then only three reached the service, and none was refused
    assert running.service.stats.received == 3, (
        f"received {running.service.stats.received}, receive maximum 3"
    )
    observed.gated.gate.set()
    replies = peer.wait_for(10, running.results)
    assert sorted(request_ids(replies)) == sorted(f"f{i}" for i in range(10)), "all answered once"
    assert all("DetectAnomalyResult" in r.json() for r in replies), (
        "the backlog waited in the broker: no Busy"
    )
