"""The current DetectAnomalies reference: anomaly_score (5) and anomaly_threshold (6), and ARNs.

A client generated from the older proto (fields 1–4) keeps working; one generated from the
current reference reads the score (for normal images too) and the threshold in force.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent import protogen
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from lfv_edge.service.config import ModelConfig
from lfv_edge.service.wiring import model_loader
from tests.agent.conftest import AgentFactory, red_image


def _request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    return pb2.DetectAnomaliesRequest(
        model_component=model,
        bitmap=pb2.Bitmap(width=width, height=height, byte_data=image.tobytes()),
    )


def _expected(package: Path, image: np.ndarray, threshold: float | None = None) -> Inspector:
    inspector = Inspector.load(read_model_package(package), device="cpu", threshold=threshold)
    inspector.inspect(RawFrame(image, "rgb"))
    return inspector


@pytest.mark.parametrize("probability", [0.93, 0.12], ids=["anomalous", "normal"])
def test_score_and_threshold_come_back_for_every_image(
    agent: AgentFactory, classifier: Path, probability: float
) -> None:
    # given a running model and an anomalous or a normal part
    stub = agent.stub(agent({"parts": classifier}, start=("parts",)))
    image = red_image(64, 64, probability)
    verdict = _expected(classifier, image).inspect(RawFrame(image, "rgb")).verdict
    # when
    result = stub.DetectAnomalies(_request("parts", image)).detect_anomaly_result
    # then the score before rounding and the threshold in force are there, even when normal
    assert result.anomaly_score == np.float32(verdict.score), "the LFV score (float32)"
    assert result.anomaly_threshold == np.float32(verdict.threshold), "the manifest's threshold"
    assert result.anomaly_score > 0.0, "returned for a normal image too"
    assert result.is_anomalous == (round(verdict.score, 4) >= round(verdict.threshold, 4))


def test_the_threshold_is_the_one_in_force_with_an_override(
    agent: AgentFactory, classifier: Path
) -> None:
    # given models loaded with a threshold override (model.thresholdOverride)
    loader = model_loader(ModelConfig(path=Path(), device="cpu", threshold_override=0.2))
    stub = agent.stub(agent({"parts": classifier}, start=("parts",), loader=loader))
    # when a part scoring about 0.3 is inspected
    result = stub.DetectAnomalies(_request("parts", red_image(64, 64, 0.3))).detect_anomaly_result
    # then the override is reported, and decides
    assert result.anomaly_threshold == np.float32(0.2), "the override, not the manifest's 0.5"
    assert result.is_anomalous, "0.3 reaches the override"


OLD_CLIENT = """
import json, sys
import grpc
import numpy as np
import edge_agent_pb2 as pb2  # compiled from the older proto
fields = [f.name for f in pb2.DetectAnomalyResult.DESCRIPTOR.fields]
image = np.full((64, 64, 3), (int(sys.argv[2]), 90, 60), dtype=np.uint8)
request = pb2.DetectAnomaliesRequest(model_component="parts",
    bitmap=pb2.Bitmap(width=64, height=64, byte_data=image.tobytes()))
with grpc.insecure_channel(sys.argv[1]) as channel:
    call = channel.unary_unary("/AWS.LookoutVision.EdgeAgent/DetectAnomalies",
        request_serializer=pb2.DetectAnomaliesRequest.SerializeToString,
        response_deserializer=pb2.DetectAnomaliesResponse.FromString)
    result = call(request, timeout=30).detect_anomaly_result
print(json.dumps({"fields": fields, "is_anomalous": result.is_anomalous,
                  "confidence": result.confidence}))
"""


def test_a_client_generated_from_the_older_proto_still_works(
    agent: AgentFactory, classifier: Path, tmp_path: Path
) -> None:
    # given a client compiled, in its own process, from the proto without fields 5 and 6
    source = protogen.PROTO.read_text()
    start = source.index("  // From the DetectAnomalies reference page")
    end = source.index("\n", source.index("float anomaly_threshold = 6;")) + 1
    (tmp_path / "edge-agent.proto").write_text(source[:start] + source[end:])
    from grpc_tools import protoc

    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                        str(tmp_path / "edge-agent.proto")]) == 0  # fmt: skip
    (tmp_path / "client.py").write_text(OLD_CLIENT)
    server = agent({"parts": classifier}, start=("parts",))
    image = red_image(64, 64, 0.93)
    # when it calls DetectAnomalies
    run = subprocess.run(
        [sys.executable, str(tmp_path / "client.py"), f"unix://{server.socket_path}",
         str(int(image[0, 0, 0]))],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    # then it reads its four fields as before; 5 and 6 are unknown to it and do no harm
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["fields"] == ["is_anomalous", "confidence", "anomaly_mask", "anomalies"]
    current = agent.stub(server).DetectAnomalies(_request("parts", image)).detect_anomaly_result
    assert got["is_anomalous"] is True
    assert got["confidence"] == pytest.approx(current.confidence), "the same verdict"


def test_describe_and_list_report_a_configured_arn(agent: AgentFactory, classifier: Path) -> None:
    # given two models, one with its LFV ARN configured
    arn = "arn:aws:lookoutvision:eu-west-1:123456789012:model/parts/3"
    from lfv_edge.agent.registry import ModelRegistry
    from lfv_edge.agent.server import AgentServer

    registry = ModelRegistry({"parts": classifier, "other": classifier},
                             loader=model_loader(None, device="cpu"), max_pending=1,
                             arns={"parts": arn})  # fmt: skip
    server = AgentServer(registry, socket=f"unix://{agent.folder / 'arn.sock'}")
    server.start()
    agent.servers.append(server)
    stub = agent.stub(server)
    # when
    described = stub.DescribeModel(pb2.DescribeModelRequest(model_component="parts"))
    listed = {m.model_component: m for m in stub.ListModels(pb2.ListModelsRequest()).models}
    # then
    assert described.model_description.lookout_vision_model_arn == arn
    assert listed["parts"].lookout_vision_model_arn == arn
    assert listed["other"].lookout_vision_model_arn == "", "empty where none is configured"
