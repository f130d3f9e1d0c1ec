"""Test images: write RGB arrays to files, make simple synthetic images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image (PNG unless the suffix says otherwise)."""
    ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok, f"could not write {path}"
    return path


def solid_rgb(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """An image of one colour."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = rgb
    return image
