"""manifest.json validation: every error names the JSON path and what was expected."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from lfv_edge.errors import ModelPackageError, UnsupportedModelError
from lfv_edge.model.manifest import INTER_AREA, decode_manifest, parse_manifest

# The classification manifest published in the YY-BLOG article (docs/model-packages.md §4).
REAL_MANIFEST: dict[str, Any] = {
    "model_graph": {
        "model_graph_type": "single_stage_model_graph",
        "stages": [
            {
                "type": "mochi",
                "class_normal_ids": [1],
                "seg_normal_ids": [],
                "classification_head_enabled": True,
                "segmentation_head_enabled": False,
                "threshold": 0.7021560668945312,
                "normalize": True,
                "image_range_scale": True,
                "image_width": 1000,
                "image_height": 1000,
                "input_shape": [1, 3, 1000, 1000],
            }
        ],
        "image_level_classes": {"names": ["anomaly", "normal"], "normal_ids": [1]},
        "pixel_level_classes": {"names": [], "normal_ids": []},
    },
    "compilable_models": [
        {
            "filename": "mochi.pt",
            "data_input_config": {"input": [1, 3, 1000, 1000]},
            "framework": "PYTORCH",
        }
    ],
    "dataset": {"image_width": 1000, "image_height": 1000},
}


def _with(path: list[Any], value: Any, *, delete: bool = False) -> dict[str, Any]:
    manifest = copy.deepcopy(REAL_MANIFEST)
    target: Any = manifest
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return manifest


def test_the_published_lfv_manifest_parses() -> None:
    manifest = parse_manifest(REAL_MANIFEST)
    stage = manifest.stage
    assert stage.threshold == pytest.approx(0.7021560668945312), "threshold from stage 0"
    assert stage.input_shape == (1, 3, 1000, 1000), "NCHW input"
    assert stage.class_normal_ids == (1,), "normal class ids"
    assert stage.interpolation == INTER_AREA, "INTER_AREA unless the stage says otherwise"
    assert manifest.image_classes.names == ("anomaly", "normal"), "class names"
    assert manifest.unknown_keys == (), "every key of the real manifest is known"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_with(["model_graph"], None, delete=True), r"model_graph: required key is missing"),
        (
            _with(["model_graph", "stages", 0, "threshold"], "0.5"),
            r"model_graph\.stages\[0\]\.threshold: expected a finite number, got \"0\.5\"",
        ),
        (
            _with(["model_graph", "stages", 0, "normalize"], None, delete=True),
            r"model_graph\.stages\[0\]\.normalize: required key is missing",
        ),
        (
            _with(["model_graph", "stages", 0, "image_width"], 0),
            r"stages\[0\]\.image_width: expected an integer between 1 and",
        ),
        (
            _with(["model_graph", "stages", 0, "input_shape"], [1, 3, 224, 224]),
            r"stages\[0\]\.input_shape: expected \[1, 3, 1000, 1000\]",
        ),
        (
            _with(["model_graph", "stages", 0, "class_normal_ids"], [1, "x"]),
            r"class_normal_ids\[1\]: expected a non-negative integer",
        ),
        (
            _with(["model_graph", "image_level_classes", "normal_ids"], [5]),
            r"image_level_classes\.normal_ids\[0\]: expected an index into names",
        ),
        (_with(["model_graph", "stages"], []), r"model_graph\.stages: expected a non-empty list"),
        (
            _with(["model_graph", "stages", 0, "segmentation_head_enabled"], True),
            r"pixel_level_classes\.names: required when segmentation_head_enabled",
        ),
        (
            _with(["model_graph", "stages", 0, "interpolation"], "INTER_MAGIC"),
            r"stages\[0\]\.interpolation: expected one of",
        ),
        (
            _with(["model_graph", "stages", 0, "classification_logic"], "vote"),
            r"stages\[0\]\.classification_logic: expected one of",
        ),
        (
            _with(["model_graph", "stages", 0, "calibrated"], True),
            r"stages\[0\]\.max_val_score: required key is missing",
        ),
    ],
)
def test_invalid_manifests_name_the_json_path(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelPackageError, match=message):
        parse_manifest(manifest)


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        (
            _with(["model_graph", "model_graph_type"], "two_stage_model_graph"),
            "two_stage_model_graph",
        ),
        (_with(["model_graph", "stages", 0, "type"], "mooncake"), "mooncake"),
        (_with(["model_graph", "stages", 0, "type"], "pavlova"), "pavlova"),
        (_with(["runtime"], "onnx"), "onnx"),
        (
            _with(["model_graph", "stages", 0, "transform_preprocessing"], {"type": "polar"}),
            "polar",
        ),
    ],
)
def test_unsupported_types_are_refused_by_name(manifest: dict[str, Any], named: str) -> None:
    with pytest.raises(UnsupportedModelError, match=named):
        parse_manifest(manifest)


def test_optional_stage_keys_are_typed() -> None:
    manifest = parse_manifest(
        _with(
            ["model_graph", "stages", 0],
            {
                **REAL_MANIFEST["model_graph"]["stages"][0],
                "interpolation": "linear",
                "raw_image_shape": [480, 640, 3],
                "seg_recall_bias": 0.25,
                "classification_logic": "cls_or_seg",
                "calibrated": True,
                "max_val_score": 2.0,
                "calibrator_scaling": -3.0,
                "calibrator_shift": 1.0,
                "some_future_key": 1,
            },
        )
    )
    stage = manifest.stage
    assert stage.interpolation == 1, "names map to OpenCV flags"
    assert stage.raw_image_shape == (480, 640), "raw_image_shape is (height, width)"
    assert stage.seg_recall_bias == 0.25, "bias is a number"
    assert stage.classification_logic == "cls_or_seg", "logic kept"
    assert stage.calibration is not None, "calibration read"
    assert stage.calibration.scaling == -3.0, "scaling read"
    assert manifest.unknown_keys == ("model_graph.stages[0].some_future_key",), (
        "unknown keys are reported, not fatal"
    )


def test_sizes_fall_back_to_the_dataset_section() -> None:
    manifest = _with(["model_graph", "stages", 0, "image_width"], None, delete=True)
    del manifest["model_graph"]["stages"][0]["input_shape"]
    manifest["dataset"]["image_width"] = 800
    assert parse_manifest(manifest).stage.image_width == 800, "dataset.image_width is used"


def test_bytes_that_are_not_json_report_line_and_column() -> None:
    with pytest.raises(ModelPackageError, match="line 1 column"):
        decode_manifest(b"{broken")
    assert parse_manifest(json.loads(json.dumps(REAL_MANIFEST))).stage.type == "mochi", "round trip"
