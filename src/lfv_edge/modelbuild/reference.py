"""Float64 numpy oracle for every kernel in kernels.c, and `forward()` for a whole `Network`.

Written from the PyTorch definitions, not from the C code, and for clarity rather than speed:
tests compare what the real libdlr.so computes with what these functions compute. Inputs are
taken as float64 copies; weights are the float32 values stored in `.params`, widened exactly.
Pure: no dlr, no cv2.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.graph import Layer, Network

Array = NDArray[np.float64]


def _f64(x: ArrayLike) -> Array:
    return np.asarray(x, dtype=np.float64)


def conv2d(
    x: ArrayLike, weight: ArrayLike, bias: ArrayLike, *, stride: int, relu: bool = False
) -> Array:
    """torch.nn.Conv2d(Ci, Co, K, stride, padding=K//2) on [1,Ci,H,W], plus optional ReLU."""
    data, w, b = _f64(x)[0], _f64(weight), _f64(bias)
    k = w.shape[2]
    pad = k // 2
    padded = np.pad(data, ((0, 0), (pad, pad), (pad, pad)))
    h_out = (data.shape[1] + 2 * pad - k) // stride + 1
    w_out = (data.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((w.shape[0], h_out, w_out)) + b[:, None, None]
    for ky in range(k):
        for kx in range(k):
            # Input pixels under tap (ky, kx) for every output pixel: [Ci, Ho, Wo].
            patch = padded[
                :,
                ky : ky + stride * (h_out - 1) + 1 : stride,
                kx : kx + stride * (w_out - 1) + 1 : stride,
            ]
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], patch)
    if relu:
        out = np.maximum(out, 0.0)
    return out[None]


def depthwise_conv2d(
    x: ArrayLike, weight: ArrayLike, bias: ArrayLike, *, stride: int, relu: bool = False
) -> Array:
    """torch.nn.Conv2d(C, C, 3, stride, padding=1, groups=C) on [1,C,H,W], optional ReLU."""
    data, w, b = _f64(x)[0], _f64(weight), _f64(bias)
    padded = np.pad(data, ((0, 0), (1, 1), (1, 1)))
    h_out = (data.shape[1] - 1) // stride + 1
    w_out = (data.shape[2] - 1) // stride + 1
    out = np.zeros((data.shape[0], h_out, w_out)) + b[:, None, None]
    for ky in range(3):
        for kx in range(3):
            patch = padded[
                :,
                ky : ky + stride * (h_out - 1) + 1 : stride,
                kx : kx + stride * (w_out - 1) + 1 : stride,
            ]
            out += w[:, 0, ky, kx][:, None, None] * patch
    if relu:
        out = np.maximum(out, 0.0)
    return out[None]


def relu(x: ArrayLike) -> Array:
    """max(x, 0)."""
    return np.maximum(_f64(x), 0.0)


def add(a: ArrayLike, b: ArrayLike, *, relu: bool = False) -> Array:
    """a + b, optional ReLU."""
    out = _f64(a) + _f64(b)
    return np.maximum(out, 0.0) if relu else out


def maxpool2(x: ArrayLike) -> Array:
    """torch.nn.MaxPool2d(2, 2): the last odd row/column is dropped (floor)."""
    data = _f64(x)
    h, w = data.shape[2] // 2, data.shape[3] // 2
    windows = data[:, :, : 2 * h, : 2 * w].reshape(data.shape[0], data.shape[1], h, 2, w, 2)
    return np.asarray(windows.max(axis=(3, 5)), dtype=np.float64)


def global_avg_pool(x: ArrayLike) -> Array:
    """Mean over H and W: [1,C,H,W] → [1,C]."""
    return np.asarray(_f64(x).mean(axis=(2, 3)), dtype=np.float64)


def dense(x: ArrayLike, weight: ArrayLike, bias: ArrayLike) -> Array:
    """torch.nn.Linear: x · weightᵀ + bias."""
    return np.asarray(_f64(x) @ _f64(weight).T + _f64(bias), dtype=np.float64)


def softmax(x: ArrayLike, axis: int = -1) -> Array:
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    data = _f64(x)
    shifted = np.exp(data - data.max(axis=axis, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=axis, keepdims=True), dtype=np.float64)


