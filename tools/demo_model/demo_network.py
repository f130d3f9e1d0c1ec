"""architecture.LAYERS + weights.npz → a modelbuild `Network` (the DLR graph of the demo model).

Torch-free: runs in the project venv. Each architecture layer maps to exactly one kernel of
src/lfv_edge/modelbuild/kernels.c, with the same semantics torch used while training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from architecture import (
    INPUT_HEIGHT,
    INPUT_NAME,
    INPUT_WIDTH,
    LAYERS,
    OUTPUT_NAMES,
    Add,
    Concat,
    Conv,
    Dense,
    GlobalAvgPool,
    MaxPool,
    Upsample,
    parameter_shapes,
)
from numpy.typing import NDArray

from lfv_edge.modelbuild.graph import Network, Tensor


def read_weights(path: Path) -> dict[str, NDArray[np.float32]]:
    """The folded float32 weights, checked against the architecture's shapes."""
    with np.load(path) as arrays:
        weights = {key: np.asarray(arrays[key]) for key in arrays.files}
    expected = parameter_shapes()
    if set(weights) != set(expected):
        msg = (
            f"{path}: weights {sorted(set(weights) ^ set(expected))} do not match the architecture"
        )
        raise ValueError(msg)
    for key, shape in expected.items():
        if weights[key].shape != shape or weights[key].dtype != np.float32:
            msg = f"{path}: {key} is {weights[key].dtype}{list(weights[key].shape)}, expected float32{list(shape)}"
            raise ValueError(msg)
    return {key: weights[key] for key in expected}


def build_network(weights: dict[str, NDArray[np.float32]]) -> Network:
    """The demo model as a modelbuild Network, outputs (mask, score) in LFV order."""
    net = Network("lfv_demo")
    nodes: dict[str, Tensor] = {
        INPUT_NAME: net.input((1, 3, INPUT_HEIGHT, INPUT_WIDTH), name=INPUT_NAME)
    }
    for layer in LAYERS:
        name = layer.name
        if isinstance(layer, Conv):
            nodes[name] = net.conv2d(
                nodes[layer.src], weights[f"{name}.weight"], weights[f"{name}.bias"],
                stride=layer.stride, relu=layer.relu, name=name,
            )  # fmt: skip
        elif isinstance(layer, Upsample):
            upsample = net.upsample_bilinear if layer.mode == "bilinear" else net.upsample_nearest
            nodes[name] = upsample(nodes[layer.src], layer.factor, name=name)
        elif isinstance(layer, Concat):
            nodes[name] = net.concat(nodes[layer.a], nodes[layer.b], name=name)
        elif isinstance(layer, MaxPool):
            nodes[name] = net.maxpool2(nodes[layer.src], name=name)
        elif isinstance(layer, GlobalAvgPool):
            nodes[name] = net.global_avg_pool(nodes[layer.src], name=name)
        elif isinstance(layer, Dense):
            nodes[name] = net.dense(
                nodes[layer.src], weights[f"{name}.weight"], weights[f"{name}.bias"], name=name
            )
        elif isinstance(layer, Add):
            nodes[name] = net.add(nodes[layer.a], nodes[layer.b], name=name)
        else:  # Softmax: the last member of the Layer union
            soft = net.softmax_channels if layer.channels else net.softmax
            nodes[name] = soft(nodes[layer.src], name=name)
    net.set_outputs(*(nodes[name] for name in OUTPUT_NAMES))
    return net
