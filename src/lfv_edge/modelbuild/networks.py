"""Ready-made deterministic networks for tests, demos and benchmarks.

All weights come from `numpy.random.default_rng(seed)` or are set by hand, so a network is the
same on every machine. The input is the LFV model input: float32 [1, 3, H, W], RGB, after
pre-processing (docs/model-packages.md §6). `unit_rgb_affine` undoes that pre-processing inside
the first layer, so the controllable networks react to the image's RGB values in [0, 1]
(u = R/255, …) whatever the package's `normalize` / `image_range_scale` flags are.

* `reference_classifier`: the doc's toy model (conv 3×3 3→8 + ReLU → GAP → dense 8→C →
  softmax), any H×W, any class count, softmax not saturated.
* `controllable_classifier`: P(anomaly) = σ(CLS_GAIN · (r̄ − CLS_CENTER)), r̄ = mean of R/255
  over the model input (σ = logistic); every other class gets the rest in one logit.
* `controllable_segmenter`: per pixel logits z_background = 0,
  z_red = SEG_SHARPNESS · (u_R − u_G − u_B − SEG_MARGIN), z_blue = SEG_SHARPNESS ·
  (u_B − u_R − u_G − SEG_MARGIN); mask = softmax over these 3 channels. So a pixel is class 1
  ("red") iff u_R − u_G − u_B > 0.5, class 2 ("blue") iff u_B − u_R − u_G > 0.5, else
  background. Optional score head: P(anomaly) = σ(SEG_GAIN · (f − SEG_CENTER)) with
  f = mean over pixels of (1 − mask[background]), ≈ the anomalous area fraction.
* `bench_network`: about 133 M multiply-adds at 1000×1000 (conv s2 → conv s2 → pool →
  depthwise → 1×1 + residual → GAP → dense → softmax, optional mask head), tens of ms on two
  cores.

Pure: no dlr, no cv2.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.graph import Network, Tensor

# LFV's normalisation constants (docs/model-packages.md §6), R, G, B.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CLS_GAIN = 20.0
CLS_CENTER = 0.5
SEG_SHARPNESS = 20.0
SEG_MARGIN = 0.5
SEG_GAIN = 50.0
SEG_CENTER = 0.05
SEGMENTER_CLASSES = 3  # background, red, blue


def unit_rgb_affine(
    *, normalize: bool, image_range_scale: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(scale, offset) per channel such that u = scale · x + offset is the RGB value in [0, 1].

    x is the model input after LFV pre-processing: divided by 255 if `image_range_scale`,
    then (x − mean) / std if `normalize`.
    """
    scale = np.ones(3) if image_range_scale else np.full(3, 1.0 / 255.0)
    offset = np.zeros(3)
    if normalize:
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        # x = (v − mean) / std with v = u (scaled) or 255·u (unscaled)  ⇒  v = std·x + mean
        offset = mean * scale
        scale = std * scale
    return scale, offset


