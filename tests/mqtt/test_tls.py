"""TLS against a real mosquitto: a test CA, mutual TLS, and verification on by default."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest

from lfv_edge.errors import TransportError
from lfv_edge.service.config import parse_config
from lfv_edge.transports.mqtt import MqttTransport
from tests.mqtt.conftest import Peer, Pki, Running, TlsBroker, body_request, jpeg, red_rgb


def test_tls_with_the_test_ca_round_trip(
    tls_broker: TlsBroker,
    pki: Pki,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
) -> None:
    # given a broker whose certificate comes from the test CA, and a service trusting that CA
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    running = serve(url, topic, caFile=str(pki.ca))
    peer = peers(tls_broker.tls_port, tls={"ca": pki.ca}).connect(running.results)
    # when a request arrives over TLS
    peer.publish(running.requests, body_request("tls-1", jpeg(red_rgb(64, 64, 0.9))))
    # then the verdict comes back
    (reply,) = peer.wait_for(1, running.results)
    assert reply.json()["RequestId"] == "tls-1", "the request was served over TLS"


def test_mutual_tls_refuses_a_client_without_certificate_and_serves_with_one(
    tls_broker: TlsBroker,
    pki: Pki,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
) -> None:
    # given a listener that requires a client certificate from the test CA
    port = tls_broker.mtls_port
    # when a client without a certificate tries to connect
    stranger = peers(port, tls={"ca": pki.ca})
    stranger.client.connect_async("127.0.0.1", port)
    stranger.client.loop_start()
    failures = stranger.wait_disconnected()
    # then the broker refuses it
    assert failures, "the connection without a client certificate failed"
    assert not stranger.client.is_connected(), "the client without a certificate is not connected"
    # when the service connects with its certificate and key
    running = serve(f"mqtts://127.0.0.1:{port}", topic, caFile=str(pki.ca),
                    certFile=str(pki.client_cert), keyFile=str(pki.client_key))  # fmt: skip
    peer = peers(port, tls={"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key})
    peer.connect(running.results)
    peer.publish(running.requests, body_request("mtls-1", jpeg(red_rgb(64, 64, 0.1))))
    # then it serves
    (reply,) = peer.wait_for(1, running.results)
    assert reply.json()["RequestId"] == "mtls-1", "the service with a certificate serves"


@pytest.mark.parametrize("ca", ["test-ca", "system"], ids=["unknown-ca", "system-cas"])
def test_verification_is_on_by_default(
    tls_broker: TlsBroker, pki: Pki, topic: str, ca: str
) -> None:
    # given a broker certificate the service cannot trust: from a CA other than the one it was
    # given, or (no caFile) from a CA the system store does not hold
    port = tls_broker.rogue_port if ca == "test-ca" else tls_broker.tls_port
    mqtt: dict[str, object] = {"broker": f"mqtts://127.0.0.1:{port}",
                               "requestsTopic": f"{topic}/requests", "resultsTopic": f"{topic}/results"}  # fmt: skip
    if ca == "test-ca":
        mqtt["caFile"] = str(pki.ca)
    config = parse_config({"model": {"path": "unused"}, "mqtt": mqtt}, {})
    assert config.mqtt is not None
    transport = MqttTransport.from_config(config.mqtt)
    gc.disable()  # a leaked socket must not be hidden by the collector closing it
    try:
        before = _open_sockets()
        # when it starts
        with pytest.raises(TransportError, match="not trusted") as refused:
            transport.start(lambda message: None, lambda reason: None)
        after = _open_sockets()
    finally:
        gc.enable()
    # then it refuses the broker instead of talking to it
    assert "certificate" in str(refused.value).split("not trusted:")[1], (
        f"OpenSSL's reason is given: {refused.value}"
    )
    assert not transport.connected, "no connection was made"
    assert after == before, "the socket of the failed handshake is closed, not left to the GC"


def _open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):  # noqa: PTH208 - names, not Paths
        try:
            count += "socket:" in os.readlink(f"/proc/self/fd/{name}")  # noqa: PTH115
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
    return count
