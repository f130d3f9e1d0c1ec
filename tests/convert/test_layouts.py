"""Layouts: NCHWc activations, packed weights, broadcast operands — numpy folding and ONNX agree."""

from __future__ import annotations

import numpy as np
import pytest

from lfv_edge.convert.layouts import (
    Blocked,
    BlockedKernel,
    BlockedOperand,
    ChannelVector,
    DensePacked,
    Layout,
    Plain,
    activation_layout,
    convert_layout,
)
from lfv_edge.convert.onnx_graph import OnnxGraph
from lfv_edge.convert.plans import to_logical, to_raw
from lfv_edge.model.onnx_runner import OnnxSession


def _tvm_pack_activation(x: np.ndarray, block: int) -> np.ndarray:
    """TVM's layout_transform NCHW → NCHW{block}c, written out with loops' index algebra."""
    n, c, h, w = x.shape
    packed: np.ndarray = x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)
    return packed


def test_blocked_activation_round_trip_matches_tvm_semantics() -> None:
    x = np.arange(2 * 16 * 3 * 5, dtype=np.float32).reshape(2, 16, 3, 5)
    raw = _tvm_pack_activation(x, 8)
    # element [n, c1, h, w, c] of the raw buffer is channel c1*8 + c
    assert raw[1, 1, 2, 4, 3] == x[1, 11, 2, 4]
    np.testing.assert_array_equal(to_logical(Blocked(8), raw), x)
    np.testing.assert_array_equal(to_raw(Blocked(8), x, raw.shape, "float32"), raw)


def test_packed_kernel_unpacks_to_oihw() -> None:
    w = np.random.default_rng(0).standard_normal((16, 24, 3, 3)).astype(np.float32)
    # OIHW8i4o: raw [O/4, I/8, kh, kw, 8, 4], element [o1, i1, y, x, i, o] = w[o1*4+o, i1*8+i, y, x]
    raw = w.reshape(4, 4, 3, 8, 3, 3).transpose(0, 2, 4, 5, 3, 1)
    np.testing.assert_array_equal(to_logical(BlockedKernel(), raw), w)
    np.testing.assert_array_equal(to_raw(BlockedKernel(), w, raw.shape, "float32"), raw)


def test_dense_packed_weight_unpacks() -> None:
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    raw = w.reshape(3, 4, 5).transpose(0, 2, 1)  # [M/4, K, 4]
    np.testing.assert_array_equal(to_logical(DensePacked(), raw), w)


@pytest.mark.parametrize(
    "operand_shape", [(2, 1, 1, 8), (1, 1, 8), (1, 2, 1, 1, 8), (8,), (1, 2, 3, 4, 8), (3, 1, 1)]
)
def test_operand_of_a_blocked_activation_broadcasts_like_the_raw_one(
    operand_shape: tuple[int, ...],
) -> None:
    rng = np.random.default_rng(1)
    act_raw = (1, 2, 3, 4, 8)
    act = rng.standard_normal(act_raw).astype(np.float32)
    operand = rng.standard_normal(operand_shape).astype(np.float32)
    layout = BlockedOperand(act_raw)
    logical_result = to_logical(Blocked(8), act) * to_logical(layout, operand)
    np.testing.assert_allclose(to_logical(Blocked(8), act * operand), logical_result, rtol=1e-6)


def test_channel_vector_and_activation_layout_rule() -> None:
    assert ChannelVector(4).logical_shape((2, 8)) == (16, 1, 1)
    assert activation_layout((1, 4, 5, 6, 8)) == Blocked(8)
    assert activation_layout((1, 32, 5, 6)) == Plain()


@pytest.mark.parametrize(
    ("layout", "raw_shape"),
    [
        (Blocked(4), (1, 3, 5, 6, 4)),
        (BlockedKernel(), (2, 3, 3, 3, 4, 8)),
        (DensePacked(), (3, 7, 4)),
    ],
)
def test_onnx_nodes_do_what_numpy_folding_does(layout: Layout, raw_shape: tuple[int, ...]) -> None:
    raw = np.random.default_rng(2).standard_normal(raw_shape).astype(np.float32)
    g = OnnxGraph()
    x = g.input("x", raw_shape)
    logical = layout.unpack(g, x)
    g.output(logical, "logical")
    g.output(layout.pack(g, logical, raw_shape), "repacked")
    got, back = OnnxSession(g.to_model()).run({"x": raw})
    np.testing.assert_array_equal(got, to_logical(layout, raw).astype(np.float32))
    np.testing.assert_array_equal(back, raw)


def test_converting_between_blockings_goes_through_plain() -> None:
    x = np.random.default_rng(3).standard_normal((1, 16, 2, 3)).astype(np.float32)
    g = OnnxGraph()
    value = OnnxGraph.const(x)
    same = convert_layout(g, value, Blocked(8), Blocked(8), (1, 2, 2, 3, 8))
    assert same is value  # equal layouts: nothing emitted
    other = convert_layout(g, value, Blocked(8), Blocked(4), (1, 2, 2, 3, 8))
    assert other.const is not None
    # Both blockings describe the same plain tensor, so the plain value does not change.
    np.testing.assert_array_equal(other.const, x)
