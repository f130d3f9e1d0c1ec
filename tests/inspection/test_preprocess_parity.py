"""Pre-processing parity: our fused float32 path vs a straightforward float64 reference.

The reference is written here, separately, in the plainest form of LFV's rule
(docs/model-packages.md §6): convert to RGB, cv2.resize, gray/alpha → RGB, float64, /255,
ImageNet mean/std, NCHW.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from lfv_edge.errors import InputError
from lfv_edge.inspection.preprocess import Preprocessor
from lfv_edge.model.manifest import parse_manifest

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _stage(width: int, height: int, **extra: Any) -> Any:
    body = {
        "type": "mochi",
        "threshold": 0.5,
        "image_width": width,
        "image_height": height,
        "normalize": True,
        "image_range_scale": True,
        "classification_head_enabled": True,
        "segmentation_head_enabled": False,
        "class_normal_ids": [1],
        **extra,
    }
    return parse_manifest(
        {"model_graph": {"model_graph_type": "single_stage_model_graph", "stages": [body]}}
    ).stage


def reference(image: np.ndarray, order: str, stage: Any) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3 and order == "bgr":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4 and order == "bgr":
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    resized = cv2.resize(
        image, (stage.image_width, stage.image_height), interpolation=stage.interpolation
    )
    if resized.ndim == 2 or resized.shape[2] == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2RGB)
    if resized.shape[2] == 4:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGBA2RGB)
    x = resized.astype(np.float64)
    if stage.image_range_scale:
        x = x / 255.0
    if stage.normalize:
        x = (x - MEAN) / STD
    result: np.ndarray = x.transpose(2, 0, 1)[np.newaxis]
    return result


def _photo(height: int, width: int, channels: int | None, seed: int) -> np.ndarray:
    """A photo-like image: smooth gradients plus texture and noise (worst case for resizing)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 25, (height, width))
    planes = [np.clip(base + 30 * k, 0, 255) for k in range(channels or 1)]
    image = np.stack(planes, axis=-1).astype(np.uint8)
    return image if channels else image[:, :, 0]


CASES = [
    ("1080p BGR to 1000x1000", (1080, 1920, 3), "bgr", (1000, 1000), {}),
    ("RGB frame, non-square target", (480, 640, 3), "rgb", (320, 200), {}),
    ("upscaling", (70, 90, 3), "bgr", (224, 224), {}),
    ("grayscale HxW", (300, 400, None), "bgr", (128, 96), {}),
    ("grayscale HxWx1", (300, 400, 1), "rgb", (128, 96), {}),
    ("BGRA with alpha", (256, 256, 4), "bgr", (100, 120), {}),
    ("RGBA with alpha", (256, 256, 4), "rgb", (100, 120), {}),
    ("interpolation override", (500, 700, 3), "bgr", (224, 224), {"interpolation": "INTER_LINEAR"}),
    ("no normalisation", (200, 300, 3), "bgr", (64, 64), {"normalize": False}),
    (
        "no /255 either",
        (200, 300, 3),
        "bgr",
        (64, 64),
        {"normalize": False, "image_range_scale": False},
    ),
    ("already the right size", (224, 224, 3), "bgr", (224, 224), {}),
]


@pytest.mark.parametrize(
    ("name", "shape", "order", "target", "extra"), CASES, ids=[c[0] for c in CASES]
)
def test_fused_float32_matches_the_float64_reference(
    name: str,
    shape: tuple[int, int, int | None],
    order: str,
    target: tuple[int, int],
    extra: dict[str, Any],
) -> None:
    # given
    stage = _stage(*target, **extra)
    image = _photo(shape[0], shape[1], shape[2], seed=len(name))
    # when
    ours = Preprocessor(stage)(image, order)  # type: ignore[arg-type]
    expected = reference(image, order, stage)
    # then
    assert ours.dtype == np.float32, "float32 tensor"
    assert ours.shape == (1, 3, target[1], target[0]), "NCHW (1, 3, H, W)"
    scale = 255.0 if not stage.image_range_scale else 1.0
    difference = float(np.max(np.abs(ours.astype(np.float64) - expected))) / scale
    assert difference <= 1e-5, f"{name}: max abs difference {difference:.2e} > 1e-5"


def test_buffers_are_reused_and_results_do_not_leak_between_images() -> None:
    pre = Preprocessor(_stage(64, 48))
    out = pre.new_tensor()
    first = _photo(100, 120, 3, seed=1)
    second = _photo(90, 130, 3, seed=2)
    assert pre(first, "bgr", out) is out, "the given buffer is filled and returned"
    np.testing.assert_allclose(
        pre(second, "bgr", out), reference(second, "bgr", pre_stage := _stage(64, 48)), atol=1e-5
    )
    np.testing.assert_allclose(
        pre(first, "bgr"), reference(first, "bgr", pre_stage), atol=1e-5, err_msg="no state leaks"
    )


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros(5, np.uint8)],
)
def test_non_images_are_refused_with_a_code(bad: np.ndarray) -> None:
    with pytest.raises(InputError) as caught:
        Preprocessor(_stage(64, 64))(bad, "rgb")
    assert caught.value.code == "ImageUnreadable", "a coded input error"
