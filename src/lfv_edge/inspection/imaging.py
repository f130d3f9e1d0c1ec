"""Image bytes ↔ pixels: decoding requests' images, encoding masks. One of two cv2 users.

Images are checked before they are decoded: the width and height are read from the PNG, JPEG,
BMP, GIF, WebP or TIFF header, so a 100 KB file that claims 60,000 × 60,000 pixels (a decompression
bomb) is refused without allocating 10 GB. LFV accepts 64–4096 pixels per side.

Decoding ignores EXIF orientation: LFV models see the stored pixel grid (the Edge Agent takes
raw bitmaps), and rotating would also change the mask's geometry.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import InputError

# Stable error codes (the wire contract; see messages.py and the README).
IMAGE_UNREADABLE = "ImageUnreadable"
IMAGE_TOO_LARGE = "ImageTooLarge"
IMAGE_TOO_SMALL = "ImageTooSmall"

# Masks are flat label images: zlib level 1 without PNG's row filters encodes a 1080p mask in
# 10 ms instead of 31 ms (filter search dominates) for ~3 % more bytes; pixels are identical.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """Pixel bounds per side (LFV: 64–4096) and the largest encoded image accepted."""

    min_side: int = 64
    max_side: int = 4096
    max_encoded_bytes: int = 16 << 20


def sniff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image header, or None when the format is not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:6] in {b"GIF87a", b"GIF89a"} and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:4] in {b"II*\0", b"MM\0*"}:
        return _tiff_size(data)
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    size: dict[int, int] = {}
    for index in range(min(count, 512)):
        entry = ifd + 2 + index * 12
        if entry + 12 > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in {256, 257}:  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = order + ("H" if kind == 3 else "I")
            (size[tag],) = struct.unpack(fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)])
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 9 < len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker in {0xD8, 0x01} or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in {0xC4, 0xC8, 0xCC}:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def check_size(width: int, height: int, limits: SizeLimits, what: str = "image") -> None:
    """Raise a coded InputError when a side is outside the LFV bounds."""
    if width > limits.max_side or height > limits.max_side:
        msg = f"{what} is {width}×{height} pixels; the maximum is {limits.max_side} per side"
        raise InputError(IMAGE_TOO_LARGE, msg)
    if width < limits.min_side or height < limits.min_side:
        msg = f"{what} is {width}×{height} pixels; the minimum is {limits.min_side} per side"
        raise InputError(IMAGE_TOO_SMALL, msg)


def decode_image(data: bytes, limits: SizeLimits = SizeLimits()) -> NDArray[np.uint8]:
    """Decode encoded image bytes to an H×W×3 **BGR** uint8 array (OpenCV's order).

    Grayscale becomes three equal channels and alpha is dropped, as LFV's pre-processing does.

    Raises:
        InputError: `ImageTooLarge` / `ImageTooSmall` / `ImageUnreadable`.
    """
    if len(data) > limits.max_encoded_bytes:
        msg = f"encoded image is {len(data)} bytes; the maximum is {limits.max_encoded_bytes}"
        raise InputError(IMAGE_TOO_LARGE, msg)
    size = sniff_size(data)
    if size is None:
        msg = "not a PNG, JPEG, BMP, GIF, WebP or TIFF image"
        raise InputError(IMAGE_UNREADABLE, msg)
    check_size(*size, limits)
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        msg = "the image data is corrupt or truncated"
        raise InputError(IMAGE_UNREADABLE, msg)
    decoded = np.asarray(image, dtype=np.uint8)
    height, width = decoded.shape[:2]
    if (width, height) != size:  # the header lied; check what was really decoded
        check_size(width, height, limits)
    return decoded


def read_image_file(path: Path, limits: SizeLimits = SizeLimits()) -> NDArray[np.uint8]:
    """Read and decode an image file (BGR, see `decode_image`)."""
    try:
        size = path.stat().st_size
        if size > limits.max_encoded_bytes:
            msg = f"{path.name} is {size} bytes; the maximum is {limits.max_encoded_bytes}"
            raise InputError(IMAGE_TOO_LARGE, msg)
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise InputError(IMAGE_UNREADABLE, msg) from exc
    return decode_image(data, limits)


def encode_png(image: NDArray[np.uint8], *, rgb: bool = True) -> bytes:
    """PNG bytes of an H×W×3 image (RGB unless `rgb=False`) or an H×W label image."""
    pixels = image[:, :, ::-1] if rgb and image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels, _PNG_PARAMS)
    if not ok:
        msg = "PNG encoding failed"
        raise RuntimeError(msg)
    return bytes(encoded)


def resize_nearest(labels: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """Nearest-neighbour resize of a label image (cv2.INTER_NEAREST, as LFV does)."""
    if labels.shape == (height, width):
        return labels
    resized = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.asarray(resized, dtype=np.uint8)


def encode_jpeg(image: NDArray[np.uint8], *, quality: int = 85, rgb: bool = True) -> bytes:
    """JPEG bytes of an H×W×3 image (RGB unless `rgb=False`), for pictures people look at."""
    # cvtColor, not image[:, :, ::-1]: copying the reversed view is ~10× slower (1.2 ms at VGA).
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb and image.ndim == 3 else image
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        msg = "JPEG encoding failed"
        raise RuntimeError(msg)
    return bytes(encoded)


def to_three_channels(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """H×W×3 in the same channel order from gray, H×W×1, H×W×3 or H×W×4 (alpha dropped)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    return image


def swap_red_blue(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """RGB ↔ BGR of an H×W×3 image, as a new contiguous array."""
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), dtype=np.uint8)


def fit_within(image: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    """`image` scaled down (area averaging) so neither side exceeds `max_side`; never up.

    Pass a contiguous image: OpenCV copies a strided view first (a reversed-channel 1080p
    view took 18 ms instead of 3).
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
