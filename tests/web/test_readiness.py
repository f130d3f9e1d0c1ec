"""/healthz and /readyz: ready only while the model is loaded and the transport connected.

In-process: a model reload bracket (what the Greengrass component opens around a load), a
transport that goes down, a service that stops. As processes: `lfv-edge serve --http` while
its real mosquitto is stopped and started again. (The component's own reload, through the
fake nucleus: tests/greengrass/test_component_web.py.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from lfv_edge.demo.embedded import embedded_package
from tests.mqtt.conftest import Broker, free_port
from tests.web.conftest import Live, Process, http_get, wait_http, wait_until
from tests.web.test_metrics import scrape, value


def test_readyz_says_not_ready_during_a_model_reload_and_a_transport_outage(live: Live) -> None:
    # given a serving service
    assert http_get(live.port, "/healthz").status == 200
    assert http_get(live.port, "/readyz").body == b"ready\n"
    # when a new model is loading
    with live.service.model_reload():
        answer = http_get(live.port, "/readyz")
        # then it is not ready, and says why (while /healthz stays 200: the process serves)
        assert answer.status == 503, answer
        assert b"a new model is loading" in answer.body, answer.body
        assert http_get(live.port, "/healthz").status == 200
        assert value(scrape(live.port), "lfv_edge_model_reloading") == 1
    assert http_get(live.port, "/readyz").status == 200, "ready again once loaded"
    # when the transport loses its connection
    live.transport.up = False
    answer = http_get(live.port, "/readyz")
    assert answer.status == 503, answer
    assert b"transport memory is not connected" in answer.body, answer
    assert value(scrape(live.port), "lfv_edge_transport_connected", transport="memory") == 0
    live.transport.up = True
    assert http_get(live.port, "/readyz").status == 200
    # when the service stops (SIGTERM's drain), orchestrators must stop sending
    live.service.stop(10.0)
    answer = http_get(live.port, "/readyz")
    assert answer.status == 503, answer
    assert b"stopping" in answer.body, answer


def test_readyz_flips_while_the_broker_is_down(
    launch: Callable[[list[str]], Process], tmp_path: Path
) -> None:
    # given serve with the web view on its own mosquitto
    broker = Broker(tmp_path / "mosquitto", free_port())
    broker.folder.mkdir()
    broker.start()
    topic = f"lfvtest/ready/{uuid.uuid4().hex[:8]}"
    port = free_port()
    serve = launch([
        "serve", "--model", str(embedded_package()), "--broker", broker.url,
        "--requests-topic", f"{topic}/requests", "--results-topic", f"{topic}/results",
        "--stats-interval", "0", "--http", f"127.0.0.1:{port}",
    ])  # fmt: skip
    try:
        wait_http(port, serve, "/readyz")
        # when the broker goes away
        broker.stop()
        wait_until(lambda: http_get(port, "/readyz").status == 503, "/readyz 503 without broker")
        answer = http_get(port, "/readyz")
        assert b"transport mqtt is not connected" in answer.body, answer.body
        assert http_get(port, "/healthz").status == 200, "the process itself is fine"
        assert value(scrape(port), "lfv_edge_transport_connected", transport="mqtt") == 0
        # when it comes back, paho reconnects (backoff 1 s) and the service is ready again
        broker.start()
        wait_until(lambda: http_get(port, "/readyz").status == 200, "/readyz 200 after reconnect")
        assert value(scrape(port), "lfv_edge_transport_connected", transport="mqtt") == 1
    finally:
        assert serve.terminate() == 0, serve.text()
        broker.stop()