def softmax_channels(x: ArrayLike) -> Array:
    """Softmax over the channel axis of [1,C,H,W], per pixel."""
    return softmax(x, axis=1)


def upsample_nearest(x: ArrayLike, factor: tuple[int, int]) -> Array:
    """F.interpolate(mode="nearest", scale_factor=f) for integer f: out[y, x] = in[y // f, x // f]."""
    data = _f64(x)
    rows = np.arange(data.shape[2] * factor[0]) // factor[0]
    cols = np.arange(data.shape[3] * factor[1]) // factor[1]
    return data[:, :, rows[:, None], cols[None, :]]


def _linear_taps(size: int, factor: int) -> tuple[NDArray[np.int64], NDArray[np.int64], Array]:
    """PyTorch's align_corners=False source coordinates for one axis: (i0, i1, weight of i1)."""
    dst = np.arange(size * factor, dtype=np.float64)
    src = np.maximum((dst + 0.5) / factor - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0


def upsample_bilinear(x: ArrayLike, factor: tuple[int, int]) -> Array:
    """F.interpolate(mode="bilinear", align_corners=False, scale_factor=f) for integer f."""
    data = _f64(x)
    y0, y1, ly = _linear_taps(data.shape[2], factor[0])
    x0, x1, lx = _linear_taps(data.shape[3], factor[1])
    ly, lx = ly[:, None], lx[None, :]
    top = (
        data[:, :, y0[:, None], x0[None, :]] * (1 - lx) + data[:, :, y0[:, None], x1[None, :]] * lx
    )
    bottom = (
        data[:, :, y1[:, None], x0[None, :]] * (1 - lx) + data[:, :, y1[:, None], x1[None, :]] * lx
    )
    return top * (1 - ly) + bottom * ly


def concat(a: ArrayLike, b: ArrayLike) -> Array:
    """torch.cat([a, b], dim=1)."""
    return np.concatenate([_f64(a), _f64(b)], axis=1)


def evaluate(layer: Layer, inputs: list[Array]) -> Array:
    """One recorded layer on float64 inputs."""
    weights = [array for _, array in layer.weights]
    kind: str = layer.kind  # widened so an unknown kind added later reaches the error below
    if kind == "conv2d":
        return conv2d(inputs[0], weights[0], weights[1], stride=layer.stride, relu=layer.relu)
    if kind == "depthwise_conv2d":
        return depthwise_conv2d(
            inputs[0], weights[0], weights[1], stride=layer.stride, relu=layer.relu
        )
    if kind == "relu":
        return relu(inputs[0])
    if kind == "add":
        return add(inputs[0], inputs[1], relu=layer.relu)
    if kind == "maxpool2":
        return maxpool2(inputs[0])
    if kind == "global_avg_pool":
        return global_avg_pool(inputs[0])
    if kind == "dense":
        return dense(inputs[0], weights[0], weights[1])
    if kind == "softmax":
        return softmax(inputs[0])
    if kind == "softmax_channels":
        return softmax_channels(inputs[0])
    if kind == "upsample_nearest":
        return upsample_nearest(inputs[0], layer.factor)
    if kind == "upsample_bilinear":
        return upsample_bilinear(inputs[0], layer.factor)
    if kind == "concat":
        return concat(inputs[0], inputs[1])
    msg = f"reference: no implementation for layer kind {layer.kind!r}"
    raise BuildError(msg)


def forward(network: Network, data: ArrayLike) -> list[Array]:
    """Run the whole network in float64; outputs in the network's output order."""
    values: dict[int, Array] = {network.input_tensor.index: _f64(data)}
    if values[network.input_tensor.index].shape != network.input_shape:
        msg = f"reference: input shape {list(np.shape(data))} != {list(network.input_shape)}"
        raise BuildError(msg)
    for layer in network.layers:
        result = evaluate(layer, [values[tensor.index] for tensor in layer.inputs])
        if result.shape != layer.output.shape:
            msg = f"reference: {layer.name} produced {list(result.shape)}, graph says {list(layer.output.shape)}"
            raise BuildError(msg)
        values[layer.output.index] = result
    return [values[tensor.index] for tensor in network.outputs]
