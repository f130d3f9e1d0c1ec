"""Every documented status code of the Edge Agent API, through the real gRPC client."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent.registry import ModelStatus
from lfv_edge.errors import InferenceError
from lfv_edge.modelbuild.package import PackageSpec
from tests.agent.conftest import CLASSIFIER, WAIT_S, AgentFactory, GatedLoader, red_image
from tests.conftest import PackageFactory


def _request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    return pb2.DetectAnomaliesRequest(
        model_component=model,
        bitmap=pb2.Bitmap(width=width, height=height, byte_data=image.tobytes()),
    )


def _error(call: Any, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def test_unknown_model_is_not_found_on_every_model_call(
    agent: AgentFactory, classifier: Path
) -> None:
    # given
    stub = agent.stub(agent({"parts": classifier}))
    calls = [
        (stub.DetectAnomalies, _request("nope", red_image(64, 64, 0.5))),
        (stub.StartModel, pb2.StartModelRequest(model_component="nope")),
        (stub.StopModel, pb2.StopModelRequest(model_component="nope")),
        (stub.DescribeModel, pb2.DescribeModelRequest(model_component="nope")),
    ]
    for call, request in calls:
        # when
        error = _error(call, request)
        # then
        assert error.code() == grpc.StatusCode.NOT_FOUND, f"{type(request).__name__}: NOT_FOUND"
        assert "'nope'" in str(error.details()), f"names the model: {error.details()}"
        assert "parts" in str(error.details()), f"and the configured ones: {error.details()}"


def test_empty_model_component_is_an_invalid_argument(
    agent: AgentFactory, classifier: Path
) -> None:
    # given
    stub = agent.stub(agent({"parts": classifier}))
    # when
    error = _error(stub.DescribeModel, pb2.DescribeModelRequest())
    # then
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, "model_component is required"


def test_state_preconditions(agent: AgentFactory, classifier: Path) -> None:
    # given one stopped and one running model
    server = agent({"stopped": classifier, "running": classifier}, start=("running",))
    stub = agent.stub(server)
    cases = [
        (stub.DetectAnomalies, _request("stopped", red_image(64, 64, 0.5)), "DetectAnomalies"),
        (stub.StartModel, pb2.StartModelRequest(model_component="running"), "StartModel"),
        (stub.StopModel, pb2.StopModelRequest(model_component="stopped"), "StopModel"),
    ]
    for call, request, what in cases:
        # when
        error = _error(call, request)
        # then
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, f"{what}: FAILED_PRECONDITION"
        assert "needs" in str(error.details()), f"{what}: says what state it needs"


@pytest.mark.parametrize(
    ("width", "height", "data_bytes", "expected"),
    [
        (64, 64, 64 * 64 * 3 - 1, "exactly 12288 bytes"),
        (64, 64, 64 * 64 * 4, "exactly 12288 bytes"),
        (63, 64, 63 * 64 * 3, "minimum is 64"),
        (64, 10, 64 * 10 * 3, "minimum is 64"),
        (4097, 64, 4097 * 64 * 3, "maximum is 4096"),
        (-64, 64, 0, "minimum is 64"),
    ],
    ids=["one-byte-short", "rgba-sized", "too-narrow", "too-short", "too-wide", "negative"],
)
def test_bad_bitmaps_are_invalid_arguments(
    agent: AgentFactory,
    classifier: Path,
    width: int,
    height: int,
    data_bytes: int,
    expected: str,
) -> None:
    # given a running model
    stub = agent.stub(agent({"parts": classifier}, start=("parts",)))
    request = pb2.DetectAnomaliesRequest(
        model_component="parts",
        bitmap=pb2.Bitmap(width=width, height=height, byte_data=bytes(data_bytes)),
    )
    # when
    error = _error(stub.DetectAnomalies, request)
    # then
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, "a bad bitmap is INVALID_ARGUMENT"
    assert expected in str(error.details()), f"clear message: {error.details()}"


def test_missing_bitmap_data_is_an_invalid_argument(agent: AgentFactory, classifier: Path) -> None:
    # given
    stub = agent.stub(agent({"parts": classifier}, start=("parts",)))
    requests = [
        pb2.DetectAnomaliesRequest(model_component="parts"),
        pb2.DetectAnomaliesRequest(model_component="parts", bitmap=pb2.Bitmap(width=64, height=64)),
    ]
    for request in requests:
        # when
        error = _error(stub.DetectAnomalies, request)
        # then
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, "no pixels: INVALID_ARGUMENT"
        assert "bitmap" in str(error.details()), f"names the bitmap: {error.details()}"


def test_a_full_model_queue_is_resource_exhausted(agent: AgentFactory, classifier: Path) -> None:
    # given a model that admits 2 calls, with its runner held at a gate
    loader = GatedLoader()
    server = agent({"parts": classifier}, loader=loader, max_pending=2, start=("parts",))
    stub = agent.stub(server)
    runner = loader.runners[classifier]
    request = _request("parts", red_image(64, 64, 0.9))
    first = stub.DetectAnomalies.future(request)
    assert runner.entered.acquire(timeout=WAIT_S), "the first call reached the model"
    second = stub.DetectAnomalies.future(request)
    # (the second waits behind the first; the registry counts it admitted before queueing)
    admitted = server.registry.wait_for_pending("parts", 2, WAIT_S)
    # when
    error = _error(stub.DetectAnomalies, request)
    runner.gate.set()
    # then
    assert admitted == 2, "two calls were admitted"
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "a third is refused"
    assert "retry" in str(error.details()), f"says to retry: {error.details()}"
    assert first.result(timeout=WAIT_S).detect_anomaly_result.is_anomalous, "the first completes"
    assert second.result(timeout=WAIT_S).detect_anomaly_result.is_anomalous, "so does the second"
    assert stub.DetectAnomalies(request).detect_anomaly_result.is_anomalous, (
        "once the queue drains, calls are admitted again"
    )


def test_a_broken_package_starts_then_fails_with_the_reason(
    agent: AgentFactory, make_package: PackageFactory, tmp_path: Path
) -> None:
    # given a package whose graph JSON is corrupt
    broken = make_package.copy(CLASSIFIER, dest=tmp_path / "broken")
    graph = broken / "mochi" / "compiled_model.json"
    graph.write_text(json.dumps({"nodes": "not a graph"}))
    server = agent({"broken": broken})
    stub = agent.stub(server)
    # when
    started = stub.StartModel(pb2.StartModelRequest(model_component="broken"))
    server.registry.wait_for("broken", (ModelStatus.FAILED, ModelStatus.RUNNING), WAIT_S)
    described = stub.DescribeModel(pb2.DescribeModelRequest(model_component="broken"))
    detect_error = _error(stub.DetectAnomalies, _request("broken", red_image(64, 64, 0.5)))
    # then
    assert started.status == pb2.STARTING, "StartModel answers STARTING at once"
    description = described.model_description
    assert description.status == pb2.FAILED, "the load failed in the background"
    assert "compiled_model.json" in description.status_message, (
        f"status_message carries the package error: {description.status_message!r}"
    )
    assert detect_error.code() == grpc.StatusCode.FAILED_PRECONDITION, (
        "a FAILED model is not RUNNING"
    )
    restarted = stub.StartModel(pb2.StartModelRequest(model_component="broken"))
    assert restarted.status == pb2.STARTING, "StartModel is allowed again from FAILED"


def test_a_missing_package_fails_with_the_reason(agent: AgentFactory, tmp_path: Path) -> None:
    # given a model whose package path does not exist
    server = agent({"gone": tmp_path / "missing.zip"})
    stub = agent.stub(server)
    # when
    stub.StartModel(pb2.StartModelRequest(model_component="gone"))
    info = server.registry.wait_for("gone", (ModelStatus.FAILED, ModelStatus.RUNNING), WAIT_S)
    # then
    assert info.status == ModelStatus.FAILED, "a missing package fails"
    assert "missing.zip" in info.status_message, f"and says which: {info.status_message!r}"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (RuntimeError("boom"), "internal error: RuntimeError: boom"),
        (InferenceError("inference failed: out of memory"), "inference failed: out of memory"),
    ],
    ids=["unexpected", "inference-error"],
)
def test_a_failing_inference_is_internal_and_the_agent_keeps_serving(
    agent: AgentFactory, classifier: Path, failure: BaseException, expected: str
) -> None:
    # given a runner that fails once
    loader = GatedLoader(open_gate=True)
    server = agent({"parts": classifier}, loader=loader, start=("parts",))
    stub = agent.stub(server)
    loader.runners[classifier].fail_with = failure
    request = _request("parts", red_image(64, 64, 0.9))
    # when
    error = _error(stub.DetectAnomalies, request)
    # then
    assert error.code() == grpc.StatusCode.INTERNAL, "a failed inference is INTERNAL"
    assert expected in str(error.details()), f"with the reason: {error.details()}"
    assert stub.DetectAnomalies(request).detect_anomaly_result.is_anomalous, "the next call works"


def test_stop_model_finishes_admitted_calls_first(agent: AgentFactory, classifier: Path) -> None:
    # given a call held in the model
    loader = GatedLoader()
    server = agent({"parts": classifier}, loader=loader, start=("parts",))
    stub = agent.stub(server)
    runner = loader.runners[classifier]
    in_flight = stub.DetectAnomalies.future(_request("parts", red_image(64, 64, 0.9)))
    assert runner.entered.acquire(timeout=WAIT_S), "the call reached the model"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # when StopModel is called while it runs
        stopping = pool.submit(stub.StopModel, pb2.StopModelRequest(model_component="parts"))
        info = server.registry.wait_for("parts", (ModelStatus.STOPPING,), WAIT_S)
        refused = _error(stub.DetectAnomalies, _request("parts", red_image(64, 64, 0.9)))
        runner.gate.set()
        stopped = stopping.result(timeout=WAIT_S)
    # then
    assert info.status == ModelStatus.STOPPING, "the model is STOPPING meanwhile"
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, "new calls are refused"
    assert in_flight.result(timeout=WAIT_S).detect_anomaly_result.is_anomalous, (
        "the admitted call completes"
    )
    assert stopped.status == pb2.STOPPED, "StopModel returned once stopped"


def test_start_stop_start_serves_again(agent: AgentFactory, make_package: PackageFactory) -> None:
    # given a running model, stopped and started again
    package = make_package(PackageSpec(image_width=80, image_height=64))
    server = agent({"parts": package}, start=("parts",))
    stub = agent.stub(server)
    stub.StopModel(pb2.StopModelRequest(model_component="parts"))
    # when
    stub.StartModel(pb2.StartModelRequest(model_component="parts"))
    server.registry.wait_for("parts", (ModelStatus.RUNNING, ModelStatus.FAILED), WAIT_S)
    result = stub.DetectAnomalies(_request("parts", red_image(64, 80, 0.9)))
    # then
    assert result.detect_anomaly_result.is_anomalous, "the restarted model serves"
