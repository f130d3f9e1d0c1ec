"""Kernel hygiene through the real runtime: a bad call fails with the kernel's own message.

The graph declares every shape and DLR allocates what it declares, so a wrong shape reaches
the kernel; it must refuse with a readable message (set via __TVMAPISetLastError) that
arrives as InferenceError from `run()`, never compute garbage or crash.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from lfv_edge.errors import InferenceError
from lfv_edge.modelbuild.graph import GraphBuilder, TensorRef
from tests.modelbuild.harness import DlrHarness

IN = (1, 2, 6, 8)

GraphCase = Callable[[GraphBuilder, TensorRef], TensorRef]


def _conv_with_wrong_output(builder: GraphBuilder, x: TensorRef) -> TensorRef:
    weight = builder.add_weight("w", np.zeros((4, 2, 3, 3)))
    bias = builder.add_weight("b", np.zeros(4))
    return builder.add_op("lfv_conv2d_k3_s2", [x, weight, bias], (1, 4, 6, 8))


def _conv_with_wrong_weight(builder: GraphBuilder, x: TensorRef) -> TensorRef:
    weight = builder.add_weight("w", np.zeros((4, 3, 3, 3)))
    bias = builder.add_weight("b", np.zeros(4))
    return builder.add_op("lfv_conv2d_k3_s1", [x, weight, bias], (1, 4, 6, 8))


def _dense_with_wrong_weight(builder: GraphBuilder, x: TensorRef) -> TensorRef:
    pooled = builder.add_op("lfv_global_avg_pool", [x], (1, 2))
    weight = builder.add_weight("w", np.zeros((3, 5)))
    bias = builder.add_weight("b", np.zeros(3))
    return builder.add_op("lfv_dense", [pooled, weight, bias], (1, 3))


CASES: dict[str, tuple[GraphCase, str]] = {
    "relu output shape": (
        lambda b, x: b.add_op("lfv_relu", [x], (1, 2, 6, 9)),
        r"lfv_relu: .*output has shape \[1,2,6,9\], expected \[1,2,6,8\]",
    ),
    "relu given two inputs": (
        lambda b, x: b.add_op("lfv_relu", [x, x], IN),
        r"lfv_relu: .*expected 2 arguments \(inputs then output\), got 3",
    ),
    "conv output size": (
        _conv_with_wrong_output,
        r"lfv_conv2d_k3_s2: .*output has shape \[1,4,6,8\], expected \[1,4,3,4\] for data "
        r"\[1,2,6,8\] \(K 3, stride 2, pad 1\)",
    ),
    "conv weight channels": (
        _conv_with_wrong_weight,
        r"lfv_conv2d_k3_s1: .*weight has shape \[4,3,3,3\], expected \[4,2,3,3\]",
    ),
    "dense weight width": (
        _dense_with_wrong_weight,
        r"lfv_dense: .*weight has shape \[3,5\], expected \[M,2\]",
    ),
    "upsample by a fraction": (
        lambda b, x: b.add_op("lfv_upsample_nearest", [x], (1, 2, 9, 12)),
        r"lfv_upsample_nearest: .*integer factors",
    ),
    "softmax over 4-D": (
        lambda b, x: b.add_op("lfv_softmax", [x], IN),
        r"lfv_softmax: .*data has shape \[1,2,6,8\] \(4 dimensions\), expected 2 dimensions",
    ),
    "concat output channels": (
        lambda b, x: b.add_op("lfv_concat_channels", [x, x], (1, 3, 6, 8)),
        r"lfv_concat_channels: .*output has shape \[1,3,6,8\], expected \[1,4,6,8\]",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_kernel_call_raises_inference_error_with_the_kernel_message(
    dlr: DlrHarness, case: str
) -> None:
    # given
    build, message = CASES[case]
    builder = GraphBuilder()
    x = builder.add_input("data", IN)
    builder.set_outputs([build(builder, x)])
    runner = dlr.load_graph(builder, IN)
    # then
    with pytest.raises(InferenceError, match=message):
        runner.run(np.zeros(IN, dtype=np.float32))


def test_runner_still_works_after_a_kernel_error(dlr: DlrHarness) -> None:
    # given: a failed run must leave the handle usable (no state corrupted in the kernels)
    builder = GraphBuilder()
    x = builder.add_input("data", IN)
    builder.set_outputs([builder.add_op("lfv_relu", [x], (1, 2, 6, 9))])
    runner = dlr.load_graph(builder, IN)
    for _ in range(2):
        with pytest.raises(InferenceError, match="lfv_relu"):
            runner.run(np.zeros(IN, dtype=np.float32))
