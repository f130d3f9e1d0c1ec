"""Every kernel, alone in a graph, through the real libdlr.so, against the float64 reference.

Inputs are O(1) (standard normal) and weights are scaled by 1/sqrt(fan-in), so outputs are
O(1) and the bound is absolute: max |DLR − reference| ≤ 1e-5. The main shape (1, 8, 65, 91)
has odd sides (floor rules of stride 2 and pooling) and is large enough for every kernel to
split its work over the TVM pool; the tiny shape (1, 2, 5, 7) runs every kernel serially.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.modelbuild import reference
from lfv_edge.modelbuild.graph import GraphBuilder, Network, Tensor
from tests.modelbuild.harness import DlrHarness, max_abs_diff

TOLERANCE = 1e-5
MAIN = (1, 8, 65, 91)
TINY = (1, 2, 5, 7)

Builder = Callable[[Network, Tensor, np.random.Generator], Tensor]


def _scaled(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> NDArray[np.float64]:
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)


def _conv(k: int, stride: int, relu: bool) -> Builder:
    def build(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
        ci = x.shape[1]
        return net.conv2d(
            x,
            _scaled(rng, (6, ci, k, k), ci * k * k),
            rng.normal(0, 0.5, 6),
            stride=stride,
            relu=relu,
        )

    return build


def _dwconv(stride: int, relu: bool) -> Builder:
    def build(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
        c = x.shape[1]
        return net.depthwise_conv2d(
            x, _scaled(rng, (c, 1, 3, 3), 9), rng.normal(0, 0.5, c), stride=stride, relu=relu
        )

    return build


def _dense(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
    pooled = net.global_avg_pool(x)
    c = x.shape[1]
    return net.dense(pooled, _scaled(rng, (5, c), 1), rng.normal(0, 0.5, 5))


def _softmax(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
    logits = _dense(net, x, rng)
    return net.softmax(logits)


def _add(relu: bool) -> Builder:
    def build(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
        c = x.shape[1]
        other = net.conv2d(x, _scaled(rng, (c, c, 1, 1), c), np.zeros(c))
        return net.add(x, other, relu=relu)

    return build


def _concat(net: Network, x: Tensor, rng: np.random.Generator) -> Tensor:
    c = x.shape[1]
    other = net.conv2d(x, _scaled(rng, (3, c, 3, 3), 9 * c), np.zeros(3))
    return net.concat(x, other)


OPS: dict[str, Builder] = {
    **{
        f"conv2d_k{k}_s{s}{'_relu' if r else ''}": _conv(k, s, r)
        for k in (1, 3)
        for s in (1, 2)
        for r in (False, True)
    },
    **{
        f"dwconv2d_s{s}{'_relu' if r else ''}": _dwconv(s, r) for s in (1, 2) for r in (False, True)
    },
    "relu": lambda net, x, rng: net.relu(x),
    "add": _add(relu=False),
    "add_relu": _add(relu=True),
    "maxpool2": lambda net, x, rng: net.maxpool2(x),
    "global_avg_pool": lambda net, x, rng: net.global_avg_pool(x),
    "dense": _dense,
    "softmax": _softmax,
    "softmax_channels": lambda net, x, rng: net.softmax_channels(x),
    "upsample_nearest_2": lambda net, x, rng: net.upsample_nearest(x, 2),
    "upsample_nearest_3x2": lambda net, x, rng: net.upsample_nearest(x, (3, 2)),
    "upsample_bilinear_2": lambda net, x, rng: net.upsample_bilinear(x, 2),
    "upsample_bilinear_3": lambda net, x, rng: net.upsample_bilinear(x, 3),
    "upsample_bilinear_2x4": lambda net, x, rng: net.upsample_bilinear(x, (2, 4)),
    "concat": _concat,
}


def _single_op_network(name: str, shape: tuple[int, ...]) -> Network:
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across runs
    net = Network(name)
    x = net.input(shape)
    net.set_outputs(OPS[name](net, x, rng))
    return net


@pytest.mark.parametrize("shape", [MAIN, TINY], ids=["65x91", "5x7"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_op_matches_reference_through_libdlr(
    dlr: DlrHarness, op: str, shape: tuple[int, ...]
) -> None:
    # given
    network = _single_op_network(op, shape)
    data = np.random.default_rng(42).normal(size=shape).astype(np.float32)
    # when
    outputs = dlr.run(network, data)
    # then
    diff = max_abs_diff(outputs, reference.forward(network, data))
    assert diff <= TOLERANCE, f"{op} at {shape}: max abs diff {diff:.3g} > {TOLERANCE}"


def test_softmax_channels_sums_to_one_and_survives_large_logits(dlr: DlrHarness) -> None:
    # given: logits up to ±200, where a naive exp overflows float32
    net = Network("big_logits")
    x = net.input((1, 4, 33, 47))
    net.set_outputs(net.softmax_channels(x))
    data = (np.random.default_rng(1).normal(size=(1, 4, 33, 47)) * 80).astype(np.float32)
    # when
    (mask,) = dlr.run(net, data)
    # then
    assert np.isfinite(mask).all(), "softmax must subtract the per-pixel maximum"
    assert np.abs(mask.sum(axis=1) - 1).max() < 1e-6, "probabilities sum to 1 at every pixel"
    diff = max_abs_diff([mask], reference.forward(net, data))
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g}"


def test_upsample_nearest_repeats_each_pixel_exactly(dlr: DlrHarness) -> None:
    # given
    net = Network("nearest")
    x = net.input((1, 2, 3, 4))
    net.set_outputs(net.upsample_nearest(x, 3))
    data = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    # when
    (out,) = dlr.run(net, data)
    # then
    expected = data.repeat(3, axis=2).repeat(3, axis=3)
    assert np.array_equal(out, expected), "nearest upsampling is a pure copy: bit-exact"


def test_elementwise_kernels_accept_flattened_tensors(dlr: DlrHarness) -> None:
    # given: flatten_data "1" makes the runtime pass every tensor as 1-D
    shape = (1, 3, 40, 50)
    builder = GraphBuilder()
    x = builder.add_input("data", shape)
    y = builder.add_op("lfv_relu", [x], shape, flatten=True, name="relu")
    builder.set_outputs([builder.add_op("lfv_add_relu", [y, x], shape, flatten=True, name="add")])
    data = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    # when
    (out,) = dlr.load_graph(builder, shape).run(data)
    # then
    assert '"flatten_data": "1"' in builder.to_json(), "flatten=True writes the string '1'"
    expected = np.maximum(np.maximum(data, 0) + data, 0)
    assert np.array_equal(out, expected), "relu/add are elementwise whatever the tensor rank"
