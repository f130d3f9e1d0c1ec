"""Shared memory images in and masks out, with segments made the way a C client makes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from tests.agent.conftest import AgentFactory, defect_image, red_image

Segment = Callable[[int], str]


@pytest.fixture
def segment() -> Iterator[Segment]:
    """`segment(size)` → the name of a new POSIX segment, as shm_open(name, O_CREAT|O_RDWR) + ftruncate."""
    names: list[str] = []

    def create(size: int) -> str:
        name = f"/lfva-{uuid.uuid4().hex[:12]}"
        fd = os.open(f"/dev/shm{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        names.append(name)
        return name

    yield create
    for name in names:
        Path(f"/dev/shm{name}").unlink(missing_ok=True)


def _write(name: str, offset: int, data: bytes) -> None:
    fd = os.open(f"/dev/shm{name}", os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read(name: str, offset: int, size: int) -> bytes:
    fd = os.open(f"/dev/shm{name}", os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _shm_request(
    model: str,
    width: int,
    height: int,
    handle: pb2.SharedMemoryHandle,
    mask: pb2.AnomalyMaskParams | None = None,
) -> pb2.DetectAnomaliesRequest:
    request = pb2.DetectAnomaliesRequest(
        model_component=model,
        bitmap=pb2.Bitmap(width=width, height=height, shared_memory_handle=handle),
    )
    if mask is not None:
        request.anomaly_mask_params.CopyFrom(mask)
    return request


def test_image_from_shared_memory_gives_the_byte_data_verdict(
    agent: AgentFactory, classifier: Path, segment: Segment
) -> None:
    # given an image written at an unaligned offset of a client's segment
    stub = agent.stub(agent({"parts": classifier}, start=("parts",)))
    image = red_image(120, 160, 0.7)
    image[10:50, 20:90] = (30, 30, 30)
    offset = 4096 + 123  # mmap needs page alignment: the agent must handle any offset
    name = segment(offset + image.nbytes + 10)
    _write(name, offset, image.tobytes())
    handle = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=offset)
    # when
    from_shm = stub.DetectAnomalies(_shm_request("parts", 160, 120, handle))
    inline = stub.DetectAnomalies(
        pb2.DetectAnomaliesRequest(
            model_component="parts",
            bitmap=pb2.Bitmap(width=160, height=120, byte_data=image.tobytes()),
        )
    )
    # then
    assert from_shm.detect_anomaly_result == inline.detect_anomaly_result, (
        "shared memory and byte_data give the same result"
    )
    assert Path(f"/dev/shm{name}").exists(), "the agent never unlinks a client's segment"
    assert _read(name, offset, image.nbytes) == image.tobytes(), "nor changes the image"


def test_mask_written_into_client_shared_memory(
    agent: AgentFactory, segmenter: Path, segment: Segment
) -> None:
    # given a segmenter, an image in shared memory and room for the mask after it
    stub = agent.stub(agent({"seg": segmenter}, start=("seg",)))
    inspector = Inspector.load(read_model_package(segmenter), device="cpu")
    image = defect_image(96, 128)
    mask_offset = image.nbytes + 64
    name = segment(mask_offset + image.nbytes)
    _write(name, 0, image.tobytes())
    image_handle = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=0)
    mask_handle = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=mask_offset)
    # when
    response = stub.DetectAnomalies(
        _shm_request(
            "seg", 128, 96, image_handle, pb2.AnomalyMaskParams(shared_memory_handle=mask_handle)
        )
    )
    # then
    result = response.detect_anomaly_result
    mask = result.anomaly_mask
    assert mask.WhichOneof("data") == "shared_memory_handle", "the mask went to shared memory"
    assert (mask.width, mask.height) == (128, 96), "the mask has the image's size"
    assert mask.shared_memory_handle.name == name, "in the client's segment"
    assert mask.shared_memory_handle.offset == mask_offset, "at the requested offset"
    assert mask.shared_memory_handle.size == 128 * 96 * 3, "RGB888: width × height × 3 bytes"
    expected = inspector.inspect(RawFrame(image, "rgb")).verdict.mask_rgb()
    assert expected is not None
    written = np.frombuffer(_read(name, mask_offset, image.nbytes), np.uint8).reshape(96, 128, 3)
    assert np.array_equal(written, expected), "the mask bytes are the in-process mask colours"
    assert [a.name for a in result.anomalies] == ["background", "scratch", "dent"], (
        "anomalies are still in the reply"
    )


def test_mask_handle_with_the_samples_field_number_is_honoured(
    agent: AgentFactory, segmenter: Path, segment: Segment
) -> None:
    # given a client generated from the AWS sample proto, where the mask handle is field 3
    stub = agent.stub(agent({"seg": segmenter}, start=("seg",)))
    image = defect_image(64, 64)
    name = segment(image.nbytes)
    params = pb2.AnomalyMaskParams(
        shared_memory_handle_field3=pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=0)
    )
    request = pb2.DetectAnomaliesRequest(
        model_component="seg",
        bitmap=pb2.Bitmap(width=64, height=64, byte_data=image.tobytes()),
        anomaly_mask_params=params,
    )
    # when
    mask = stub.DetectAnomalies(request).detect_anomaly_result.anomaly_mask
    # then
    assert mask.WhichOneof("data") == "shared_memory_handle", "field 3 is read as the mask handle"
    assert _read(name, 0, 3) == bytes.fromhex("23A436"), (
        "the top-left pixel is red in the image: class 1, the palette's #23A436"
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("bad-name", "not a POSIX segment name"),
        ("size-mismatch", "exactly 12288 bytes"),
        ("past-the-end", "which is"),
        ("mask-too-small", "the mask needs 12288 bytes"),
        ("mask-past-the-end", "which is"),
    ],
)
def test_bad_shared_memory_is_an_invalid_argument(
    agent: AgentFactory, segmenter: Path, segment: Segment, case: str, expected: str
) -> None:
    # given a running segmenter and a segment holding one 64×64 image
    stub = agent.stub(agent({"seg": segmenter}, start=("seg",)))
    image = defect_image(64, 64)
    name = segment(image.nbytes)
    _write(name, 0, image.tobytes())
    handle = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=0)
    mask: pb2.AnomalyMaskParams | None = None
    if case == "missing":
        handle.name = "/lfva-no-such-segment"
    elif case == "bad-name":
        handle.name = "/../etc/passwd"
    elif case == "size-mismatch":
        handle.size = image.nbytes - 3
    elif case == "past-the-end":
        handle.offset = 1
    elif case == "mask-too-small":
        small = pb2.SharedMemoryHandle(name=name, size=100, offset=0)
        mask = pb2.AnomalyMaskParams(shared_memory_handle=small)
    elif case == "mask-past-the-end":
        beyond = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=10)
        mask = pb2.AnomalyMaskParams(shared_memory_handle=beyond)
    # when
    with pytest.raises(grpc.RpcError) as caught:
        stub.DetectAnomalies(_shm_request("seg", 64, 64, handle, mask))
    # then
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{case}: INVALID_ARGUMENT"
    assert expected in str(caught.value.details()), (
        f"{case}: clear message: {caught.value.details()}"
    )
    assert _read(name, 0, image.nbytes) == image.tobytes(), "the segment is left as it was"
