"""Pictures of what the model saw: an image with its anomaly mask, verdict and legend; contact sheets.

Used by `lfv-edge demo` and the web view (`blend_mask` on its previews and thumbnails), and
useful on its own: `render_overlay(image_rgb, verdict, title)`.
The mask is blended at 45 % over defect pixels only and outlined, so the part stays visible;
a header states the verdict and confidence, a legend lists each label's colour and area.
One of the cv2 users (drawing and text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from lfv_edge.inspection.imaging import resize_nearest
from lfv_edge.inspection.postprocess import Verdict, hex_to_rgb

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ANOMALOUS = (220, 40, 40)
_NORMAL = (30, 150, 60)
_ALPHA = 0.45


def _text(
    canvas: NDArray[np.uint8],
    text: str,
    origin: tuple[int, int],
    scale: float,
    color: tuple[int, int, int],
    thickness: int = 1,
) -> None:
    cv2.putText(canvas, text, origin, _FONT, scale, color, thickness, cv2.LINE_AA)


def render_overlay(
    image_rgb: NDArray[np.uint8], verdict: Verdict, title: str, *, width: int = 420
) -> NDArray[np.uint8]:
    """The image (scaled to `width`) with mask, outline, verdict header and legend; RGB uint8."""
    height = round(image_rgb.shape[0] * width / image_rgb.shape[1])
    picture = np.asarray(
        cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    blend_mask(picture, verdict)
    header = np.full((34, width, 3), 255, dtype=np.uint8)
    state = "ANOMALY" if verdict.is_anomalous else "NORMAL"
    color = _ANOMALOUS if verdict.is_anomalous else _NORMAL
    cv2.rectangle(header, (0, 0), (6, 33), color, -1)
    _text(header, f"{state} {verdict.confidence:.1%}", (12, 23), 0.62, color, 2)
    _text(
        header,
        title,
        (width - 8 - cv2.getTextSize(title, _FONT, 0.45, 1)[0][0], 22),
        0.45,
        (60, 60, 60),
    )
    legend = _legend(verdict, width)
    return np.vstack([header, picture, legend])


def blend_mask(
    picture: NDArray[np.uint8], verdict: Verdict, *, outline: int = 2, bgr: bool = False
) -> None:
    """Blend the verdict's mask (scaled to `picture`) into `picture` in place, outlined.

    `picture` is RGB (BGR with `bgr`) at any size (the web view draws on its preview); without
    a mask it is left as it is.
    """
    if verdict.mask is None:
        return
    height, width = picture.shape[:2]
    labels = resize_nearest(verdict.mask, width, height)
    if not labels.any():
        return
    # Colour the scaled labels, not the full mask (nearest-neighbour commutes with the lookup):
    # a 1080p mask's colours are 6 MB, its 640-px preview's 0.7 MB.
    lut = np.array([hex_to_rgb(c) for c in verdict.mask_colors], dtype=np.uint8)
    colored = np.take(lut[:, ::-1] if bgr else lut, labels, axis=0)
    defect = labels != 0
    blended = cv2.addWeighted(picture, 1 - _ALPHA, colored, _ALPHA, 0)
    picture[defect] = blended[defect]
    for index in np.unique(labels):
        if index == 0:
            continue
        contours, _ = cv2.findContours(
            (labels == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        color = hex_to_rgb(verdict.mask_colors[int(index)])
        cv2.drawContours(picture, contours, -1, color[::-1] if bgr else color, outline)


def _legend(verdict: Verdict, width: int) -> NDArray[np.uint8]:
    entries = (
        [a for a in verdict.anomalies if a.name != verdict.anomalies[0].name]
        if verdict.anomalies
        else []
    )
    if verdict.mask is None:
        lines = ["classification only (no mask)"]
    elif not entries:
        lines = ["no anomalous pixels"]
    else:
        lines = []
    rows = max(1, len(entries) if entries else 1)
    legend = np.full((12 + 20 * rows, width, 3), 255, dtype=np.uint8)
    if lines:
        _text(legend, lines[0], (10, 22), 0.45, (90, 90, 90))
        return legend
    for row, anomaly in enumerate(entries):
        y = 8 + 20 * row
        cv2.rectangle(legend, (10, y), (24, y + 14), hex_to_rgb(anomaly.pixel_anomaly.color), -1)
        area = anomaly.pixel_anomaly.total_percentage_area
        shown = "<0.01%" if 0 < area < 0.0001 else f"{area:.2%}"
        _text(legend, f"{anomaly.name}  {shown} of the image", (32, y + 12), 0.45, (40, 40, 40))
    return legend


def contact_sheet(
    tiles: Sequence[NDArray[np.uint8]], title: str, *, columns: int = 4, gap: int = 10
) -> NDArray[np.uint8]:
    """Tiles (RGB) in a grid under a title; tiles of different heights are top-aligned."""
    if not tiles:
        msg = "a contact sheet needs at least one tile"
        raise ValueError(msg)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    tile_width = max(t.shape[1] for t in tiles)
    tile_height = max(t.shape[0] for t in tiles)
    top = 44
    sheet = np.full(
        (top + rows * (tile_height + gap) + gap, gap + columns * (tile_width + gap), 3),
        235,
        dtype=np.uint8,
    )
    _text(sheet, title, (gap, 30), 0.8, (30, 30, 30), 2)
    for position, tile in enumerate(tiles):
        row, column = divmod(position, columns)
        y, x = top + row * (tile_height + gap), gap + column * (tile_width + gap)
        sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return sheet
