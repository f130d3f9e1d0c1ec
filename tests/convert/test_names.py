"""Fused kernel names → op tokens, for the three naming eras the converter meets."""

from __future__ import annotations

import pytest

from lfv_edge.convert.names import split_kernel_name
from lfv_edge.modelbuild.graph import KERNEL_SYMBOLS


@pytest.mark.parametrize(
    ("symbol", "ops"),
    [
        # NNVM era (real InsightFace / RetinaFace / WRN builds)
        (
            "fuse___sub_scalar_____mul_scalar_____layout_transform__",
            ("sub_scalar", "mul_scalar", "layout_transform"),
        ),
        (
            "fuse__contrib_conv2d_NCHWc_broadcast_mul_broadcast_add_relu_3",
            ("conv2d", "mul", "add", "relu"),
        ),
        ("fuse___layout_transform___prelu_1", ("layout_transform", "prelu")),
        ("fuse_dense_broadcast_mul_broadcast_add", ("dense", "mul", "add")),
        ("fuse___rdiv_scalar___2", ("rdiv_scalar",)),
        ("fuse_concatenate_relu", ("concatenate", "relu")),
        (
            "fuse___layout_transform___upsampling___layout_transform___slice_like___layout_transform___elemwise_add_1",
            (
                "layout_transform",
                "upsampling",
                "layout_transform",
                "slice_like",
                "layout_transform",
                "add",
            ),
        ),
        # Relay era (Neo builds)
        ("fused_nn_conv2d_add_nn_leaky_relu_9", ("conv2d", "add", "leaky_relu")),
        ("tvmgen_default_fused_nn_contrib_conv2d_NCHWc_add_nn_relu", ("conv2d", "add", "relu")),
        ("fused_transpose_nn_batch_flatten_4", ("transpose", "flatten")),
        ("fused_nn_max_pool2d_3", ("max_pool2d",)),
        ("fused_nn_global_avg_pool2d", ("global_avg_pool2d",)),
        # the builder's own kernels
        ("lfv_conv2d_k3_s2_relu", ("conv2d", "relu")),
        ("lfv_dwconv2d_k3_s1", ("conv2d",)),
        ("lfv_softmax_channels", ("softmax",)),
        ("lfv_upsample_nearest", ("upsample_nearest",)),
        ("lfv_concat_channels", ("concatenate",)),
    ],
)
def test_names_split_into_ops(symbol: str, ops: tuple[str, ...]) -> None:
    name = split_kernel_name(symbol)
    assert name.ops == ops
    assert name.known


def test_unknown_words_are_kept_and_named() -> None:
    name = split_kernel_name("fused_vision_non_max_suppression")
    assert not name.known
    assert name.unknown == ("vision_non_max_suppression",)
    mixed = split_kernel_name("fused_cast_zeros_like_where")
    assert mixed.ops == ("identity",)
    assert mixed.unknown == ("zeros_like_where",)
    assert "?zeros_like_where" in str(mixed)


def test_every_builder_symbol_is_understood() -> None:
    for symbol in KERNEL_SYMBOLS:
        name = split_kernel_name(symbol)
        assert name.known, symbol
        assert name.ops, symbol
    assert split_kernel_name("lfv_conv2d_k3_s2_relu").hints == ("k3", "s2")
