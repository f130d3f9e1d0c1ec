"""P1: pre-processing of a 1080p JPEG for a 1000×1000 package, ours vs the reference and the floor.

The reference is what the LFV article and most scripts do (docs/performance.md), written out here
in its plainest form: decode → BGR→RGB → INTER_AREA resize → float64 `/255` → per-channel
`(x − mean) / std` → transpose → batch axis. Ours is what the service runs: `decode_image`
(header checks included) and the package's `Preprocessor` into a reused tensor. The floor is
the work no implementation can skip: one INTER_AREA resize of the decoded image and one
write of the 12 MB float32 tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2  # noqa: TID251 - the reference is the plain OpenCV code users write
import numpy as np
from numpy.typing import NDArray

from lfv_edge.bench.inputs import FULL_HD, encode_jpeg, photo_rgb
from lfv_edge.bench.timing import Summary, interleaved_ms, paired_ratio, summarize
from lfv_edge.inspection.imaging import decode_image
from lfv_edge.inspection.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from lfv_edge.model.manifest import StageConfig, parse_manifest

MODEL_SIDE = 1000
TARGET_AFTER_DECODE = 4.0
TARGET_FROM_BYTES = 2.5
TARGET_VS_FLOOR = 1.3
TOLERANCE = 1e-5

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float64)
_STD = np.array(IMAGENET_STD, dtype=np.float64)


def stage_config(side: int = MODEL_SIDE) -> StageConfig:
    """A `mochi` stage with `image_range_scale` and `normalize` on, `side`×`side`."""
    stage = {
        "type": "mochi",
        "threshold": 0.5,
        "image_width": side,
        "image_height": side,
        "normalize": True,
        "image_range_scale": True,
        "classification_head_enabled": True,
        "segmentation_head_enabled": False,
        "class_normal_ids": [1],
    }
    graph = {"model_graph_type": "single_stage_model_graph", "stages": [stage]}
    return parse_manifest({"model_graph": graph}).stage


def reference_from_bgr(bgr: NDArray[np.uint8], side: int = MODEL_SIDE) -> NDArray[np.float64]:
    """The straightforward pre-processing, from OpenCV's decoded BGR array."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    scaled = resized.astype(np.float64) / 255.0
    normalized = (scaled - _MEAN) / _STD
    tensor: NDArray[np.float64] = normalized.transpose(2, 0, 1)[np.newaxis]
    return tensor


def reference_from_bytes(data: bytes, side: int = MODEL_SIDE) -> NDArray[np.float64]:
    """The same, from the encoded bytes."""
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        msg = "OpenCV could not decode the benchmark JPEG"
        raise ValueError(msg)
    return reference_from_bgr(np.asarray(decoded, dtype=np.uint8), side)


@dataclass(frozen=True, slots=True)
class PreprocessingFigures:
    """P1's times (ms) and ratios."""

    times_ms: dict[str, Summary]
    after_decode: Summary  # reference / ours, both from the decoded array
    from_bytes: Summary  # reference / ours, both from the JPEG bytes
    vs_floor: Summary  # ours / floor (after decode)
    max_abs_diff: float
    jpeg_bytes: int
    opencv_threads: int
    repetitions: int

    def to_dict(self) -> dict[str, object]:
        return {
            "input": f"{FULL_HD[1]}x{FULL_HD[0]} photo-like JPEG q90 ({self.jpeg_bytes} bytes)",
            "target_tensor": f"[1, 3, {MODEL_SIDE}, {MODEL_SIDE}] float32, range scale + normalize",
            "opencv_threads": self.opencv_threads,
            "repetitions": self.repetitions,
            "times_ms": {name: s.to_dict() for name, s in self.times_ms.items()},
            "after_decode_speedup": self.after_decode.to_dict(3),
            "from_bytes_speedup": self.from_bytes.to_dict(3),
            "ours_vs_floor": self.vs_floor.to_dict(3),
            "max_abs_diff": float(f"{self.max_abs_diff:.3g}"),
            "targets": {
                "after_decode_speedup_min": TARGET_AFTER_DECODE,
                "from_bytes_speedup_min": TARGET_FROM_BYTES,
                "ours_vs_floor_max": TARGET_VS_FLOOR,
                "max_abs_diff_max": TOLERANCE,
            },
            "met": {
                "after_decode": self.after_decode.median >= TARGET_AFTER_DECODE,
                "from_bytes": self.from_bytes.median >= TARGET_FROM_BYTES,
                "vs_floor": self.vs_floor.median <= TARGET_VS_FLOOR,
                "parity": self.max_abs_diff <= TOLERANCE,
            },
        }


def measure_preprocessing(*, repetitions: int, warmup: int) -> PreprocessingFigures:
    """Run the five P1 cases interleaved in this process."""
    jpeg = encode_jpeg(photo_rgb(FULL_HD))
    bgr = decode_image(jpeg)
    preprocessor = Preprocessor(stage_config())
    tensor = preprocessor.new_tensor()
    resized = np.empty((MODEL_SIDE, MODEL_SIDE, 3), dtype=np.uint8)
    floor_tensor = preprocessor.new_tensor()

    def floor() -> None:
        cv2.resize(bgr, (MODEL_SIDE, MODEL_SIDE), dst=resized, interpolation=cv2.INTER_AREA)
        floor_tensor.fill(0.0)

    cases: dict[str, Callable[[], object]] = {
        "reference_after_decode": lambda: reference_from_bgr(bgr),
        "ours_after_decode": lambda: preprocessor(bgr, "bgr", tensor),
        "floor_resize_plus_write": floor,
        "reference_from_bytes": lambda: reference_from_bytes(jpeg),
        "ours_from_bytes": lambda: preprocessor(decode_image(jpeg), "bgr", tensor),
        "decode_only": lambda: decode_image(jpeg),
    }
    samples = interleaved_ms(cases, repetitions=repetitions, warmup=warmup)
    ours = preprocessor(decode_image(jpeg), "bgr", tensor)
    max_abs_diff = float(np.max(np.abs(reference_from_bytes(jpeg) - ours)))
    return PreprocessingFigures(
        times_ms={name: summarize(values) for name, values in samples.items()},
        after_decode=paired_ratio(samples["reference_after_decode"], samples["ours_after_decode"]),
        from_bytes=paired_ratio(samples["reference_from_bytes"], samples["ours_from_bytes"]),
        vs_floor=paired_ratio(samples["ours_after_decode"], samples["floor_resize_plus_write"]),
        max_abs_diff=max_abs_diff,
        jpeg_bytes=len(jpeg),
        opencv_threads=cv2.getNumThreads(),
        repetitions=repetitions,
    )
