"""The demo model in torch (training only): architecture.LAYERS, interpreted layer by layer.

Convolutions followed by ReLU carry a BatchNorm while training; `folded_weights` folds it into
the convolution's weight and bias, so the exported model is plain conv+bias(+ReLU), exactly
the ops of the DLR kernels. Torch is a build-time tool, never a runtime dependency.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional torch alias
from architecture import (
    LAYERS,
    Add,
    Concat,
    Conv,
    Dense,
    GlobalAvgPool,
    MaxPool,
    Softmax,
    Upsample,
    parameter_shapes,
)
from numpy.typing import NDArray
from torch import Tensor, nn


class DemoNet(nn.Module):
    """Evaluates LAYERS in order; `forward` returns every named node."""

    def __init__(self, batch_norm: bool = True) -> None:
        super().__init__()
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        self.denses = nn.ModuleDict()
        for layer in LAYERS:
            if isinstance(layer, Conv):
                norm = batch_norm and layer.relu
                self.convs[layer.name] = nn.Conv2d(
                    layer.cin, layer.cout, layer.k, layer.stride, layer.k // 2, bias=not norm
                )
                if norm:
                    self.norms[layer.name] = nn.BatchNorm2d(layer.cout)
            elif isinstance(layer, Dense):
                self.denses[layer.name] = nn.Linear(layer.cin, layer.cout)

    def forward(self, data: Tensor) -> dict[str, Tensor]:
        nodes: dict[str, Tensor] = {"data": data}
        for layer in LAYERS:
            nodes[layer.name] = self._apply(layer, nodes)
        return nodes

    def _apply(self, layer: object, nodes: dict[str, Tensor]) -> Tensor:
        if isinstance(layer, Conv):
            x = self.convs[layer.name](nodes[layer.src])
            if layer.name in self.norms:
                x = self.norms[layer.name](x)
            return F.relu(x) if layer.relu else x
        if isinstance(layer, Upsample):
            if layer.mode == "bilinear":
                return F.interpolate(
                    nodes[layer.src],
                    scale_factor=layer.factor,
                    mode="bilinear",
                    align_corners=False,
                )
            return F.interpolate(nodes[layer.src], scale_factor=layer.factor, mode="nearest")
        if isinstance(layer, Concat):
            return torch.cat([nodes[layer.a], nodes[layer.b]], dim=1)
        if isinstance(layer, MaxPool):
            return F.max_pool2d(nodes[layer.src], 2, 2)
        if isinstance(layer, GlobalAvgPool):
            return nodes[layer.src].mean(dim=(2, 3))
        if isinstance(layer, Dense):
            return self.denses[layer.name](nodes[layer.src])
        if isinstance(layer, Add):
            return nodes[layer.a] + nodes[layer.b]
        if isinstance(layer, Softmax):
            return torch.softmax(nodes[layer.src], dim=1 if layer.channels else -1)
        msg = f"unknown layer {layer!r}"
        raise TypeError(msg)


def folded_weights(net: DemoNet) -> dict[str, NDArray[np.float32]]:
    """Eval-mode weights with every BatchNorm folded into its conv, as float32 arrays."""
    out: dict[str, NDArray[np.float32]] = {}
    with torch.no_grad():
        for name, conv in net.convs.items():
            weight = conv.weight.double()
            bias = (
                conv.bias.double()
                if conv.bias is not None
                else torch.zeros(weight.shape[0], dtype=torch.float64)
            )
            if name in net.norms:
                norm = net.norms[name]
                assert isinstance(norm, nn.BatchNorm2d)  # noqa: S101 - structural invariant
                assert norm.running_mean is not None  # noqa: S101
                assert norm.running_var is not None  # noqa: S101
                gain = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
                weight = weight * gain[:, None, None, None]
                bias = (bias - norm.running_mean.double()) * gain + norm.bias.double()
            out[f"{name}.weight"] = weight.float().numpy()
            out[f"{name}.bias"] = bias.float().numpy()
        for name, dense in net.denses.items():
            out[f"{name}.weight"] = dense.weight.detach().float().numpy()
            out[f"{name}.bias"] = dense.bias.detach().float().numpy()
    shapes = parameter_shapes()
    ordered = {key: np.ascontiguousarray(out[key], dtype=np.float32) for key in shapes}
    for key, shape in shapes.items():
        if ordered[key].shape != shape:
            msg = f"{key}: shape {ordered[key].shape} != {shape}"
            raise ValueError(msg)
    return ordered


def load_folded(weights: dict[str, NDArray[np.float32]]) -> DemoNet:
    """A BatchNorm-free DemoNet holding folded weights (what the package runs)."""
    net = DemoNet(batch_norm=False)
    with torch.no_grad():
        for name, conv in net.convs.items():
            conv.weight.copy_(torch.from_numpy(weights[f"{name}.weight"]))
            assert conv.bias is not None  # noqa: S101 - batch_norm=False keeps every bias
            conv.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))
        for name, dense in net.denses.items():
            dense.weight.copy_(torch.from_numpy(weights[f"{name}.weight"]))
            dense.bias.copy_(torch.from_numpy(weights[f"{name}.bias"]))
    return net.eval()
