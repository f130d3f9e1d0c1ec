"""Image decoding: every supported format, LFV's size bounds, header sniffing before decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lfv_edge.errors import InputError
from lfv_edge.inspection.imaging import (
    SizeLimits,
    decode_image,
    encode_png,
    resize_nearest,
    sniff_size,
)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tif"])
def test_every_format_is_sniffed_and_decoded_as_bgr(suffix: str) -> None:
    image = np.zeros((70, 90, 3), np.uint8)
    image[:, :, 2] = 200  # red in BGR
    ok, data = cv2.imencode(suffix, image)
    assert ok
    assert sniff_size(data.tobytes()) == (90, 70), f"{suffix}: (width, height) from the header"
    decoded = decode_image(data.tobytes())
    assert decoded.shape == (70, 90, 3), f"{suffix}: decoded size"
    assert abs(int(decoded[35, 45, 2]) - 200) <= 3, f"{suffix}: channels stay in OpenCV's BGR order"


def test_gray_and_alpha_images_become_three_channels() -> None:
    ok, gray = cv2.imencode(".png", np.full((80, 80), 77, np.uint8))
    assert ok
    assert decode_image(gray.tobytes())[0, 0].tolist() == [77, 77, 77], (
        "gray → three equal channels"
    )
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 0
    ok, png = cv2.imencode(".png", rgba)
    assert ok
    assert decode_image(png.tobytes())[0, 0].tolist() == [10, 0, 0], "alpha is dropped, not blended"


@pytest.mark.parametrize(
    ("size", "code"),
    [((63, 100), "ImageTooSmall"), ((100, 4097), "ImageTooLarge"), ((64, 4096), None)],
)
def test_lfv_size_bounds(size: tuple[int, int], code: str | None) -> None:
    ok, data = cv2.imencode(".png", np.zeros((size[0], size[1], 3), np.uint8))
    assert ok
    if code is None:
        assert decode_image(data.tobytes()).shape[:2] == size, "64 and 4096 are allowed"
        return
    with pytest.raises(InputError) as caught:
        decode_image(data.tobytes())
    assert caught.value.code == code, f"{size} → {code}"


def test_encoded_size_cap_and_garbage() -> None:
    with pytest.raises(InputError) as caught:
        decode_image(b"\x89PNG" + bytes(2000), SizeLimits(max_encoded_bytes=1000))
    assert caught.value.code == "ImageTooLarge", "bytes over the cap are refused before decoding"
    with pytest.raises(InputError) as caught:
        decode_image(b"GIF89a\x80\x00\x80\x00" + b"junk")
    assert caught.value.code == "ImageUnreadable", "a truncated image is unreadable"


def test_png_encoding_and_nearest_resize_keep_labels() -> None:
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    resized = resize_nearest(labels, 4, 6)
    assert resized.shape == (6, 4), "(height, width) as asked"
    assert set(np.unique(resized).tolist()) == {0, 1, 2, 3}, "nearest neighbour invents no labels"
    rgb = np.zeros((6, 4, 3), np.uint8)
    rgb[..., 0] = 255
    decoded = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded[0, 0].tolist() == [0, 0, 255], "RGB input is written as a correct PNG (red)"
