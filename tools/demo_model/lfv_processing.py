"""LFV pre- and post-processing for the demo-model tools (docs/model-packages.md §6, §7).

A faithful, dependency-light copy of the rules, so training (in the torch venv, which does not
install lfv_edge's runtime dependencies) sees exactly the tensors the edge sees:

* pre:  RGB uint8 → `cv2.resize(..., (W, H), INTER_AREA)` → NCHW float32 → `/ 255` →
        `(x − mean) / std` with ImageNet mean/std, all in float32.
* post: score = sum of the class probabilities outside `normal_ids`; anomalous iff
        `round(score, 4) >= round(threshold, 4)`; confidence = score or 1 − score;
        mask = argmax over channels, resized nearest-neighbour to the raw image size.

lfv_edge's own `preprocess.Preprocessor` computes the same numbers as `x · 1/(255·std) −
mean/std` (equal within 1e-5); evaluate.py uses it when it is importable.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2  # noqa: TID251 - build-time tool; the resize must be OpenCV's INTER_AREA, as on the edge
import numpy as np
from numpy.typing import NDArray

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resize_rgb(image_rgb: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """Step 2 of LFV pre-processing: INTER_AREA resize of the uint8 RGB image."""
    if image_rgb.shape[:2] == (height, width):
        return image_rgb
    return np.asarray(
        cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )


def normalise_nhwc(resized: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Steps 3–5 on a batch `(N, H, W, 3)` of resized RGB images → `(N, 3, H, W)` float32."""
    x = resized.astype(np.float32).transpose(0, 3, 1, 2)
    x = x / np.float32(255.0)
    x = (x - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def to_input_tensor(image_rgb: NDArray[np.uint8], width: int, height: int) -> NDArray[np.float32]:
    """The whole LFV pre-processing for one RGB uint8 image → `(1, 3, height, width)`."""
    return normalise_nhwc(resize_rgb(image_rgb, width, height)[None])


@dataclass(frozen=True, slots=True)
class Verdict:
    """What LFV reports for one image (mochi stage, both heads)."""

    is_anomalous: bool
    confidence: float
    score: float
    mask: NDArray[np.uint8]  # (raw H, raw W) label indices


def to_verdict(
    mask_probs: NDArray[np.float32],
    class_probs: NDArray[np.float32],
    *,
    normal_ids: tuple[int, ...],
    threshold: float,
    raw_shape: tuple[int, int],
) -> Verdict:
    """LFV post-processing of the mochi outputs `(mask [1,Cp,H,W], score [1,C])`."""
    probs = class_probs.reshape(-1).astype(np.float64)
    score = float(sum(p for i, p in enumerate(probs) if i not in normal_ids))
    is_anomalous = round(score, 4) >= round(threshold, 4)
    clipped = min(max(score, 0.0), 1.0)
    confidence = clipped if is_anomalous else 1.0 - clipped
    index_mask = np.argmax(mask_probs[0], axis=0).astype(np.uint8)
    height, width = raw_shape
    if index_mask.shape != (height, width):
        index_mask = np.asarray(
            cv2.resize(index_mask, (width, height), interpolation=cv2.INTER_NEAREST),
            dtype=np.uint8,
        )
    return Verdict(is_anomalous=is_anomalous, confidence=confidence, score=score, mask=index_mask)
