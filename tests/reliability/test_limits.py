"""Every resource limit refuses with its documented code, through a running service.

Each request breaks one limit; the service answers each with the limit's code and then still
serves a good request. (Zip limits: tests/model/test_archive.py; the queue bound: tests/service/test_service.py.)
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from lfv_edge.inspection.imaging import SizeLimits
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.transports.memory import MemoryTransport
from tests.conftest import PackageFactory

MAX_PAYLOAD = 4 << 20


def _png(height: int, width: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))
    assert ok, "PNG encoding works"
    return data.tobytes()


def _webp_vp8x(width: int, height: int) -> bytes:
    chunk = b"\x08\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + chunk + bytes(40)


def _tiff(width: int, height: int) -> bytes:
    entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + bytes(40)


def _png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR" + struct.pack(">II", width, height) + bytes(45)


def _body(request_id: str, image: bytes) -> bytes:
    return json.dumps({"RequestId": request_id, "Body": base64.b64encode(image).decode()}).encode()


def _frame(request_id: str, width: int, height: int) -> bytes:
    data = base64.b64encode(bytes(width * height * 3)).decode()
    frame = {"Width": width, "Height": height, "Encoding": "rgb8", "Data": data}
    return json.dumps({"RequestId": request_id, "Frame": frame}).encode()


CASES = [
    ("payload over limits.maxPayloadBytes", _body("p", bytes(MAX_PAYLOAD)), "PayloadTooLarge"),
    ("honest PNG 4097 px wide", _body("w", _png(64, 4097)), "ImageTooLarge"),
    ("honest PNG 63 px high", _body("h", _png(63, 64)), "ImageTooSmall"),
    ("PNG header claiming 60000²", _body("b1", _png_header(60000, 60000)), "ImageTooLarge"),
    ("WebP header claiming 16384²", _body("b2", _webp_vp8x(16384, 16384)), "ImageTooLarge"),
    ("TIFF header claiming 100000 × 64", _body("b3", _tiff(100_000, 64)), "ImageTooLarge"),
    ("raw frame 4097 × 64", _frame("f1", 4097, 64), "ImageTooLarge"),
    ("raw frame 64 × 32", _frame("f2", 64, 32), "ImageTooSmall"),
    ("JSON nested 10,000 deep", b'{"RequestId": "n", "Metadata": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "BadRequest"),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(make_package: PackageFactory) -> Iterator[tuple[Service, MemoryTransport]]:
    inspector = Inspector.load(
        read_model_package(make_package(PackageSpec(image_width=64, image_height=64))),
        device="cpu",
        limits=SizeLimits(max_encoded_bytes=MAX_PAYLOAD),
    )
    transport = MemoryTransport()
    service = Service(
        inspector,
        [transport],
        settings=ServiceSettings(max_payload_bytes=MAX_PAYLOAD),
        queue_size=len(CASES) + 1,
        stats_interval_s=0,
    )
    service.start()
    yield service, transport
    service.stop(30)


def test_each_limit_refuses_with_its_code_and_the_service_keeps_serving(
    served: tuple[Service, MemoryTransport],
) -> None:
    service, transport = served
    # when one request per limit arrives, then a good one
    for _, payload, _ in CASES:
        transport.deliver(payload)
    transport.deliver(_body("good", _png(64, 64)))
    replies = [json.loads(p.payload) for p in transport.wait_for(len(CASES) + 1, timeout_s=30)]
    # then each is refused with its own code, carrying its RequestId
    by_id = {reply["RequestId"]: reply for reply in replies}
    for name, payload, code in CASES:
        request_id = payload.split(b'"RequestId": "', 1)[1].split(b'"', 1)[0].decode()
        assert request_id in by_id, f"{name}: answered with its RequestId"
        assert by_id[request_id]["Error"]["Code"] == code, f"{name}: {by_id[request_id]}"
    assert "DetectAnomalyResult" in by_id["good"], "and the next good request is served"
    assert service.fatal_reason is None, "nothing was fatal"
