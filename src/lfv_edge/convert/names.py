"""A fused kernel's name → the ops it computes, in order.

TVM names a fused kernel after the ops it fused, which is most of what the converter needs
to know (the shapes and the kernel itself tell the rest):

    NNVM era   fuse__contrib_conv2d_NCHWc_broadcast_mul_broadcast_add_relu_3
               fuse___sub_scalar_____mul_scalar_____layout_transform__
    Relay era  fused_nn_conv2d_add_nn_relu_20, tvmgen_default_fused_nn_contrib_conv2d_NCHWc
    builder    lfv_conv2d_k3_s2_relu, lfv_softmax_channels (our own kernels.c)

The name is split into words, namespace words (`nn`, `contrib`, `image`) and numbers dropped,
and the longest known op spelled by the next words is taken, over and over. Words that spell
no known op are kept, joined, as one unknown token (e.g. `vision_non_max_suppression`): the
report names them. Pure: no onnx, no numpy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PREFIXES = ("tvmgen_default_fused_", "fused_", "fuse_", "lfv_")
_NAMESPACES = frozenset({"nn", "contrib", "image", "nchwc", "pack"})
_HINT = re.compile(r"[ks]\d+\Z")  # builder kernel-size / stride variants, e.g. k3, s2

# Canonical op → its spellings (as word sequences, lower case). Kinds decide the recipe.
_SPELLINGS: Mapping[str, tuple[str, ...]] = {
    # main ops
    "conv2d": ("conv2d", "depthwise conv2d", "dwconv2d", "group conv2d"),
    "dense": ("dense", "matmul"),
    "max_pool2d": ("max pool2d", "maxpool2d", "max pool"),
    "avg_pool2d": ("avg pool2d", "avgpool2d", "avg pool"),
    "global_avg_pool2d": ("global avg pool2d", "global avg pool", "adaptive avg pool2d"),
    "global_max_pool2d": ("global max pool2d", "global max pool", "adaptive max pool2d"),
    "mean": ("mean",),
    "softmax": ("softmax", "softmax channels"),
    "log_softmax": ("log softmax",),
    "upsampling": ("upsampling", "upsample", "resize", "resize2d"),
    "upsample_nearest": ("upsample nearest",),
    "upsample_bilinear": ("upsample bilinear",),
    # elementwise, binary with a tensor operand
    "add": ("add", "broadcast add", "elemwise add"),
    "sub": ("subtract", "broadcast sub", "elemwise sub"),
    "mul": ("multiply", "broadcast mul", "elemwise mul"),
    "div": ("divide", "broadcast div", "elemwise div"),
    "maximum": ("maximum", "broadcast maximum"),
    "minimum": ("minimum", "broadcast minimum"),
    "prelu": ("prelu",),
    # elementwise with a constant compiled into the code
    "add_scalar": ("add scalar",),
    "sub_scalar": ("sub scalar",),
    "rsub_scalar": ("rsub scalar",),
    "mul_scalar": ("mul scalar",),
    "div_scalar": ("div scalar",),
    "rdiv_scalar": ("rdiv scalar",),
    "leaky_relu": ("leaky relu",),
    "clip": ("clip",),
    # elementwise, unary
    "relu": ("relu",),
    "sigmoid": ("sigmoid",),
    "tanh": ("tanh", "fast tanh"),
    "exp": ("exp", "fast exp"),
    "sqrt": ("sqrt",),
    "rsqrt": ("rsqrt",),
    "negative": ("negative",),
    "abs": ("abs",),
    "identity": ("copy", "cast", "identity"),
    # data movement
    "layout_transform": ("layout transform",),
    "reshape": ("reshape", "reshape like"),
    "flatten": ("flatten", "batch flatten"),
    "transpose": ("transpose",),
    "squeeze": ("squeeze",),
    "expand_dims": ("expand dims",),
    "concatenate": ("concatenate", "concat", "concat channels"),
    "split": ("split",),
    "slice_like": ("slice like",),
    "strided_slice": ("strided slice", "slice"),
    "pad": ("pad",),
}

MAIN_OPS = frozenset(
    {
        "conv2d", "dense", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
        "global_max_pool2d", "mean", "softmax", "log_softmax", "upsample_bilinear",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "prelu"})
SCALAR_OPS = frozenset(
    {"add_scalar", "sub_scalar", "rsub_scalar", "mul_scalar", "div_scalar", "rdiv_scalar", "leaky_relu", "clip"}
)  # fmt: skip
UNARY_OPS = frozenset(
    {"relu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "negative", "abs", "identity"}
)
ELEMENTWISE_OPS = BINARY_OPS | SCALAR_OPS | UNARY_OPS
MOVEMENT_OPS = frozenset(
    {
        "layout_transform", "reshape", "flatten", "transpose", "squeeze", "expand_dims",
        "concatenate", "split", "slice_like", "strided_slice", "pad", "upsample_nearest",
        "identity",
    }
)  # fmt: skip
# "upsampling" alone may be nearest (data movement) or bilinear: both are tried.
AMBIGUOUS_OPS = frozenset({"upsampling"})
KNOWN_OPS = frozenset(_SPELLINGS)

_BY_WORDS: dict[tuple[str, ...], str] = {
    tuple(spelling.split()): op for op, spellings in _SPELLINGS.items() for spelling in spellings
}
_LONGEST = max(len(words) for words in _BY_WORDS)


@dataclass(frozen=True, slots=True)
class KernelName:
    """A kernel symbol split into op tokens; `unknown` lists the words no op spelled."""

    symbol: str
    ops: tuple[str, ...]
    unknown: tuple[str, ...]
    hints: tuple[str, ...]  # builder variants such as k3, s2 (informational)

    @property
    def known(self) -> bool:
        """Every word spelled a known op."""
        return not self.unknown

    def __str__(self) -> str:
        return " → ".join(self.ops + tuple(f"?{u}" for u in self.unknown)) or "(no ops)"


def split_kernel_name(symbol: str) -> KernelName:
    """The ops a fused kernel's name spells, in name order."""
    body = symbol
    for prefix in PREFIXES:
        if body.startswith(prefix):
            body = body[len(prefix) :]
            break
    words = [w.lower() for w in body.split("_") if w]
    hints = tuple(w for w in words if _HINT.match(w))
    words = [w for w in words if not w.isdigit() and w not in _NAMESPACES and not _HINT.match(w)]
    ops: list[str] = []
    unknown: list[str] = []
    pending: list[str] = []
    position = 0
    while position < len(words):
        for length in range(min(_LONGEST, len(words) - position), 0, -1):
            op = _BY_WORDS.get(tuple(words[position : position + length]))
            if op is not None:
                if pending:
                    unknown.append("_".join(pending))
                    pending = []
                ops.append(op)
                position += length
                break
        else:
            pending.append(words[position])
            position += 1
    if pending:
        unknown.append("_".join(pending))
    return KernelName(symbol=symbol, ops=tuple(ops), unknown=tuple(unknown), hints=hints)
