"""`on_verdict`: each gRPC verdict can also go to a transport (the serve/greengrass wiring point)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent.server import CallSummary, verdict_publisher
from lfv_edge.inspection.pipeline import Inspection
from lfv_edge.transports.memory import MemoryTransport
from tests.agent.conftest import AgentFactory, defect_image, red_image


def _request(model: str, width: int, height: int, data: bytes) -> pb2.DetectAnomaliesRequest:
    return pb2.DetectAnomaliesRequest(
        model_component=model, bitmap=pb2.Bitmap(width=width, height=height, byte_data=data)
    )


def test_verdicts_are_published_on_the_results_topic(
    agent: AgentFactory, classifier: Path, segmenter: Path
) -> None:
    # given an agent whose verdicts also go to a memory transport
    transport = MemoryTransport(results_topic="lfv/results")
    server = agent(
        {"cls": classifier, "seg": segmenter},
        start=("cls", "seg"),
        on_verdict=verdict_publisher(transport, "lfv/results"),
    )
    stub = agent.stub(server)
    # when
    cls = stub.DetectAnomalies(_request("cls", 64, 64, red_image(64, 64, 0.9).tobytes()))
    seg = stub.DetectAnomalies(_request("seg", 96, 64, defect_image(64, 96).tobytes()))
    published = transport.wait_for(2, topic="lfv/results", timeout_s=10)
    # then
    first, second = (json.loads(p.payload) for p in published)
    assert first["ModelComponent"] == "cls", "names the model component"
    assert first["Source"] == "EdgeAgent", "says it came from a gRPC call"
    assert first["DetectAnomalyResult"]["IsAnomalous"] is True, "the verdict, LFV-shaped"
    assert first["DetectAnomalyResult"]["Confidence"] == pytest.approx(
        cls.detect_anomaly_result.confidence, rel=1e-6
    ), "the confidence the client got"
    assert first["Model"]["Version"].startswith("sha256:"), "the package version"
    assert first["ImageSize"] == {"Width": 64, "Height": 64}, "the image size"
    assert set(first["TimingsMs"]) >= {"preprocess", "run", "postprocess", "total"}, "timings"
    names = [a["Name"] for a in second["DetectAnomalyResult"]["Anomalies"]]
    assert names == [a.name for a in seg.detect_anomaly_result.anomalies], "the segmenter's list"
    assert "AnomalyMask" not in second["DetectAnomalyResult"], "no mask unless asked"


def test_a_failing_hook_does_not_fail_the_call(agent: AgentFactory, classifier: Path) -> None:
    # given a hook that raises, and one that records
    seen: list[tuple[str, CallSummary]] = []

    def hook(model: str, summary: CallSummary, inspection: Inspection) -> None:
        seen.append((model, summary))
        raise RuntimeError("transport down")

    stub = agent.stub(agent({"cls": classifier}, start=("cls",), on_verdict=hook))
    # when
    result = stub.DetectAnomalies(_request("cls", 64, 64, red_image(64, 64, 0.9).tobytes()))
    # then
    assert result.detect_anomaly_result.is_anomalous, "the client still gets its verdict"
    assert len(seen) == 1, "the hook ran once"
    model, summary = seen[0]
    assert (model, summary.input, summary.mask_output) == ("cls", "byte_data", "none"), (
        "the summary says what was asked"
    )


def test_publish_failures_are_swallowed(agent: AgentFactory, classifier: Path) -> None:
    # given a transport that fails to publish
    transport = MemoryTransport()
    transport.fail_publishes = True
    stub = agent.stub(
        agent({"cls": classifier}, start=("cls",), on_verdict=verdict_publisher(transport, "r"))
    )
    # when
    try:
        result = stub.DetectAnomalies(_request("cls", 64, 64, red_image(64, 64, 0.1).tobytes()))
    except grpc.RpcError as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"a publish failure reached the client: {exc}")
    # then
    assert not result.detect_anomaly_result.is_anomalous, "the call succeeded"
