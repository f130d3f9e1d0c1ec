"""LFV post-processing: scores, 4-decimal threshold rounding, confidence, masks, areas, colours."""

from __future__ import annotations

import base64
import copy
from typing import Any

import cv2
import numpy as np
import pytest

from lfv_edge.errors import ConfigError
from lfv_edge.inspection.postprocess import (
    DEFAULT_PALETTE,
    Postprocessor,
    is_anomalous_score,
    lfv_confidence,
)
from lfv_edge.model.manifest import parse_manifest
from lfv_edge.model.package import OutputLayout

STAGE: dict[str, Any] = {
    "type": "mochi",
    "threshold": 0.5,
    "image_width": 64,
    "image_height": 48,
    "normalize": True,
    "image_range_scale": True,
    "classification_head_enabled": True,
    "segmentation_head_enabled": False,
    "class_normal_ids": [1],
}


def _post(
    stage: dict[str, Any] | None = None,
    *,
    names: list[str] | None = None,
    pixel: list[str] | None = None,
    mask_shape: tuple[int, int] = (12, 16),
    **kwargs: Any,
) -> Postprocessor:
    body = {**STAGE, **(stage or {})}
    graph: dict[str, Any] = {"model_graph_type": "single_stage_model_graph", "stages": [body]}
    if names is not None:
        graph["image_level_classes"] = {"names": names, "normal_ids": body["class_normal_ids"]}
    if pixel is not None:
        graph["pixel_level_classes"] = {
            "names": pixel,
            "normal_ids": body.get("seg_normal_ids", [0]),
        }
    manifest = parse_manifest({"model_graph": graph})
    seg, cls = body["segmentation_head_enabled"], body["classification_head_enabled"]
    layout = OutputLayout(
        mask_index=0 if seg else None,
        score_index=(1 if seg else 0) if cls else None,
        num_classes=len(names or ["a", "b"]) if cls else 0,
        num_pixel_classes=len(pixel or []) if seg else 0,
        mask_shape=mask_shape if seg else None,
    )
    return Postprocessor(manifest, layout, **kwargs)


@pytest.mark.parametrize(
    ("score", "threshold", "anomalous"),
    [
        (0.5, 0.5, True),  # equality is anomalous
        (0.49995, 0.5, True),  # rounds up to 0.5000
        (0.49994, 0.5, False),  # rounds to 0.4999
        (0.70215, 0.7021560668945312, True),  # below the raw threshold, equal after rounding
        (0.70214, 0.7021560668945312, False),  # 0.7021 < 0.7022
        (0.0, 0.0, True),
        (1.0, 1.00004, True),  # threshold rounds to 1.0
    ],
)
def test_threshold_rounding_edge_cases(score: float, threshold: float, anomalous: bool) -> None:
    expected = not round(score, 4) < round(threshold, 4)
    assert expected == anomalous, "the table itself follows LFV's rule"
    assert is_anomalous_score(score, threshold) is anomalous, (
        f"score {score} vs threshold {threshold}"
    )


def test_confidence_is_clipped_score_or_its_complement() -> None:
    assert lfv_confidence(0.8, True) == pytest.approx(0.8), "anomalous: the score"
    assert lfv_confidence(0.2, False) == pytest.approx(0.8), "normal: 1 - score"
    assert lfv_confidence(1.7, True) == 1.0, "clipped to 1"
    assert lfv_confidence(-0.3, False) == 1.0, "clipped to 0 then complemented"


@pytest.mark.parametrize(
    ("names", "normal_ids", "probabilities", "anomalous"),
    [
        (["anomaly", "normal"], [1], [0.8, 0.2], True),
        (["anomaly", "normal"], [1], [0.3, 0.7], False),
        (["normal", "anomaly"], [0], [0.8, 0.2], False),
        (["normal", "anomaly"], [0], [0.3, 0.7], True),
        (
            ["normal", "scratch", "dent"],
            [0],
            [0.4, 0.35, 0.25],
            True,
        ),  # 0.6 summed over anomaly classes
    ],
)
def test_score_sums_non_normal_classes_in_either_order(
    names: list[str], normal_ids: list[int], probabilities: list[float], anomalous: bool
) -> None:
    post = _post({"class_normal_ids": normal_ids}, names=names)
    verdict = post([np.array([probabilities], dtype=np.float32)], (48, 64))
    expected = float(sum(np.float32(p) for i, p in enumerate(probabilities) if i not in normal_ids))
    assert verdict.score == pytest.approx(expected, abs=1e-7), (
        "score = sum of non-normal probabilities"
    )
    assert verdict.is_anomalous is anomalous, f"{names} {probabilities}"
    lfv = verdict.to_lfv()
    assert lfv == {
        "Source": {"Type": "direct"},
        "IsAnomalous": anomalous,
        "Confidence": verdict.confidence,
    }, "classification models return exactly Source, IsAnomalous, Confidence"


