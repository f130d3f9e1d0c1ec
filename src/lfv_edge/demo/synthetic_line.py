"""A synthetic production line: seeded inspection images with labelled defect masks.

Owns the demo data: product surfaces (brushed metal, textile, wood, printed circuit board) on
a conveyor, with lighting variation (exposure, gradient, vignetting, glare, white balance,
defocus, sensor noise) and slight pose jitter, and defects of four labelled kinds drawn with
pixel masks. `lfv-edge demo` takes its sample images from here and tools/demo_model/ trains
the shipped demo model on it. Does not import dlr.

    sample = generate_sample(seed=7, surface="wood", defect="crack", size=(384, 384))
    sample.image_rgb   # uint8 (H, W, 3), RGB
    sample.mask        # uint8 (H, W); 0 = background, i = LABEL_NAMES[i]
    for sample in generate_dataset(100, seed=0, split="test"): ...

Everything is a pure function of its arguments: the same seed gives the same bytes (with the
same numpy and OpenCV builds). Label names follow Lookout for Vision's `[a-zA-Z0-9]+` rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2  # noqa: TID251 - drawing, blurring and warping; this module ships for `lfv-edge demo`
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFECTS",
    "LABEL_NAMES",
    "SPLITS",
    "SURFACES",
    "Sample",
    "SampleSpec",
    "generate_dataset",
    "generate_sample",
    "plan_dataset",
]

SURFACES = ("metal", "textile", "wood", "pcb")
DEFECTS = ("scratch", "stain", "crack", "dent")
# Index i of a mask is LABEL_NAMES[i]; LFV lists "background" first (docs/model-packages.md §7).
LABEL_NAMES = ("background", *DEFECTS)
# Each split draws its seeds from its own stream, so splits never share an image.
SPLITS = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SIZE = (384, 384)
# Sizes are written for a 384-pixel image and scaled to the requested one.
_REFERENCE_SIDE = 384.0
_MIN_SIDE = 64

Image = NDArray[np.float32]  # (H, W, 3) linear 0..1
Plane = NDArray[np.float32]  # (H, W)


@dataclass(frozen=True, slots=True)
class Sample:
    """One inspection image and its ground truth."""

    image_rgb: NDArray[np.uint8]  # (H, W, 3) RGB
    mask: NDArray[np.uint8]  # (H, W) label indices into label_names
    label_names: tuple[str, ...]  # index -> name; always LABEL_NAMES
    surface: str
    defect: str | None  # None for a normal image
    seed: int

    @property
    def is_anomalous(self) -> bool:
        """True when the image shows a defect (its mask is not all background)."""
        return self.defect is not None


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """What `generate_sample` will be asked for: one line of a dataset plan."""

    seed: int
    surface: str
    defect: str | None


def plan_dataset(n: int, seed: int = 0, split: str = "train") -> list[SampleSpec]:
    """The first `n` samples of a split: half normal, every surface × defect pair balanced.

    The plan is prefix-stable (the first 100 of a 1000-sample plan are the 100-sample plan).
    Every 32 consecutive samples hold each surface 4 times normal and once per defect kind.
    """
    if split not in SPLITS:
        msg = f"split must be one of {sorted(SPLITS)}, got {split!r}"
        raise ValueError(msg)
    if n < 0:
        msg = f"n must be at least 0, got {n}"
        raise ValueError(msg)
    specs = []
    for index in range(n):
        words = np.random.SeedSequence([seed, SPLITS[split], index]).generate_state(2)
        sample_seed = int(words[0]) << 32 | int(words[1])
        surface = SURFACES[index % len(SURFACES)]
        block = index // len(SURFACES)
        defect = DEFECTS[(block // 2) % len(DEFECTS)] if block % 2 == 1 else None
        specs.append(SampleSpec(seed=sample_seed, surface=surface, defect=defect))
    return specs


def generate_dataset(
    n: int, seed: int = 0, split: str = "train", size: tuple[int, int] = DEFAULT_SIZE
) -> Iterator[Sample]:
    """Generate the samples of `plan_dataset(n, seed, split)` lazily, in plan order."""
    for spec in plan_dataset(n, seed, split):
        yield generate_sample(spec.seed, spec.surface, spec.defect, size)


def generate_sample(
    seed: int, surface: str, defect: str | None, size: tuple[int, int] = DEFAULT_SIZE
) -> Sample:
    """One product image of `surface` with one `defect` kind (1–2 instances) or none.

    Args:
        seed: any non-negative integer; the whole image is a function of it.
        surface: one of SURFACES.
        defect: one of DEFECTS, or None for a normal image (its mask is all zeros).
        size: (height, width) in pixels, each at least 64.
    """
    if surface not in SURFACES:
        msg = f"surface must be one of {SURFACES}, got {surface!r}"
        raise ValueError(msg)
    if defect is not None and defect not in DEFECTS:
        msg = f"defect must be one of {DEFECTS} or None, got {defect!r}"
        raise ValueError(msg)
    height, width = size
    if min(height, width) < _MIN_SIDE:
        msg = f"size must be at least {_MIN_SIDE}×{_MIN_SIDE}, got {height}×{width}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    scale = min(height, width) / _REFERENCE_SIDE
    texture = _SURFACE_PAINTERS[surface](rng, height, width, scale)
    label = np.zeros((height, width), dtype=np.uint8)
    plate = _plate_geometry(rng, height, width, scale)
    if defect is not None:
        painter = _DEFECT_PAINTERS[defect]
        instances = 1 + int(rng.random() < 0.3)
        for _ in range(instances):
            region = painter(rng, texture, plate.inner, scale)
            label[region] = LABEL_NAMES.index(defect)
    scene, label = _place_on_conveyor(rng, texture, label, plate, scale)
    if defect is not None and not label.any():  # pragma: no cover - placement keeps defects inside
        msg = f"seed {seed}: the {defect} fell outside the product"
        raise AssertionError(msg)
    image = _apply_camera(rng, scene, scale)
    return Sample(
        image_rgb=image,
        mask=label,
        label_names=LABEL_NAMES,
        surface=surface,
        defect=defect,
        seed=seed,
    )


# --- noise helpers ------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, stretch: float = 1.0
) -> Plane:
    """Value noise with features about `cell` pixels tall and `cell * stretch` wide."""
    cell_y, cell_x = max(cell, 1.0), max(cell * stretch, 1.0)
    grid = rng.standard_normal((round(height / cell_y) + 3, round(width / cell_x) + 3)).astype(
        np.float32
    )
    pad_y, pad_x = int(cell_y), int(cell_x)
    big = cv2.resize(grid, (width + 2 * pad_x, height + 2 * pad_y), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[pad_y : pad_y + height, pad_x : pad_x + width])


def _fractal_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> Plane:
    total = np.zeros((height, width), dtype=np.float32)
    amplitude = 1.0
    for _ in range(3):
        total += amplitude * _smooth_noise(rng, height, width, max(cell, 2.0))
        cell /= 2.0
        amplitude /= 2.0
    return total / 1.3


def _streaks(rng: np.random.Generator, height: int, width: int, length: int) -> Plane:
    """Noise smeared along x: the marks of brushing, fibres or grain."""
    raw = rng.standard_normal((height, width)).astype(np.float32)
    smeared = cv2.blur(raw, (max(3, length) | 1, 1), borderType=cv2.BORDER_REFLECT_101)
    std = float(smeared.std()) or 1.0
    return np.asarray(smeared / std, dtype=np.float32)


def _pick(
    rng: np.random.Generator, palette: list[tuple[float, float, float]]
) -> NDArray[np.float32]:
    base = np.array(palette[int(rng.integers(len(palette)))], dtype=np.float32)
    return np.asarray(base * rng.uniform(0.92, 1.08, 3).astype(np.float32), dtype=np.float32)


# --- surfaces -----------------------------------------------------------------------------


def _paint_metal(rng: np.random.Generator, height: int, width: int, scale: float) -> Image:
    vertical = rng.random() < 0.5
    h, w = (width, height) if vertical else (height, width)
    coarse = _streaks(rng, h, w, int(w * rng.uniform(0.2, 0.5)))
    fine = _streaks(rng, h, w, int(25 * scale) + 3)
    if vertical:
        coarse, fine = coarse.T, fine.T
    sheen = _smooth_noise(rng, height, width, 120 * scale)
    level = rng.uniform(0.5, 0.68)
    lum = level + 0.035 * coarse + 0.02 * fine + 0.035 * sheen
    tint = np.array([0.97, 1.0, 1.04], dtype=np.float32) * rng.uniform(0.97, 1.03, 3).astype(
        np.float32
    )
    return np.ascontiguousarray(lum[..., None] * tint, dtype=np.float32)


_TEXTILE_COLOURS = [
    (0.22, 0.32, 0.55),
    (0.72, 0.65, 0.5),
    (0.25, 0.4, 0.28),
    (0.6, 0.22, 0.2),
    (0.45, 0.45, 0.47),
]


def _paint_textile(rng: np.random.Generator, height: int, width: int, scale: float) -> Image:
    period = max(3.0, rng.uniform(6.0, 9.0) * scale)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Threads wander a little, like a real weave.
    xs = xs + 1.2 * scale * _smooth_noise(rng, height, width, 60 * scale)
    ys = ys + 1.2 * scale * _smooth_noise(rng, height, width, 60 * scale)
    col, row = np.floor(xs / period), np.floor(ys / period)
    warp_on_top = (col + row) % 2 == 0
    across_x = np.sin(np.pi * ((xs % period) / period)) ** 0.7
    across_y = np.sin(np.pi * ((ys % period) / period)) ** 0.7
    weave = np.where(warp_on_top, across_x, across_y)
    # Each thread has its own dye lot and thickness.
    n_cols, n_rows = int(width / period) + 2, int(height / period) + 2
    col_shade = rng.normal(0.0, 0.05, n_cols + 1).astype(np.float32)
    row_shade = rng.normal(0.0, 0.05, n_rows + 1).astype(np.float32)
    ci = np.clip(col.astype(np.int64), 0, n_cols)
    ri = np.clip(row.astype(np.int64), 0, n_rows)
    shade = np.where(warp_on_top, col_shade[ci], row_shade[ri])
    fibres = 0.04 * _fractal_noise(rng, height, width, 3 * scale + 1)
    lum = 0.62 + 0.38 * weave + shade + fibres
    colour = _pick(rng, _TEXTILE_COLOURS)
    return np.ascontiguousarray(lum[..., None] * colour, dtype=np.float32)


_WOOD_COLOURS = [
    ((0.78, 0.6, 0.4), (0.55, 0.36, 0.2)),
    ((0.68, 0.47, 0.3), (0.42, 0.25, 0.14)),
    ((0.86, 0.74, 0.56), (0.66, 0.5, 0.33)),
]


def _paint_wood(rng: np.random.Generator, height: int, width: int, scale: float) -> Image:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ring_gap = rng.uniform(9.0, 20.0) * scale
    # Grain runs along x: the distortion varies slowly along the board, faster across it.
    warp = 22 * scale * _smooth_noise(rng, height, width, 70 * scale, stretch=4.0)
    warp += 5 * scale * _smooth_noise(rng, height, width, 18 * scale, stretch=5.0)
    phase = (ys + warp + rng.uniform(-0.05, 0.05) * xs) / ring_gap
    phase += 0.8 * _smooth_noise(rng, height, width, 40 * scale, stretch=6.0)  # uneven growth
    core = np.zeros((height, width), dtype=np.float32)
    if rng.random() < 0.3:  # a knot: the rings close round it
        ky, kx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        radius = rng.uniform(8, 16) * scale
        dist2 = ((ys - ky) / 0.75) ** 2 + ((xs - kx) / 1.3) ** 2
        phase += rng.uniform(2.0, 3.5) * np.exp(-dist2 / (2 * (1.6 * radius) ** 2))
        core = 0.35 * np.exp(-dist2 / (2 * (0.45 * radius) ** 2)).astype(np.float32)
    sharp = rng.uniform(1.5, 3.0)
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * phase)) ** sharp
    fibres = _streaks(rng, height, width, int(40 * scale) + 3)
    pores = np.clip(_smooth_noise(rng, height, width, 2 * scale + 1, stretch=5.0) - 1.6, 0, None)
    light, dark = (np.array(c, dtype=np.float32) for c in _WOOD_COLOURS[int(rng.integers(3))])
    mix = 0.5 * rings + 0.05 * fibres + 0.2 * pores + core
    mix += 0.06 * _smooth_noise(rng, height, width, 60 * scale, stretch=3.0)
    mix = np.clip(mix, 0, 1)[..., None]
    return np.ascontiguousarray(light * (1 - mix) + dark * mix, dtype=np.float32)


def _paint_pcb(rng: np.random.Generator, height: int, width: int, scale: float) -> Image:
    mask_green = _pick(rng, [(0.1, 0.36, 0.17), (0.08, 0.3, 0.2), (0.14, 0.4, 0.14)])
    trace_green = np.clip(mask_green * 1.6 + np.float32(0.04), 0, 1)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = mask_green
    image *= (1 + 0.05 * _fractal_noise(rng, height, width, 4 * scale + 1))[..., None]
    step = max(4, round(12 * scale))
    thick = max(1, round(rng.uniform(2.5, 4.5) * scale))
    for _ in range(int(rng.integers(10, 18))):  # copper traces under the solder mask
        y = int(rng.integers(0, height // step)) * step
        x = int(rng.integers(0, width // step)) * step
        points = [(x, y)]
        for _ in range(int(rng.integers(2, 5))):
            length = int(rng.integers(3, 14)) * step
            dx, dy = ((1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (1, -1))[int(rng.integers(6))]
            x, y = x + dx * length, y + dy * length
            points.append((x, y))
        cv2.polylines(
            image,
            [np.array(points, dtype=np.int32)],
            False,
            trace_green.tolist(),
            thick,
            cv2.LINE_AA,
        )
    metal = _pick(rng, [(0.8, 0.7, 0.42), (0.78, 0.78, 0.76)])
    for _ in range(int(rng.integers(8, 16))):  # vias: a plated ring round a drilled hole
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = max(2, round(rng.uniform(3.5, 5.5) * scale))
        cv2.circle(image, centre, radius, metal.tolist(), -1, cv2.LINE_AA)
        cv2.circle(image, centre, max(1, radius // 2), (0.06, 0.06, 0.05), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 5))):  # components: a body with pads, and its silkscreen
        cw = round(rng.uniform(30, 80) * scale)
        ch = round(rng.uniform(16, 50) * scale)
        x0, y0 = int(rng.integers(0, max(1, width - cw))), int(rng.integers(0, max(1, height - ch)))
        pad = max(2, round(5 * scale))
        cv2.rectangle(
            image,
            (x0 - pad, y0 - pad),
            (x0 + cw + pad, y0 + ch + pad),
            (0.9, 0.9, 0.88),
            max(1, round(scale)),
        )
        for px in range(x0 + pad, x0 + cw - pad, max(3, 2 * pad)):
            cv2.rectangle(image, (px, y0 - pad), (px + pad, y0 + ch + pad), metal.tolist(), -1)
        body = float(rng.uniform(0.06, 0.14))
        cv2.rectangle(image, (x0, y0), (x0 + cw, y0 + ch), (body, body, body * 1.05), -1)
        cv2.circle(image, (x0 + pad + 1, y0 + pad + 1), max(1, pad // 2), (0.25, 0.25, 0.25), -1)
    for _ in range(int(rng.integers(3, 7))):  # silkscreen text: rows of tiny glyph blocks
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        glyph = max(2, round(4 * scale))
        for k in range(int(rng.integers(2, 6))):
            if rng.random() < 0.8:
                gx = x + k * (glyph + max(1, glyph // 2))
                cv2.rectangle(
                    image,
                    (gx, y),
                    (gx + glyph, y + int(1.6 * glyph)),
                    (0.88, 0.88, 0.86),
                    max(1, glyph // 3),
                )
    return image


SurfacePainter = Callable[[np.random.Generator, int, int, float], Image]
_SURFACE_PAINTERS: dict[str, SurfacePainter] = {
    "metal": _paint_metal,
    "textile": _paint_textile,
    "wood": _paint_wood,
    "pcb": _paint_pcb,
}


# --- defects ------------------------------------------------------------------------------
# Each painter draws one instance into `texture` (in place) and returns its pixel region.

Box = tuple[int, int, int, int]  # y0, x0, y1, x1: where a defect may be centred


def _blend(texture: Image, alpha: Plane, target: NDArray[np.float32]) -> None:
    a = alpha[..., None]
    texture *= 1 - a
    texture += a * target


def _random_point(rng: np.random.Generator, box: Box) -> tuple[float, float]:
    y0, x0, y1, x1 = box
    return float(rng.uniform(y0, y1)), float(rng.uniform(x0, x1))


def _line_alpha(shape: tuple[int, int], points: NDArray[np.float64], width: int) -> Plane:
    canvas = np.zeros(shape, dtype=np.float32)
    pts = np.round(points[:, ::-1] * 16).astype(np.int32)  # (x, y), 4 fractional bits
    cv2.polylines(canvas, [pts], False, 1.0, max(1, width), cv2.LINE_AA, 4)
    return canvas


def _paint_scratch(
    rng: np.random.Generator, texture: Image, box: Box, scale: float
) -> NDArray[np.bool_]:
    shape = texture.shape[:2]
    y, x = _random_point(rng, box)
    length = rng.uniform(60, 150) * scale
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25) * length
    t = np.linspace(-0.5, 0.5, 40)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    points = (
        np.array([y, x]) + np.outer(t * length, direction) + np.outer(bend * (0.25 - t**2), normal)
    )
    width = max(1, round(rng.uniform(1.5, 3.0) * scale))
    alpha = _line_alpha(shape, points, width)
    # Depth fades in and out along a real scratch.
    fade = cv2.GaussianBlur(alpha, (0, 0), 0.6) if width == 1 else alpha
    mean = texture.reshape(-1, 3).mean(axis=0)
    if rng.random() < 0.75:  # bright: the bare material catches the light
        target = np.clip(0.5 * (mean * 1.7 + 0.18) + 0.42, 0, 1).astype(np.float32)
    else:
        target = (mean * 0.35).astype(np.float32)
    _blend(texture, np.clip(fade * rng.uniform(0.65, 0.9), 0, 1), target)
    return _grow(alpha > 0.3, scale)


_STAIN_TINTS = [(0.45, 0.3, 0.15), (0.18, 0.16, 0.14), (0.6, 0.34, 0.12), (0.35, 0.36, 0.2)]


def _paint_stain(
    rng: np.random.Generator, texture: Image, box: Box, scale: float
) -> NDArray[np.bool_]:
    height, width = texture.shape[:2]
    cy, cx = _random_point(rng, box)
    radius = rng.uniform(12, 30) * scale
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    aspect = rng.uniform(0.6, 1.0)
    theta = rng.uniform(0, np.pi)
    dy, dx = ys - cy, xs - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
    wobble = 0.35 * _smooth_noise(rng, height, width, radius * 0.6)
    field = np.sqrt(u * u + v * v) / radius + wobble
    region = field < 1.0
    soft = np.clip((1.0 - field) / 0.25, 0, 1).astype(np.float32)
    rim = np.exp(-(((field - 0.92) / 0.1) ** 2)).astype(np.float32)  # the "coffee ring" edge
    strength = rng.uniform(0.45, 0.75)
    alpha = np.clip(strength * soft + 0.25 * rim * (field < 1.15), 0, 1).astype(np.float32)
    tint = np.array(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))], dtype=np.float32)
    target = texture * tint * 1.2
    _blend(texture, alpha, target)
    return np.asarray(region, dtype=np.bool_)


def _paint_crack(
    rng: np.random.Generator, texture: Image, box: Box, scale: float
) -> NDArray[np.bool_]:
    shape = texture.shape[:2]
    y0, x0, y1, x1 = box
    alpha = np.zeros(shape, dtype=np.float32)
    start = np.array(_random_point(rng, box))
    width = max(1, round(rng.uniform(1.5, 2.8) * scale))
    branches = [(start, rng.uniform(0, 2 * np.pi), rng.uniform(70, 140) * scale, width)]
    step = 4.0 * scale + 1.0
    while branches:
        point, heading, length, width = branches.pop()
        points = [point]
        for _ in range(max(3, int(length / step))):
            heading += rng.normal(0, 0.45)
            candidate = point + step * np.array([np.sin(heading), np.cos(heading)])
            if not (y0 <= candidate[0] < y1 and x0 <= candidate[1] < x1):
                heading += np.pi  # turn back rather than leave the product
                candidate = point + step * np.array([np.sin(heading), np.cos(heading)])
            point = candidate
            points.append(point)
            if rng.random() < 0.06 and width > 1 and len(branches) < 3:
                side = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
                branches.append((point, side, length * rng.uniform(0.25, 0.5), width - 1))
        alpha = np.maximum(alpha, _line_alpha(shape, np.array(points), width))
    darkness = rng.uniform(0.7, 0.88)
    _blend(texture, alpha * darkness, (texture * 0.15).astype(np.float32))
    # A faint bright lip on one side of the fracture.
    lip = np.roll(alpha, (1, 1), axis=(0, 1)) * (1 - alpha) * 0.25
    _blend(texture, lip, np.clip(texture * 1.4, 0, 1).astype(np.float32))
    return _grow(alpha > 0.3, scale)


def _paint_dent(
    rng: np.random.Generator, texture: Image, box: Box, scale: float
) -> NDArray[np.bool_]:
    height, width = texture.shape[:2]
    cy, cx = _random_point(rng, box)
    radius = rng.uniform(9, 20) * scale
    aspect = rng.uniform(0.65, 1.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = (ys - cy) / aspect, xs - cx
    r2 = (dx * dx + dy * dy) / (radius * radius)
    depth = np.exp(-2.0 * r2).astype(np.float32)  # a smooth crater
    grad_y, grad_x = np.gradient(depth)
    light = rng.uniform(0, 2 * np.pi)
    slope = (grad_x * math.cos(light) + grad_y * math.sin(light)) * radius
    shading = 1.0 + rng.uniform(1.1, 1.6) * slope - 0.18 * depth
    texture *= np.clip(shading, 0.25, 1.8)[..., None]
    np.clip(texture, 0, 1, out=texture)
    return np.asarray(r2 < 0.55, dtype=np.bool_)


def _grow(region: NDArray[np.bool_], scale: float) -> NDArray[np.bool_]:
    """Thin defects get a one-pixel margin so their masks survive resizing."""
    size = 3 if scale >= 0.5 else 1
    grown = cv2.dilate(region.astype(np.uint8), np.ones((size, size), np.uint8))
    return np.asarray(grown > 0, dtype=np.bool_)


DefectPainter = Callable[[np.random.Generator, Image, Box, float], NDArray[np.bool_]]
_DEFECT_PAINTERS: dict[str, DefectPainter] = {
    "scratch": _paint_scratch,
    "stain": _paint_stain,
    "crack": _paint_crack,
    "dent": _paint_dent,
}


# --- product placement and camera ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plate:
    matrix: NDArray[np.float64]  # 2×3 affine: product coordinates -> image
    margin: int  # product border inset, in product coordinates
    inner: Box  # where defects may be centred


def _plate_geometry(rng: np.random.Generator, height: int, width: int, scale: float) -> _Plate:
    side = min(height, width)
    margin = round(rng.uniform(0.035, 0.06) * side)
    angle = rng.uniform(-3.5, 3.5)
    zoom = rng.uniform(0.97, 1.02)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, zoom)
    matrix[0, 2] += rng.uniform(-0.02, 0.02) * width
    matrix[1, 2] += rng.uniform(-0.02, 0.02) * height
    keep_out = margin + round(0.1 * side)
    inner = (keep_out, keep_out, height - keep_out, width - keep_out)
    return _Plate(matrix=np.asarray(matrix, dtype=np.float64), margin=margin, inner=inner)


def _place_on_conveyor(
    rng: np.random.Generator, texture: Image, label: NDArray[np.uint8], plate: _Plate, scale: float
) -> tuple[Image, NDArray[np.uint8]]:
    height, width = label.shape
    outline = np.zeros((height, width), dtype=np.float32)
    corner = max(2, round(14 * scale))
    m = plate.margin
    cv2.rectangle(outline, (m + corner, m), (width - 1 - m - corner, height - 1 - m), 1.0, -1)
    cv2.rectangle(outline, (m, m + corner), (width - 1 - m, height - 1 - m - corner), 1.0, -1)
    for cx, cy in ((m + corner, m + corner), (width - 1 - m - corner, m + corner),
                   (m + corner, height - 1 - m - corner), (width - 1 - m - corner, height - 1 - m - corner)):  # fmt: skip
        cv2.circle(outline, (cx, cy), corner, 1.0, -1, cv2.LINE_AA)
    # A bevelled edge catches the light.
    edge = outline - cv2.erode(outline, np.ones((3, 3), np.uint8))
    texture = texture * (1 + 0.25 * edge)[..., None]
    dsize = (width, height)
    warped = cv2.warpAffine(
        texture, plate.matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    alpha = cv2.warpAffine(
        outline, plate.matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    labels = cv2.warpAffine(
        label, plate.matrix, dsize, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )
    belt = rng.uniform(0.12, 0.2) + 0.02 * _streaks(rng, height, width, int(60 * scale) + 3)
    shift = max(1, round(6 * scale))
    shadow = np.roll(cv2.GaussianBlur(alpha, (0, 0), 4 * scale + 0.5), (shift, shift), axis=(0, 1))
    belt = belt * (1 - 0.55 * shadow)
    a = alpha[..., None]
    image = warped * a + belt[..., None] * (1 - a)
    on_plate: NDArray[np.uint8] = np.where(alpha > 0.5, labels, 0).astype(np.uint8)
    return np.asarray(image, dtype=np.float32), on_plate


def _apply_camera(rng: np.random.Generator, image: Image, scale: float) -> NDArray[np.uint8]:
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ny, nx = (2 * ys / (height - 1) - 1), (2 * xs / (width - 1) - 1)
    gain = rng.uniform(0.82, 1.15)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.0, 0.16) * (
        nx * math.cos(direction) + ny * math.sin(direction)
    ) / math.sqrt(2)
    vy, vx = rng.uniform(-0.25, 0.25, 2)
    vignette = 1 - rng.uniform(0.08, 0.3) * ((nx - vx) ** 2 + (ny - vy) ** 2) / 2
    light = gain * gradient * vignette
    if rng.random() < 0.4:  # a broad glare patch from the line's lamp
        gy, gx = rng.uniform(-0.7, 0.7, 2)
        spread = rng.uniform(0.35, 0.7)
        light = light + rng.uniform(0.05, 0.14) * np.exp(
            -((nx - gx) ** 2 + (ny - gy) ** 2) / (2 * spread**2)
        )
    balance = rng.normal(1.0, 0.025, 3).astype(np.float32)
    out = image * light[..., None] * balance
    focus = rng.uniform(0.0, 0.9) * scale
    if focus > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), focus)
    noise_sigma = rng.uniform(0.006, 0.02)
    luma_noise = rng.standard_normal((height, width, 1)).astype(np.float32)
    chroma_noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    out = out + noise_sigma * (0.8 * luma_noise + 0.45 * chroma_noise)
    return np.asarray(np.clip(np.rint(out * 255.0), 0, 255), dtype=np.uint8)
