"""The proto is the wire contract: committed gencode matches it, field numbers match AWS's API."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent import protogen

# (message, field, number) as documented for the LFV Edge Agent (docs/model-packages.md §9).
WIRE_CONTRACT = [
    ("DetectAnomaliesRequest", "model_component", 1),
    ("DetectAnomaliesRequest", "bitmap", 2),
    ("DetectAnomaliesRequest", "anomaly_mask_params", 3),
    ("DetectAnomaliesResponse", "detect_anomaly_result", 1),
    ("Bitmap", "width", 1),
    ("Bitmap", "height", 2),
    ("Bitmap", "byte_data", 3),
    ("Bitmap", "shared_memory_handle", 4),
    ("SharedMemoryHandle", "name", 1),
    ("SharedMemoryHandle", "size", 2),
    ("SharedMemoryHandle", "offset", 3),
    ("AnomalyMaskParams", "shared_memory_handle", 2),
    ("AnomalyMaskParams", "shared_memory_handle_field3", 3),  # the AWS sample proto's number
    ("DetectAnomalyResult", "is_anomalous", 1),
    ("DetectAnomalyResult", "confidence", 2),
    ("DetectAnomalyResult", "anomaly_mask", 3),
    ("DetectAnomalyResult", "anomalies", 4),
    ("DetectAnomalyResult", "anomaly_score", 5),  # the current DetectAnomalies reference page
    ("DetectAnomalyResult", "anomaly_threshold", 6),
    ("Anomaly", "name", 1),
    ("Anomaly", "pixel_anomaly", 2),
    ("PixelAnomaly", "total_percentage_area", 1),
    ("PixelAnomaly", "hex_color", 2),
    ("ModelDescription", "model_component", 1),
    ("ModelDescription", "lookout_vision_model_arn", 2),
    ("ModelDescription", "status", 3),
    ("ModelDescription", "status_message", 4),
    ("ModelMetadata", "model_component", 1),
    ("ModelMetadata", "lookout_vision_model_arn", 2),
    ("ModelMetadata", "status", 3),
    ("ModelMetadata", "status_message", 4),
    ("StartModelRequest", "model_component", 1),
    ("StartModelResponse", "status", 1),
    ("StopModelRequest", "model_component", 1),
    ("StopModelResponse", "status", 1),
    ("ListModelsResponse", "models", 1),
    ("DescribeModelRequest", "model_component", 1),
    ("DescribeModelResponse", "model_description", 1),
]


def test_committed_gencode_is_what_the_proto_generates(tmp_path: Path) -> None:
    # given the pinned grpcio-tools
    # when the proto is compiled again
    generated = protogen.generate(tmp_path)
    # then
    for name, data in generated.items():
        committed = protogen.PROTO.with_name(name).read_bytes()
        assert committed == data, (
            f"{name} is stale: run .venv/bin/python -m lfv_edge.agent.protogen and commit"
        )


@pytest.mark.parametrize(("message", "field", "number"), WIRE_CONTRACT)
def test_field_numbers_are_the_wire_contract(message: str, field: str, number: int) -> None:
    descriptor = pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number, f"{message}.{field} = {number}"


def test_names_and_enum_are_the_agents() -> None:
    # the service's full name is in every call's path: /AWS.LookoutVision.EdgeAgent/<Method>
    service = pb2.DESCRIPTOR.services_by_name["EdgeAgent"]
    assert service.full_name == "AWS.LookoutVision.EdgeAgent", "package AWS.LookoutVision"
    assert [m.name for m in service.methods] == [
        "DetectAnomalies",
        "StartModel",
        "StopModel",
        "ListModels",
        "DescribeModel",
    ], "the five RPCs"
    status = pb2.DESCRIPTOR.enum_types_by_name["ModelStatus"]
    assert {v.name: v.number for v in status.values} == {
        "STOPPED": 0,
        "STARTING": 1,
        "RUNNING": 2,
        "FAILED": 3,
        "STOPPING": 4,
    }, "ModelStatus values"
    assert pb2.DESCRIPTOR.GetOptions().java_package == "com.amazonaws.lookoutvision", "java_package"


def test_bitmap_data_is_a_oneof() -> None:
    bitmap = pb2.Bitmap(width=64, height=64, byte_data=b"x")
    bitmap.shared_memory_handle.name = "/cam"
    assert bitmap.WhichOneof("data") == "shared_memory_handle", (
        "byte_data and shm exclude each other"
    )
    assert not bitmap.byte_data, "setting one clears the other"
