"""LFV pre-processing, exactly: image → `[1, 3, H, W]` float32 input tensor. One of two cv2 users.

The rule (lfv-model-package.md §6, from AWS's own LFV processing code):

1. `cv2.resize` to (image_width, image_height) with `INTER_AREA` (or the stage's
   `interpolation`), applied to the image as it is (gray, RGB or RGBA);
2. grayscale → RGB, RGBA → RGB; OpenCV-decoded images are BGR and become RGB;
3. NCHW float32; `/ 255` if `image_range_scale`; `(x − mean) / std` with ImageNet
   mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) if `normalize`.

Resizing acts on each channel independently, so converting colours after the resize gives
the same numbers as before it. We fuse steps 2–3 into one pass per channel plane:
`x · (1 / (255 · std)) − mean / std` computed in float32 straight from the uint8 pixels, with
the channel swap done by extracting the planes in reverse order, into reused buffers — no
float64 temporaries and no per-frame allocation. Outputs equal the
float64 textbook computation within 1e-5 (tests/test_preprocess_parity.py).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import InputError
from lfv_edge.imaging import IMAGE_UNREADABLE
from lfv_edge.manifest import StageConfig

ChannelOrder = Literal["rgb", "bgr"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessor:
    """Builds input tensors for one stage; keeps its resize buffer between calls.

    Not thread-safe: use one per thread (the service's pre-processing thread owns one).
    """

    def __init__(self, stage: StageConfig) -> None:
        self.width = stage.image_width
        self.height = stage.image_height
        self.interpolation = stage.interpolation
        scale = np.ones(3, dtype=np.float64)
        offset = np.zeros(3, dtype=np.float64)
        if stage.image_range_scale:
            scale /= 255.0
        if stage.normalize:
            mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
            offset = -mean / std
            scale = scale / std
        self._scale = [float(value) for value in scale]
        self._offset = [float(value) for value in offset]
        self._resized: NDArray[np.uint8] | None = None
        self._plane = np.empty((self.height, self.width), dtype=np.uint8)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The tensor shape produced: `(1, 3, height, width)`."""
        return (1, 3, self.height, self.width)

    def new_tensor(self) -> NDArray[np.float32]:
        """A fresh output buffer for `__call__(..., out=...)`."""
        return np.empty(self.input_shape, dtype=np.float32)

    def _resize(self, image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        if image.shape[:2] == (self.height, self.width):
            return image
        target = (self.height, self.width, *image.shape[2:])
        if self._resized is None or self._resized.shape != target:
            self._resized = np.empty(target, dtype=np.uint8)
        cv2.resize(
            image, (self.width, self.height), dst=self._resized, interpolation=self.interpolation
        )
        return self._resized

    def __call__(
        self,
        image: NDArray[np.uint8],
        order: ChannelOrder,
        out: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float32]:
        """Turn an H×W (gray), H×W×1, H×W×3 or H×W×4 uint8 image into the input tensor.

        Args:
            image: pixels; `order` says whether the colour channels are RGB(A) or BGR(A).
            order: `rgb` or `bgr` (images decoded by OpenCV are `bgr`).
            out: a `(1, 3, H, W)` float32 buffer to fill (e.g. from `new_tensor`).

        Raises:
            InputError: the array is not a uint8 image.
        """
        if (
            image.dtype != np.uint8
            or image.ndim not in {2, 3}
            or (image.ndim == 3 and image.shape[2] not in {1, 3, 4})
        ):
            msg = f"expected a uint8 H×W, H×W×1, H×W×3 or H×W×4 image, got {image.dtype}{list(image.shape)}"
            raise InputError(IMAGE_UNREADABLE, msg)
        tensor = out if out is not None else self.new_tensor()
        resized = self._resize(np.ascontiguousarray(image))
        gray = resized.ndim == 2 or resized.shape[2] == 1
        for channel in range(3):  # output planes in R, G, B order
            if gray:
                plane = resized.reshape(self.height, self.width)
            else:
                source = 2 - channel if order == "bgr" else channel  # alpha (3) is never read
                cv2.extractChannel(resized, source, dst=self._plane)
                plane = self._plane
            # One SIMD pass: plane · scale + offset as float32 into the tensor's plane (OpenCV
            # has no single-input affine-to-float, so the second input is weighted 0).
            cv2.addWeighted(
                plane,
                self._scale[channel],
                plane,
                0.0,
                self._offset[channel],
                dst=tensor[0, channel],
                dtype=cv2.CV_32F,
            )
        return tensor
