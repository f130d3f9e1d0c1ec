"""`serve` with an `agent` section: the Edge Agent socket in the same process, verdicts on MQTT too."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lfv_edge.agent import edge_agent_pb2 as pb2
from tests.agent.conftest import make_stub, red_image
from tests.mqtt.conftest import Broker, Peer, body_request, jpeg, request_ids
from tests.mqtt.test_serve_process import ServeProcess, _online, launch  # noqa: F401 - fixture


def _wait_running(stub: Any, model: str, timeout_s: float = 60.0) -> None:
    """Poll DescribeModel as AWS's sample client does (the start is asynchronous)."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        status = stub.DescribeModel(
            pb2.DescribeModelRequest(model_component=model)
        ).model_description.status
        if status == pb2.RUNNING:
            return
        assert status != pb2.FAILED, "the model failed to start"
        pause.wait(0.05)
    raise AssertionError(f"{model} not RUNNING within {timeout_s} s")


def test_grpc_verdicts_are_published_beside_mqtt_replies(
    broker: Broker, topic: str, small_package: Path, peers: Callable[..., Peer],
    launch: Callable[[list[str]], ServeProcess], tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    # given serve with an agent section publishing its verdicts, on a short socket path
    socket = Path("/tmp") / f"lfv-{uuid.uuid4().hex[:8]}.sock"
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"agent": {
        "socket": f"unix://{socket}", "models": {"com.example.Parts": str(small_package)},
        "startModels": ["com.example.Parts"], "publishResults": True,
    }}))  # fmt: skip
    serve = launch([
        "--config", str(config), "--model", str(small_package), "--broker", broker.url,
        "--client-id", f"agent-{uuid.uuid4().hex[:8]}", "--requests-topic", f"{topic}/requests",
        "--results-topic", f"{topic}/results", "--status-topic", f"{topic}/status", "--stats-interval", "0",
    ])  # fmt: skip
    peer = peers(broker.port).connect(f"{topic}/results", f"{topic}/status")
    _online(peer, f"{topic}/status")
    # when a request comes over MQTT and another over the agent's gRPC socket
    peer.publish(f"{topic}/requests", body_request("mqtt-1", jpeg(red_image(80, 80, 0.9))))
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = make_stub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)
        _wait_running(stub, "com.example.Parts")
        image = red_image(80, 80, 0.9)
        response = stub.DetectAnomalies(pb2.DetectAnomaliesRequest(
            model_component="com.example.Parts",
            bitmap=pb2.Bitmap(width=80, height=80, byte_data=np.ascontiguousarray(image).tobytes()),
        ))  # fmt: skip
    # then both verdicts reach the results topic, the gRPC one marked as the agent's
    assert response.detect_anomaly_result.is_anomalous, "the gRPC caller gets its verdict"
    results = peer.wait_for(2, f"{topic}/results")
    assert "mqtt-1" in request_ids(results), "the MQTT request is answered"
    agent_results = [m.json() for m in results if m.json().get("Source") == "EdgeAgent"]
    assert len(agent_results) == 1, f"one published gRPC verdict: {[m.json() for m in results]}"
    assert agent_results[0]["ModelComponent"] == "com.example.Parts", "named by model component"
    assert agent_results[0]["DetectAnomalyResult"]["IsAnomalous"] is True, "the same verdict"
    serve.process.send_signal(signal.SIGTERM)
    assert serve.wait() == 0, serve.log.read_text()
    assert not socket.exists(), "the socket is removed on the way out"