def test_calibration_is_the_sigmoid_of_the_scaled_score() -> None:
    post = _post(
        {
            "calibrated": True,
            "max_val_score": 2.0,
            "calibrator_scaling": -4.0,
            "calibrator_shift": 1.0,
        },
        names=["anomaly", "normal"],
    )
    verdict = post([np.array([[0.6, 0.4]], dtype=np.float32)], (48, 64))
    raw = float(np.float32(0.6))
    assert verdict.score == pytest.approx(1 / (1 + np.exp(-4.0 * raw / 2.0 + 1.0))), (
        "sklearn's sigmoid"
    )


SEG = {"segmentation_head_enabled": True, "seg_normal_ids": [0]}
PIXEL = ["background", "scratch", "dent"]


def _mask_output(labels: np.ndarray, channels: int = 3) -> np.ndarray:
    """Softmax-like probabilities whose argmax is `labels`."""
    out = np.full((1, channels, *labels.shape), 0.1, dtype=np.float32)
    for c in range(channels):
        out[0, c][labels == c] = 0.8
    return out


def test_segmentation_areas_background_first_and_png_mask() -> None:
    # given a 12×16 mask with 24 scratch and 8 dent pixels, for a 48×64 image
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[0:3, 0:8] = 1
    labels[5:7, 10:14] = 2
    post = _post(SEG, names=["anomaly", "normal"], pixel=PIXEL)
    # when
    verdict = post([_mask_output(labels), np.array([[0.9, 0.1]], dtype=np.float32)], (48, 64))
    lfv = verdict.to_lfv()
    # then
    anomalies = lfv["Anomalies"]
    assert isinstance(anomalies, list)
    assert [a["Name"] for a in anomalies] == PIXEL, (
        "background first, then classes present in index order"
    )
    areas = [a["PixelAnomaly"]["TotalPercentageArea"] for a in anomalies]
    assert sum(areas) == pytest.approx(1.0), "areas are fractions that sum to 1"
    assert areas[1] == pytest.approx(24 / 192), "scratch area survives the resize"
    assert areas[2] == pytest.approx(8 / 192), "dent area survives the resize"
    assert [a["PixelAnomaly"]["Color"] for a in anomalies] == list(DEFAULT_PALETTE[:3]), (
        "LFV code's palette"
    )
    png = base64.b64decode(str(lfv["AnomalyMask"]))
    assert png.startswith(b"\x89PNG"), "AnomalyMask is a base64 PNG"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the PNG decodes"
    decoded = image[:, :, ::-1]
    assert decoded.shape == (48, 64, 3), "the mask is resized to the input image's size"
    assert tuple(decoded[0, 0]) == (0x23, 0xA4, 0x36), (
        "scratch pixels carry the scratch colour (RGB)"
    )
    assert tuple(decoded[47, 0]) == (0xFF, 0xFF, 0xFF), "background is white"


def test_absent_classes_are_omitted_but_background_stays() -> None:
    labels = np.full((12, 16), 2, dtype=np.uint8)
    verdict = _post(SEG, names=["anomaly", "normal"], pixel=PIXEL)(
        [_mask_output(labels), np.array([[0.9, 0.1]], dtype=np.float32)], (48, 64)
    )
    assert [(a.name, a.pixel_anomaly.total_percentage_area) for a in verdict.anomalies] == [
        ("background", 0.0),
        ("dent", 1.0),
    ], "LFV always lists background first; absent classes are not listed"


