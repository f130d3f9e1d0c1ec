"""Several models at once, and many concurrent callers: every caller gets its own, correct result."""

from __future__ import annotations

import concurrent.futures
import threading
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


def test_two_models_run_at_once_and_answer_for_themselves(
    agent: AgentFactory, classifier: Path, segmenter: Path
) -> None:
    # given a classifier and a segmenter, both running
    server = agent({"cls": classifier, "seg": segmenter}, start=("cls", "seg"))
    stub = agent.stub(server)
    image = defect_image(64, 64)
    # when the same image goes to both
    cls = stub.DetectAnomalies(_request("cls", image)).detect_anomaly_result
    seg = stub.DetectAnomalies(_request("seg", image)).detect_anomaly_result
    # then
    listed = stub.ListModels(pb2.ListModelsRequest()).models
    assert [m.status for m in listed] == [pb2.RUNNING, pb2.RUNNING], "both are RUNNING"
    assert len(cls.anomalies) == 0, "the classifier answers as a classifier"
    assert seg.anomalies[0].name == "background", "the segmenter as a segmenter"
    assert seg.HasField("anomaly_mask"), "with its mask"


def test_concurrent_callers_get_correct_consistent_results(
    agent: AgentFactory, classifier: Path, segmenter: Path
) -> None:
    # given two running models and, per caller thread, its own images with known verdicts
    server = agent({"cls": classifier, "seg": segmenter}, start=("cls", "seg"), max_pending=16)
    stub = agent.stub(server)
    cls_inspector = Inspector.load(read_model_package(classifier), device="cpu")
    seg_inspector = Inspector.load(read_model_package(segmenter), device="cpu")
    callers, calls_each = 8, 6
    work: list[list[tuple[str, np.ndarray]]] = []
    for caller in range(callers):
        items: list[tuple[str, np.ndarray]] = []
        for call in range(calls_each):
            if (caller + call) % 2:
                items.append(("cls", red_image(64 + 8 * call, 64, 0.05 + 0.9 * caller / callers)))
            else:
                image = defect_image(64, 64 + 16 * caller)
                image[-8:, :8] = (caller * 20, call * 30, 200)  # each image a little different
                items.append(("seg", image))
        work.append(items)
    start = threading.Barrier(callers)

    def run(items: list[tuple[str, np.ndarray]]) -> list[pb2.DetectAnomalyResult]:
        start.wait()  # all callers at once
        return [stub.DetectAnomalies(_request(m, img)).detect_anomaly_result for m, img in items]

    # when
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(run, work))
    # then
    checked = 0
    for caller, (items, answers) in enumerate(zip(work, results, strict=True)):
        for (model, image), answer in zip(items, answers, strict=True):
            inspector = cls_inspector if model == "cls" else seg_inspector
            verdict = inspector.inspect(RawFrame(image, "rgb")).verdict
            where = f"caller {caller}, {model} {image.shape}"
            assert answer.is_anomalous == verdict.is_anomalous, f"{where}: its own verdict"
            assert answer.confidence == np.float32(verdict.confidence), f"{where}: its confidence"
            rgb = verdict.mask_rgb()
            if rgb is not None:
                assert answer.anomaly_mask.byte_data == rgb.tobytes(), f"{where}: its own mask"
            checked += 1
    assert checked == callers * calls_each, "every call was answered"
