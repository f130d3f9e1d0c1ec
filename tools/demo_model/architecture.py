"""The demo model's layers, described once for torch (net.py) and for the DLR export (export.py).

A small U-Net-like LFV `mochi` model for 256×256 RGB input, built only from the ops the
project's DLR kernels implement (src/lfv_edge/modelbuild). Outputs in LFV order:

    mask  [1, 5, 256, 256]  softmax over channels; 0 background, 1 scratch, 2 stain, 3 crack, 4 dent
    score [1, 2]            softmax; 0 anomaly, 1 normal (normal_ids [1])

    data ─c1(s2)─c2(s2)─c3───────────────────────────── f4  64×64×32 ─┐
                         └c4(s2)─c5──────────────── f8  32×32×64 ─┐    │
                                  └c6(s2)─c7─ f16 16×16×96        │    │
    up1 = bilinear×2(f16) ⧺ f8 → u1a(1×1) → u1b ─ d8 32×32×64     │    │
    up2 = bilinear×2(d8) ⧺ f4 → u2a(1×1) → u2b ─ d4 64×64×32          │
    mask  = softmax_c(bilinear×4(seg(d4)))
    score = softmax(fc_max(gap(maxpool⁶(ev(d4)))) + fc_avg(gap(f16)))

Six 2×2 max-pools take the 64×64 evidence map to 1×1: a true global max, so one small
defect anywhere can carry the image-level verdict, while the average-pooled deep features
add context. Does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_HEIGHT = 256
INPUT_WIDTH = 256
CLASS_NAMES = ("anomaly", "normal")
NORMAL_IDS = (1,)
INPUT_NAME = "data"
OUTPUT_NAMES = ("mask", "score")


@dataclass(frozen=True, slots=True)
class Conv:
    """`nn.Conv2d(cin, cout, k, stride, padding=k // 2)` + bias, optionally ReLU."""

    name: str
    src: str
    cin: int
    cout: int
    k: int
    stride: int
    relu: bool


@dataclass(frozen=True, slots=True)
class Upsample:
    """Integer-factor upsampling: bilinear (align_corners=False) or nearest."""

    name: str
    src: str
    factor: int
    mode: str


@dataclass(frozen=True, slots=True)
class Concat:
    """Channel concatenation `[a, b]` of two NCHW tensors."""

    name: str
    a: str
    b: str


@dataclass(frozen=True, slots=True)
class MaxPool:
    """2×2 max-pool, stride 2 (floor)."""

    name: str
    src: str


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    """`[1, C, H, W]` → `[1, C]`."""

    name: str
    src: str


@dataclass(frozen=True, slots=True)
class Dense:
    """`nn.Linear(cin, cout)`: `[1, cin]` → `[1, cout]`."""

    name: str
    src: str
    cin: int
    cout: int


@dataclass(frozen=True, slots=True)
class Add:
    """Elementwise sum of two same-shaped tensors."""

    name: str
    a: str
    b: str


@dataclass(frozen=True, slots=True)
class Softmax:
    """Softmax over the last axis (`channels=False`) or over the channels of NCHW."""

    name: str
    src: str
    channels: bool


Layer = Conv | Upsample | Concat | MaxPool | GlobalAvgPool | Dense | Add | Softmax

NUM_LABELS = 5  # background + scratch, stain, crack, dent (lfv_edge.demo.synthetic_line.LABEL_NAMES)
EVIDENCE = 16


def _layers() -> tuple[Layer, ...]:
    layers: list[Layer] = [
        Conv("c1", INPUT_NAME, 3, 16, 3, 2, relu=True),
        Conv("c2", "c1", 16, 32, 3, 2, relu=True),
        Conv("c3", "c2", 32, 32, 3, 1, relu=True),
        Conv("c4", "c3", 32, 64, 3, 2, relu=True),
        Conv("c5", "c4", 64, 64, 3, 1, relu=True),
        Conv("c6", "c5", 64, 96, 3, 2, relu=True),
        Conv("c7", "c6", 96, 96, 3, 1, relu=True),
        Upsample("up1", "c7", 2, "bilinear"),
        Concat("cat1", "up1", "c5"),
        Conv("u1a", "cat1", 160, 64, 1, 1, relu=True),
        Conv("u1b", "u1a", 64, 64, 3, 1, relu=True),
        Upsample("up2", "u1b", 2, "bilinear"),
        Concat("cat2", "up2", "c3"),
        Conv("u2a", "cat2", 96, 32, 1, 1, relu=True),
        Conv("u2b", "u2a", 32, 32, 3, 1, relu=True),
        Conv("seg", "u2b", 32, NUM_LABELS, 1, 1, relu=False),
        Upsample("seg_up", "seg", 4, "bilinear"),
        Softmax("mask", "seg_up", channels=True),
        Conv("ev", "u2b", 32, EVIDENCE, 1, 1, relu=True),
    ]
    source = "ev"
    for level in range(6):  # 64 → 32 → 16 → 8 → 4 → 2 → 1
        layers.append(MaxPool(f"evmax{level}", source))
        source = f"evmax{level}"
    layers += [
        GlobalAvgPool("evpool", source),
        Dense("fc_max", "evpool", EVIDENCE, 2),
        GlobalAvgPool("ctxpool", "c7"),
        Dense("fc_avg", "ctxpool", 96, 2),
        Add("logits", "fc_max", "fc_avg"),
        Softmax("score", "logits", channels=False),
    ]
    return tuple(layers)


LAYERS = _layers()
# Training reads these pre-softmax nodes for its losses.
SEG_LOGITS = "seg_up"
CLS_LOGITS = "logits"


def parameter_shapes() -> dict[str, tuple[int, ...]]:
    """Every weight the model has, by `<layer>.weight` / `<layer>.bias`, in layer order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in LAYERS:
        if isinstance(layer, Conv):
            shapes[f"{layer.name}.weight"] = (layer.cout, layer.cin, layer.k, layer.k)
            shapes[f"{layer.name}.bias"] = (layer.cout,)
        elif isinstance(layer, Dense):
            shapes[f"{layer.name}.weight"] = (layer.cout, layer.cin)
            shapes[f"{layer.name}.bias"] = (layer.cout,)
    return shapes
