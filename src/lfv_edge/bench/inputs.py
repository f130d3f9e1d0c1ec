"""What the benchmarks feed: photo-like JPEGs, model-size frames, request payloads, packages."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import cv2  # noqa: TID251 - the benchmark encodes its own test images
import numpy as np
from numpy.typing import NDArray

from lfv_edge.demo.embedded import EMBEDDED_PACKAGE
from lfv_edge.demo.synthetic_line import generate_sample
from lfv_edge.model.cpu_runtime import require_cpu_runtime
from lfv_edge.modelbuild.package import NetworkChoice, PackageSpec, Target, build_lfv_package

JPEG_QUALITY = 90
FULL_HD = (1080, 1920)  # (height, width): the camera frame of docs/performance.md


def photo_rgb(size: tuple[int, int], seed: int = 11) -> NDArray[np.uint8]:
    """A photo-like production-line image (textured metal, a scratch, camera noise), RGB."""
    return generate_sample(seed=seed, surface="metal", defect="scratch", size=size).image_rgb


def encode_jpeg(rgb: NDArray[np.uint8], quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB image at `quality`."""
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        msg = "OpenCV could not encode the benchmark JPEG"
        raise RuntimeError(msg)
    return bytes(data.tobytes())


@dataclass(frozen=True, slots=True)
class RequestKind:
    """One kind of request: a name, how it is sent, and the payload builder's inputs."""

    name: str
    description: str
    body: str  # JSON text without RequestId: `{"ContentType": …, "Body": …}` or `{"Frame": …}`

    def payload(self, request_id: str) -> bytes:
        """The request with its id, as published."""
        return ('{"RequestId":"' + request_id + '",' + self.body[1:]).encode()


def jpeg_request(name: str, description: str, jpeg: bytes) -> RequestKind:
    """A DetectAnomalies-style `Body` request."""
    body = json.dumps(
        {"ContentType": "image/jpeg", "Body": base64.b64encode(jpeg).decode()},
        separators=(",", ":"),
    )
    return RequestKind(name, description, body)


def frame_request(name: str, description: str, rgb: NDArray[np.uint8]) -> RequestKind:
    """A raw `Frame` request (rgb8)."""
    height, width = rgb.shape[:2]
    body = json.dumps(
        {
            "Frame": {
                "Width": width,
                "Height": height,
                "Encoding": "rgb8",
                "Data": base64.b64encode(np.ascontiguousarray(rgb).tobytes()).decode(),
            }
        },
        separators=(",", ":"),
    )
    return RequestKind(name, description, body)


def build_package(
    folder: Path,
    network: NetworkChoice,
    size: int,
    *,
    mask: bool = False,
    target: Target = "cpu",
    libdlr: Path | None = None,
) -> Path:
    """A builder package (`network` at `size`×`size`), built once into `folder`.

    `target="cuda"` builds the GPU package (nvcc) with `libdlr` (a CUDA build) in its stage;
    a CPU package carries the installed CPU runtime.
    """
    dest = folder / f"{network}-{size}{'-seg' if mask else ''}{'-gpu' if target == 'cuda' else ''}"
    if (dest / "manifest.json").is_file():
        return dest
    spec = PackageSpec(
        image_width=size,
        image_height=size,
        network=network,
        segmentation_head=mask,
        classification_head=True,
        target=target,
        meta_device="gpu" if target == "cuda" else "cpu",
    )
    runtime = libdlr if target == "cuda" else require_cpu_runtime().library
    build_lfv_package(dest, spec, libdlr=runtime)
    return dest


def demo_package(root: Path) -> Path | None:
    """The committed demo package of a source tree, if this tree has it."""
    candidate = root / EMBEDDED_PACKAGE
    return candidate if candidate.is_file() else None


def source_tree() -> Path:
    """The repository root this package runs from (src/lfv_edge/bench → three levels up)."""
    return Path(__file__).resolve().parents[3]
