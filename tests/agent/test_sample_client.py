"""AWS's documented client flow, against our socket: DescribeModel → StartModel → DetectAnomalies.

`start_model_if_needed` and `detect_anomalies` follow the Lookout for Vision developer guide's
sample client ("Starting the model", "Detecting anomalies") line for line; the one change is
the pause between DescribeModel polls, which waits for the model's next status change instead
of `time.sleep(1.0)` (the suite does not sleep).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent.registry import ModelStatus
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from tests.agent.conftest import WAIT_S, AgentFactory, red_image


def start_model_if_needed(stub: Any, model_name: str, pause: Callable[[], object]) -> None:
    # Starting model if needed.
    while True:
        model_description_response = stub.DescribeModel(
            pb2.DescribeModelRequest(model_component=model_name)
        )
        if model_description_response.model_description.status == pb2.RUNNING:
            break
        elif model_description_response.model_description.status == pb2.STOPPED:  # noqa: RET508
            stub.StartModel(pb2.StartModelRequest(model_component=model_name))
            continue
        elif model_description_response.model_description.status == pb2.FAILED:
            raise Exception(f"model {model_name} failed to start")
        if model_description_response.model_description.status != pb2.STARTING:
            break
        pause()  # the sample: time.sleep(1.0)


def detect_anomalies(stub: Any, model_name: str, image: np.ndarray) -> Any:
    # The sample opens a file with PIL and sends Image.tobytes(): packed RGB888, row by row,
    # which is what numpy's tobytes() of an H×W×3 RGB array is.
    detect_anomalies_response = stub.DetectAnomalies(
        pb2.DetectAnomaliesRequest(
            model_component=model_name,
            bitmap=pb2.Bitmap(
                width=image.shape[1],
                height=image.shape[0],
                byte_data=bytes(image.tobytes()),
            ),
        )
    )
    return detect_anomalies_response.detect_anomaly_result


def test_documented_sample_flow_starts_the_model_and_detects(
    agent: AgentFactory, classifier: Path
) -> None:
    # given an agent with a stopped classifier, and the same package loaded in-process
    server = agent({"com.example.Parts": classifier})
    stub = agent.stub(server)
    inspector = Inspector.load(read_model_package(classifier), device="cpu")

    def pause() -> None:
        server.registry.wait_for_change("com.example.Parts", ModelStatus.STARTING, WAIT_S)

    # when the sample client runs
    start_model_if_needed(stub, "com.example.Parts", pause)
    results = {
        p: detect_anomalies(stub, "com.example.Parts", red_image(64, 64, p)) for p in (0.1, 0.9)
    }
    # then
    described = stub.DescribeModel(pb2.DescribeModelRequest(model_component="com.example.Parts"))
    assert described.model_description.status == pb2.RUNNING, "the sample started the model"
    for probability, result in results.items():
        expected = inspector.inspect(RawFrame(red_image(64, 64, probability), "rgb")).verdict
        assert result.is_anomalous == expected.is_anomalous, f"p={probability}: same verdict"
        assert result.confidence == np.float32(expected.confidence), (
            f"p={probability}: the in-process confidence, as a proto float"
        )
        assert not result.HasField("anomaly_mask"), "a classifier returns no mask"
        assert len(result.anomalies) == 0, "a classifier returns no anomalies"
    assert results[0.9].is_anomalous, "p=0.9 is above the 0.5 threshold"
    assert not results[0.1].is_anomalous, "p=0.1 is below it"


def test_sample_flow_on_an_already_running_model_and_a_larger_image(
    agent: AgentFactory, classifier: Path
) -> None:
    # given a model started at launch
    server = agent({"parts": classifier}, start=("parts",))
    stub = agent.stub(server)
    inspector = Inspector.load(read_model_package(classifier), device="cpu")
    image = red_image(480, 640, 0.8)
    image[100:200, 100:300] = (10, 200, 30)  # not uniform: resizing matters
    # when
    start_model_if_needed(stub, "parts", lambda: None)
    result = detect_anomalies(stub, "parts", image)
    # then
    expected = inspector.inspect(RawFrame(image, "rgb")).verdict
    assert result.is_anomalous == expected.is_anomalous, "same verdict as in-process"
    assert result.confidence == np.float32(expected.confidence), "same confidence as in-process"


def test_stop_list_and_describe_as_the_guide_shows(agent: AgentFactory, classifier: Path) -> None:
    # given two models, one running
    server = agent({"a": classifier, "b": classifier}, start=("a",))
    stub = agent.stub(server)
    # when
    listed = stub.ListModels(pb2.ListModelsRequest())
    stopped = stub.StopModel(pb2.StopModelRequest(model_component="a"))
    after = stub.DescribeModel(pb2.DescribeModelRequest(model_component="a"))
    # then
    assert [(m.model_component, m.status) for m in listed.models] == [
        ("a", pb2.RUNNING),
        ("b", pb2.STOPPED),
    ], "ListModels reports every configured model in order"
    assert stopped.status == pb2.STOPPED, "StopModel returns once the model is stopped"
    assert after.model_description.status == pb2.STOPPED, "DescribeModel agrees"
    assert after.model_description.model_component == "a", "the description names the model"


def test_describe_accepts_a_start_request_message_as_some_clients_send(
    agent: AgentFactory, classifier: Path
) -> None:
    # given a client that (like one public sample) passes StartModelRequest to DescribeModel:
    # both messages are `string model_component = 1`, so the bytes are the same
    server = agent({"parts": classifier})
    stub = agent.stub(server)
    # when
    response = stub.DescribeModel(pb2.StartModelRequest(model_component="parts"))
    # then
    assert response.model_description.status == pb2.STOPPED, "decoded as a DescribeModelRequest"
