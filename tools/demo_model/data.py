"""Generate a split of the synthetic line once and cache it as model-sized arrays (never in git).

Each cached image is the raw sample after LFV's INTER_AREA resize (step 2 of the pre-
processing), still uint8: `lfv_processing.normalise_nhwc` turns a batch of them into exactly
the tensors the edge would build. Masks are resized nearest-neighbour for the training loss;
evaluation always scores the model against the full-size masks (evaluate.py).
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2  # noqa: TID251 - build-time tool: masks are resized exactly as LFV resizes them
import numpy as np
from lfv_processing import resize_rgb
from numpy.typing import NDArray

from lfv_edge.demo.synthetic_line import DEFECTS, LABEL_NAMES, SURFACES, generate_sample, plan_dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Split:
    """A cached split: resized images and masks plus per-image labels."""

    images: NDArray[np.uint8]  # (N, H, W, 3) RGB, INTER_AREA-resized
    masks: NDArray[np.uint8]  # (N, H, W) label indices, nearest-resized
    anomalous: NDArray[np.bool_]  # (N,)
    defect: NDArray[np.int64]  # (N,) index into LABEL_NAMES, 0 for normal
    surface: NDArray[np.int64]  # (N,) index into SURFACES


def _render(
    job: tuple[list[tuple[int, str, str | None]], tuple[int, int], tuple[int, int]],
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    specs, size, (height, width) = job
    cv2.setNumThreads(1)
    images = np.empty((len(specs), height, width, 3), dtype=np.uint8)
    masks = np.empty((len(specs), height, width), dtype=np.uint8)
    for i, (seed, surface, defect) in enumerate(specs):
        sample = generate_sample(seed, surface, defect, size)
        images[i] = resize_rgb(sample.image_rgb, width, height)
        masks[i] = cv2.resize(sample.mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return images, masks


def load_split(
    split: str,
    n: int,
    *,
    seed: int,
    size: tuple[int, int],
    input_size: tuple[int, int],
    cache_dir: Path,
    workers: int = 2,
) -> Split:
    """The first `n` samples of `split`, generated once (in `workers` processes) and cached."""
    key = f"{split}-n{n}-seed{seed}-{size[0]}x{size[1]}-to{input_size[0]}x{input_size[1]}.npz"
    path = cache_dir / key
    plan = plan_dataset(n, seed, split)
    if not path.is_file():
        logger.info("generating %d %s samples into %s", n, split, path)
        specs = [(spec.seed, spec.surface, spec.defect) for spec in plan]
        chunk = 64
        jobs = [(specs[i : i + chunk], size, input_size) for i in range(0, n, chunk)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_render, jobs))
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(
            partial,
            images=np.concatenate([p[0] for p in parts]),
            masks=np.concatenate([p[1] for p in parts]),
        )
        partial.replace(path)
    with np.load(path) as arrays:
        images, masks = arrays["images"], arrays["masks"]
    defect = np.array(
        [0 if s.defect is None else LABEL_NAMES.index(s.defect) for s in plan], dtype=np.int64
    )
    return Split(
        images=images,
        masks=masks,
        anomalous=defect > 0,
        defect=defect,
        surface=np.array([SURFACES.index(s.surface) for s in plan], dtype=np.int64),
    )


__all__ = ["DEFECTS", "Split", "load_split"]
