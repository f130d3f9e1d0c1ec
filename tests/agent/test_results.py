"""What DetectAnomalies returns: classification-only vs segmentation results, mask bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from tests.agent.conftest import AgentFactory, defect_image, red_image


def _request(model: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    return pb2.DetectAnomaliesRequest(
        model_component=model,
        bitmap=pb2.Bitmap(width=width, height=height, byte_data=image.tobytes()),
    )


def test_classification_only_results_have_no_mask_or_anomalies(
    agent: AgentFactory, classifier: Path
) -> None:
    # given
    stub = agent.stub(agent({"parts": classifier}, start=("parts",)))
    # when
    result = stub.DetectAnomalies(_request("parts", red_image(64, 64, 0.95))).detect_anomaly_result
    # then
    assert result.is_anomalous, "p=0.95 is anomalous"
    assert not result.HasField("anomaly_mask"), "no mask field at all"
    assert list(result.anomalies) == [], "no anomalies list"


def test_segmentation_results_list_background_first_and_return_the_rgb_mask(
    agent: AgentFactory, segmenter: Path
) -> None:
    # given a segmenter and an image with a red and a blue defect, not at the model's size
    stub = agent.stub(agent({"seg": segmenter}, start=("seg",)))
    image = defect_image(120, 200)
    expected = Inspector.load(read_model_package(segmenter), device="cpu").inspect(
        RawFrame(image, "rgb")
    )
    # when
    result = stub.DetectAnomalies(_request("seg", image)).detect_anomaly_result
    # then
    verdict = expected.verdict
    assert result.is_anomalous == verdict.is_anomalous, "the in-process verdict"
    assert result.confidence == np.float32(verdict.confidence), "the in-process confidence"
    names = [anomaly.name for anomaly in result.anomalies]
    assert names[0] == "background", f"background is listed first: {names}"
    assert names == [a.name for a in verdict.anomalies], "every class present, in index order"
    for got, want in zip(result.anomalies, verdict.anomalies, strict=True):
        assert got.pixel_anomaly.hex_color == want.pixel_anomaly.color, f"{got.name}: colour"
        assert math.isclose(
            got.pixel_anomaly.total_percentage_area,
            want.pixel_anomaly.total_percentage_area,
            rel_tol=1e-6,
        ), f"{got.name}: area as a 0-1 fraction"
    total = sum(a.pixel_anomaly.total_percentage_area for a in result.anomalies)
    assert math.isclose(total, 1.0, rel_tol=1e-5), f"areas are fractions summing to 1: {total}"
    mask = result.anomaly_mask
    assert (mask.width, mask.height) == (200, 120), "the mask has the image's width and height"
    assert len(mask.byte_data) == 200 * 120 * 3, "width × height × 3 bytes (RGB888)"
    pixels = np.frombuffer(mask.byte_data, np.uint8).reshape(120, 200, 3)
    wanted = verdict.mask_rgb()
    assert wanted is not None
    assert np.array_equal(pixels, wanted), "the bytes are the mask in the verdict's colours"
    assert pixels[0, 0].tolist() == [0x23, 0xA4, 0x36], "red defect → class 1 → #23A436"
    assert pixels[-1, 0].tolist() == [255, 255, 255], "background → #FFFFFF"


def test_segmentation_without_defects_lists_only_background(
    agent: AgentFactory, segmenter: Path
) -> None:
    # given a grey image
    stub = agent.stub(agent({"seg": segmenter}, start=("seg",)))
    grey = np.full((64, 64, 3), 120, dtype=np.uint8)
    # when
    result = stub.DetectAnomalies(_request("seg", grey)).detect_anomaly_result
    # then
    assert not result.is_anomalous, "nothing found"
    assert [a.name for a in result.anomalies] == ["background"], "only background"
    assert result.anomalies[0].pixel_anomaly.total_percentage_area == 1.0, "covering everything"
