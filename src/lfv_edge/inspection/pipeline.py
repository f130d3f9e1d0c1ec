"""The inspection pipeline: image → pre-process → DLR → post-process → `Inspection`, each stage timed.

`Inspector.inspect(source)` runs everything in the calling thread. The service splits it in
three so that decoding and pre-processing of the next image overlap with inference of the
current one: `prepare` (any one thread at a time), `infer` (the model's owner thread),
`finish` (pure). No threads and no transports here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.inspection.imaging import SizeLimits, check_size, decode_image, read_image_file
from lfv_edge.inspection.postprocess import Postprocessor, Verdict
from lfv_edge.inspection.preprocess import ChannelOrder, Preprocessor
from lfv_edge.model.device import DeviceChoice, DeviceRequest, HostFacts, choose_device
from lfv_edge.model.package import ModelPackage
from lfv_edge.model.probe import probe_package
from lfv_edge.model.runner import DlrRunner, Runner, configure_threads

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file on disk (path checks against image roots happen before this)."""

    path: Path


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """Encoded image bytes (JPEG, PNG, BMP, GIF, WebP)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RawFrame:
    """Raw pixels from a camera: H×W×3 (or H×W×4, H×W) uint8 in `order`."""

    pixels: NDArray[np.uint8]
    order: ChannelOrder


ImageSource = ImageFile | EncodedImage | RawFrame


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds spent in each stage of one inspection."""

    decode_ms: float
    preprocess_ms: float
    run_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        """Sum of the stages."""
        return self.decode_ms + self.preprocess_ms + self.run_ms + self.postprocess_ms

    def to_dict(self) -> dict[str, float]:
        """Rounded to 0.01 ms, with the total."""
        return {
            "decode": round(self.decode_ms, 2),
            "preprocess": round(self.preprocess_ms, 2),
            "run": round(self.run_ms, 2),
            "postprocess": round(self.postprocess_ms, 2),
            "total": round(self.total_ms, 2),
        }


@dataclass(slots=True)
class Prepared:
    """An image turned into the model's input; `tensor` may be a reused buffer."""

    tensor: NDArray[np.float32]
    image_size: tuple[int, int]  # (height, width) of the original image
    decode_ms: float
    preprocess_ms: float
    pixels: NDArray[np.uint8] | None = None  # the decoded image, when asked to keep it
    order: ChannelOrder = "bgr"  # of `pixels`


@dataclass(frozen=True, slots=True)
class Inspection:
    """One finished inspection."""

    verdict: Verdict
    image_size: tuple[int, int]
    timings: Timings


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Inspector:
    """Pre-processing, the runner and post-processing of one model package."""

    def __init__(
        self,
        package: ModelPackage,
        runner: Runner,
        *,
        device: DeviceChoice,
        colors: Mapping[str, str] | None = None,
        threshold: float | None = None,
        limits: SizeLimits = SizeLimits(),  # noqa: B008 - frozen value
    ) -> None:
        self.package = package
        self.runner = runner
        self.model_arn = ""  # LFV's model ARN where configured (reported with each verdict)
        self.device = device
        self.limits = limits
        self.preprocessor = Preprocessor(package.manifest.stage)
        self.postprocessor = Postprocessor(
            package.manifest, package.outputs, colors=colors, threshold=threshold
        )

    @classmethod
    def load(
        cls,
        package: ModelPackage,
        *,
        device: DeviceRequest = "auto",
        threads: int | None = None,
        colors: Mapping[str, str] | None = None,
        threshold: float | None = None,
        limits: SizeLimits = SizeLimits(),  # noqa: B008 - frozen value
        facts: HostFacts | None = None,
        probe: bool = False,
    ) -> Inspector:
        """Choose the device, load the model into DLR and return a ready inspector.

        With `probe`, the model is first loaded and run once in a child process
        (probe.py), so a package that crashes DLR cannot take this process down.

        Raises:
            DeviceError: the device request cannot work (says why).
            ModelPackageError: DLR refused the model (with its real message), or crashed in
                the probe.
        """
        choice = choose_device(
            device,
            library=package.library,
            library_sha256=package.library_sha256,
            meta_device=package.stage.target_device,
            facts=facts or HostFacts.probe(),
        )
        logger.info("device %s (%s)", choice.device, choice.reason)
        if probe:
            probe_package(package.source, choice.device)
        configure_threads(threads)
        runner = DlrRunner.load(
            package.stage_dir,
            library=package.library.path,
            input_shape=package.stage.input_shape,
            device=choice.device,
        )
        return cls(
            package, runner, device=choice, colors=colors, threshold=threshold, limits=limits
        )

    def decode(self, source: ImageSource) -> tuple[NDArray[np.uint8], ChannelOrder]:
        """Pixels and channel order of a source, with LFV's size bounds checked."""
        if isinstance(source, ImageFile):
            return read_image_file(source.path, self.limits), "bgr"
        if isinstance(source, EncodedImage):
            return decode_image(source.data, self.limits), "bgr"
        height, width = source.pixels.shape[:2]
        check_size(width, height, self.limits, "frame")
        return source.pixels, source.order

    def prepare(
        self,
        source: ImageSource,
        out: NDArray[np.float32] | None = None,
        *,
        keep_pixels: bool = False,
        preprocessor: Preprocessor | None = None,
    ) -> Prepared:
        """Decode and pre-process.

        A `Preprocessor` keeps scratch buffers, so one is used by one thread at a time: callers
        preparing in parallel pass one each (`new_preprocessor()`); the default is the
        inspector's own. `keep_pixels`: keep the decoded image (thumbnails, kept images).
        """
        start = time.perf_counter()
        pixels, order = self.decode(source)
        decoded = time.perf_counter()
        tensor = (preprocessor or self.preprocessor)(pixels, order, out)
        return Prepared(
            tensor=tensor,
            image_size=(int(pixels.shape[0]), int(pixels.shape[1])),
            decode_ms=(decoded - start) * 1000.0,
            preprocess_ms=_elapsed_ms(decoded),
            pixels=pixels if keep_pixels else None,
            order=order,
        )

    def new_preprocessor(self) -> Preprocessor:
        """Another pre-processor for this model (one per thread that prepares)."""
        return Preprocessor(self.package.manifest.stage)

    def infer(self, prepared: Prepared) -> tuple[list[NDArray[np.float32]], float]:
        """Run the model; returns the outputs and the run time in ms."""
        start = time.perf_counter()
        outputs = self.runner.run(prepared.tensor)
        return outputs, _elapsed_ms(start)

    def finish(
        self, prepared: Prepared, outputs: list[NDArray[np.float32]], run_ms: float
    ) -> Inspection:
        """Post-process into the verdict."""
        start = time.perf_counter()
        verdict = self.postprocessor(outputs, prepared.image_size)
        timings = Timings(prepared.decode_ms, prepared.preprocess_ms, run_ms, _elapsed_ms(start))
        return Inspection(verdict=verdict, image_size=prepared.image_size, timings=timings)

    def inspect(self, source: ImageSource) -> Inspection:
        """All stages in the calling thread."""
        prepared = self.prepare(source)
        outputs, run_ms = self.infer(prepared)
        return self.finish(prepared, outputs, run_ms)
