"""`MqttTransport.subscribe_topic` (capture triggers) against a real mosquitto: messages reach
their own handler, not the request pipeline; the subscription comes back after the broker
restarts; `unsubscribe_topic` ends it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.mqtt.conftest import WAIT_S, Broker, Peer, Running, body_request, png, red_rgb


class _Inbox:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._changed = threading.Condition()

    def __call__(self, payload: bytes) -> None:  # paho's thread: record and return
        with self._changed:
            self.payloads.append(payload)
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.payloads) >= count, WAIT_S), (
                f"{len(self.payloads)} of {count} trigger messages"
            )


def test_other_topics_reach_their_handler_and_survive_a_broker_restart(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a serving transport that also subscribed a trigger topic
    running = serve(broker.url, topic)
    inbox = _Inbox()
    running.transport.subscribe_topic(f"{topic}/trigger", inbox)
    plc = peers(broker.port).connect(running.results)
    # when the PLC triggers, and a request arrives as usual
    plc.publish(f"{topic}/trigger", b'{"RequestId": "t1"}')
    inbox.wait_for(1)
    plc.publish(running.requests, body_request("r1", png(red_rgb(64, 64, 0.2))))
    # then the trigger went to its handler and the request to the pipeline, each once
    assert inbox.payloads == [b'{"RequestId": "t1"}'], inbox.payloads
    replies = plc.wait_for(1, running.results)
    assert [r.json()["RequestId"] for r in replies] == ["r1"], "the trigger is not a request"
    # when the broker restarts, the trigger subscription is made again on the reconnect
    broker.restart()
    assert running.transport.wait_ready(WAIT_S), "reconnected and resubscribed"
    plc.wait_connected()
    plc.publish(f"{topic}/trigger", b'{"RequestId": "t2"}')
    inbox.wait_for(2)
    assert inbox.payloads[-1] == b'{"RequestId": "t2"}', inbox.payloads
    # and after unsubscribe_topic nothing more arrives (a request round trip proves the wait)
    running.transport.unsubscribe_topic(f"{topic}/trigger")
    plc.publish(f"{topic}/trigger", b'{"RequestId": "t3"}')
    plc.publish(running.requests, body_request("r2", png(red_rgb(64, 64, 0.2))))
    # (r1 may come twice: a restart before its PUBACK redelivers it, at-least-once)
    plc.wait_for(1, running.results, where=lambda m: m.json()["RequestId"] == "r2")
    assert len(inbox.payloads) == 2, inbox.payloads
    ids = {m.json()["RequestId"] for m in plc.on(running.results)}
    assert ids == {"r1", "r2"}, f"t3 was not handled as a request either: {ids}"