def test_raw_image_shape_user_colours_and_recall_bias() -> None:
    labels = np.zeros((12, 16), dtype=np.uint8)
    output = _mask_output(labels)
    output[0, 1, :2, :2] = 0.75  # scratch just below background (0.8) in a 2×2 corner
    post = _post(
        {**SEG, "raw_image_shape": [24, 32], "seg_recall_bias": 0.1},
        names=["anomaly", "normal"],
        pixel=PIXEL,
        colors={"scratch": "#7ed321"},
    )
    verdict = post([output, np.array([[0.9, 0.1]], dtype=np.float32)], (480, 640))
    assert verdict.mask is not None
    assert verdict.mask.shape == (24, 32), "resized to raw_image_shape (H, W)"
    assert verdict.anomalies[1].name == "scratch", (
        "the bias (+0.1 on non-normal channels) flips the corner"
    )
    assert verdict.anomalies[1].pixel_anomaly.color == "#7ED321", "user colours win, upper-cased"
    assert verdict.anomalies[1].pixel_anomaly.total_percentage_area == pytest.approx(16 / 768), (
        "4×4 of 24×32"
    )
    with pytest.raises(ConfigError, match=r"colors\.dent"):
        _post(SEG, names=["anomaly", "normal"], pixel=PIXEL, colors={"dent": "blue"})


def test_segmentation_only_score_is_the_mean_of_the_mask_output() -> None:
    labels = np.zeros((12, 16), dtype=np.uint8)
    output = _mask_output(labels)
    post = _post({**SEG, "classification_head_enabled": False, "threshold": 0.2}, pixel=PIXEL)
    verdict = post([output], (48, 64))
    assert verdict.score == pytest.approx(float(np.mean(output))), "LFV: score = mean(mask)"


@pytest.mark.parametrize(
    ("logic", "cls_prob", "has_defect_pixels", "anomalous"),
    [
        ("cls_head", 0.9, False, True),
        ("seg_head", 0.9, False, False),
        ("seg_head", 0.1, True, True),
        ("cls_and_seg", 0.9, False, False),
        ("cls_and_seg", 0.9, True, True),
        ("cls_or_seg", 0.1, True, True),
        ("cls_or_seg", 0.1, False, False),
    ],
)
def test_classification_logic_lets_the_mask_override(
    logic: str, cls_prob: float, has_defect_pixels: bool, anomalous: bool
) -> None:
    labels = np.zeros((12, 16), dtype=np.uint8)
    if has_defect_pixels:
        labels[4, 4] = 1
    post = _post({**SEG, "classification_logic": logic}, names=["anomaly", "normal"], pixel=PIXEL)
    verdict = post(
        [_mask_output(labels), np.array([[cls_prob, 1 - cls_prob]], dtype=np.float32)], (48, 64)
    )
    assert verdict.is_anomalous is anomalous, (
        f"{logic}: cls {cls_prob}, defect pixels {has_defect_pixels}"
    )
    assert verdict.confidence == pytest.approx(lfv_confidence(verdict.score, anomalous)), (
        "confidence follows the final label"
    )


def _reference(
    stage: dict[str, Any], outputs: list[np.ndarray], image_hw: tuple[int, int]
) -> tuple[bool, float, np.ndarray]:
    """A straightforward re-statement of LFV's rules (docs/model-packages.md §7), for parity."""
    mask, score_out = outputs
    score = float(
        np.sum(
            np.take(
                score_out,
                [i for i in range(score_out.shape[1]) if i not in stage["class_normal_ids"]],
                axis=1,
            ),
            axis=1,
        )[0]
    )
    mask = copy.deepcopy(mask)
    for i in range(mask.shape[1]):
        if i not in stage["seg_normal_ids"]:
            mask[0][i] += stage["seg_recall_bias"]
    labels = np.argmax(mask.squeeze(0), axis=0)
    labels = cv2.resize(
        labels.astype(np.uint8), (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST
    )
    label = "normal" if round(score, 4) < round(stage["threshold"], 4) else "anomaly"
    clipped = min(max(score, 0.0), 1.0)
    return label == "anomaly", clipped if label == "anomaly" else 1 - clipped, labels


def test_random_outputs_match_a_straightforward_reference() -> None:
    rng = np.random.default_rng(3)
    stage = {**STAGE, **SEG, "seg_recall_bias": 0.05, "threshold": 0.45}
    post = _post(stage, names=["anomaly", "normal"], pixel=PIXEL)
    for _ in range(50):
        logits = rng.standard_normal((1, 3, 12, 16)).astype(np.float32)
        mask = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        p = np.float32(rng.random())
        outputs = [mask.astype(np.float32), np.array([[p, 1 - p]], dtype=np.float32)]
        verdict = post(outputs, (37, 53))
        anomalous, confidence, labels = _reference(stage, outputs, (37, 53))
        assert verdict.is_anomalous is anomalous, "verdict matches the reference"
        assert verdict.confidence == confidence, "confidence matches exactly"
        assert verdict.mask is not None
        assert np.array_equal(verdict.mask, labels), "mask matches exactly"