def to_model_input(
    rgb: ArrayLike, *, normalize: bool = True, image_range_scale: bool = True
) -> NDArray[np.float32]:
    """An H×W×3 RGB uint8 image (already at the model size) → the float32 [1,3,H,W] input.

    LFV's arithmetic without the resize; tests use it to feed networks directly.
    """
    pixels = np.asarray(rgb, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        msg = f"expected an H×W×3 RGB image, got shape {list(pixels.shape)}"
        raise BuildError(msg)
    if image_range_scale:
        pixels = pixels / 255.0
    if normalize:
        pixels = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        msg = f"image size {width}×{height} must be positive"
        raise BuildError(msg)


def _two_class_head(
    net: Network, feature: Tensor, *, gain: float, center: float, anomaly_index: int, name: str
) -> Tensor:
    """[1,1] feature f → softmax over 2 classes with logit(anomaly) − logit(normal) = g·(f − c)."""
    if anomaly_index not in (0, 1):
        msg = f"anomaly_index must be 0 or 1, got {anomaly_index}"
        raise BuildError(msg)
    weight = np.zeros((2, 1))
    bias = np.zeros(2)
    weight[anomaly_index, 0] = gain
    bias[anomaly_index] = -gain * center
    logits = net.dense(feature, weight, bias, name=f"{name}_logits")
    return net.softmax(logits, name=f"{name}_probabilities")


def reference_classifier(
    height: int = 224, width: int = 224, *, num_classes: int = 2, seed: int = 1234
) -> Network:
    """The doc's reference model: conv 3×3 (3→8) + ReLU → GAP → dense (8→C) → softmax."""
    _check_size(height, width)
    if num_classes < 2:
        msg = f"a classifier needs at least 2 classes, got {num_classes}"
        raise BuildError(msg)
    rng = np.random.default_rng(seed)
    net = Network("reference_classifier")
    x = net.input((1, 3, height, width))
    # Small weights keep the softmax away from 0/1 for any normalised image (≈0.2–0.8).
    # Layer names give the doc's weight names (p_conv_weight, …; a 1,300-byte .params file).
    features = net.conv2d(
        x, rng.normal(0.0, 0.2, (8, 3, 3, 3)), rng.normal(0.0, 0.1, 8), relu=True, name="p_conv"
    )
    pooled = net.global_avg_pool(features, name="pool")
    logits = net.dense(
        pooled,
        rng.normal(0.0, 0.5, (num_classes, 8)),
        rng.normal(0.0, 0.1, num_classes),
        name="p_fc",
    )
    net.set_outputs(net.softmax(logits, name="probabilities"))
    return net


def controllable_classifier(
    height: int,
    width: int,
    *,
    anomaly_index: int = 0,
    normalize: bool = True,
    image_range_scale: bool = True,
    gain: float = CLS_GAIN,
    center: float = CLS_CENTER,
) -> Network:
    """Two classes; P(anomaly) = σ(gain · (mean(R/255) − center)) at output index `anomaly_index`."""
    _check_size(height, width)
    scale, offset = unit_rgb_affine(normalize=normalize, image_range_scale=image_range_scale)
    net = Network("controllable_classifier")
    x = net.input((1, 3, height, width))
    # A 1×1 conv picks u_R = scale_R·x_R + offset_R exactly (no padding, so no border effects).
    red = net.conv2d(x, [[[[scale[0]]], [[0.0]], [[0.0]]]], [offset[0]], name="red")
    mean_red = net.global_avg_pool(red, name="mean_red")
    net.set_outputs(
        _two_class_head(
            net, mean_red, gain=gain, center=center, anomaly_index=anomaly_index, name="cls"
        )
    )
    return net


def controllable_probability(
    red_mean: float, *, gain: float = CLS_GAIN, center: float = CLS_CENTER
) -> float:
    """P(anomaly) of `controllable_classifier` for an image whose mean R/255 is `red_mean`."""
    return _sigmoid(gain * (red_mean - center))


def red_mean_for_probability(
    probability: float, *, gain: float = CLS_GAIN, center: float = CLS_CENTER
) -> float:
    """Inverse of `controllable_probability`: the mean R/255 that yields `probability`."""
    if not 0.0 < probability < 1.0:
        msg = f"probability must be strictly between 0 and 1, got {probability}"
        raise BuildError(msg)
    return center + math.log(probability / (1.0 - probability)) / gain


def controllable_segmenter(
    height: int,
    width: int,
    *,
    classification_head: bool = True,
    anomaly_index: int = 0,
    normalize: bool = True,
    image_range_scale: bool = True,
) -> Network:
    """Mask [1,3,H,W] (background/red/blue probabilities) first, then the optional score [1,2]."""
    _check_size(height, width)
    scale, offset = unit_rgb_affine(normalize=normalize, image_range_scale=image_range_scale)
    k, t = SEG_SHARPNESS, SEG_MARGIN
    # Logits as linear functions of u = scale·x + offset, folded into one 1×1 conv.
    in_unit = np.array(
        [
            [0.0, 0.0, 0.0],  # background: 0
            [1.0, -1.0, -1.0],  # red: u_R − u_G − u_B − t
            [-1.0, -1.0, 1.0],  # blue: u_B − u_R − u_G − t
        ]
    )
    weight = k * in_unit * scale[None, :]
    bias = k * (in_unit @ offset - np.array([0.0, t, t]))
    net = Network("controllable_segmenter")
    x = net.input((1, 3, height, width))
    logits = net.conv2d(x, weight[:, :, None, None], bias, name="pixel_logits")
    mask = net.softmax_channels(logits, name="mask")
    if not classification_head:
        net.set_outputs(mask)
        return net
    anomalous = net.conv2d(mask, [[[[0.0]], [[1.0]], [[1.0]]]], [0.0], name="anomalous")
    fraction = net.global_avg_pool(anomalous, name="anomalous_fraction")
    score = _two_class_head(
        net, fraction, gain=SEG_GAIN, center=SEG_CENTER, anomaly_index=anomaly_index, name="cls"
    )
    net.set_outputs(mask, score)
    return net


def expected_pixel_classes(rgb: ArrayLike) -> NDArray[np.int64]:
    """The argmax class `controllable_segmenter` gives each pixel of an H×W×3 RGB uint8 image.

    Exact away from the decision boundaries (keep |margin| ≥ 0.01 in test images).
    """
    u = np.asarray(rgb, dtype=np.float64) / 255.0
    red = u[..., 0] - u[..., 1] - u[..., 2] - SEG_MARGIN
    blue = u[..., 2] - u[..., 0] - u[..., 1] - SEG_MARGIN
    classes = np.zeros(u.shape[:2], dtype=np.int64)
    classes[red > 0] = 1
    classes[blue > 0] = 2
    return classes


def segmenter_probability(anomalous_fraction: float) -> float:
    """P(anomaly) of the segmenter's score head for f = mean(1 − mask[background])."""
    return _sigmoid(SEG_GAIN * (anomalous_fraction - SEG_CENTER))


def bench_network(
    height: int = 1000,
    width: int = 1000,
    *,
    segmentation_head: bool = False,
    classification_head: bool = True,
    num_classes: int = 2,
    num_pixel_classes: int = SEGMENTER_CLASSES,
    seed: int = 7,
) -> Network:
    """A small CNN sized for throughput benchmarks (≈133 M multiply-adds at 1000×1000).

    With `segmentation_head`, H and W must be multiples of 8 (the mask is upsampled ×8 back to
    the input size) and the mask comes first, as in LFV.
    """
    _check_size(height, width)
    if not (segmentation_head or classification_head):
        msg = "bench_network needs at least one head"
        raise BuildError(msg)
    if segmentation_head and (height % 8 or width % 8):
        msg = f"bench_network with a mask head needs H and W divisible by 8, got {width}×{height}"
        raise BuildError(msg)
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...]) -> NDArray[np.float64]:
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)

    net = Network("bench_network")
    x = net.input((1, 3, height, width))
    c1 = net.conv2d(x, he((8, 3, 3, 3)), rng.normal(0, 0.05, 8), stride=2, relu=True, name="c1")
    c2 = net.conv2d(c1, he((16, 8, 3, 3)), rng.normal(0, 0.05, 16), stride=2, relu=True, name="c2")
    pooled = net.maxpool2(c2, name="pool")
    dw = net.depthwise_conv2d(
        pooled, he((16, 1, 3, 3)), rng.normal(0, 0.05, 16), relu=True, name="dw"
    )
    pw = net.conv2d(dw, he((16, 16, 1, 1)) * 0.5, rng.normal(0, 0.05, 16), name="pw")
    features = net.add(pw, pooled, relu=True, name="residual")
    outputs: list[Tensor] = []
    if segmentation_head:
        pixel = net.conv2d(
            features,
            he((num_pixel_classes, 16, 1, 1)) * 0.5,
            np.zeros(num_pixel_classes),
            name="pixel_logits",
        )
        outputs.append(
            net.softmax_channels(net.upsample_bilinear(pixel, 8, name="up"), name="mask")
        )
    if classification_head:
        pooled_features = net.global_avg_pool(features, name="gap")
        logits = net.dense(
            pooled_features,
            rng.normal(0.0, 0.05, (num_classes, 16)),  # features reach ~4: keep logits O(1)
            np.zeros(num_classes),
            name="fc",
        )
        outputs.append(net.softmax(logits, name="probabilities"))
    net.set_outputs(*outputs)
    return net
