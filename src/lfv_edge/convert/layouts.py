"""Tensor layouts: how a kernel's raw buffer relates to the plain ("logical") tensor.

TVM's x86 schedules keep activations channel-blocked between kernels (`NCHW8c`: raw
`[N, C/8, H, W, 8]`) and store convolution weights pre-packed (`OIHW8i8o`: raw
`[O/8, I/8, kh, kw, 8, 8]`). The converted model works on plain NCHW / OIHW tensors only: a
plan states the layout of each kernel argument, the per-kernel check wraps the plain ONNX op
in unpack/pack steps so it sees exactly the kernel's buffers, and the assembled model drops
them wherever producer and consumer agree (and folds them into the weights).

    Plain()                 raw == logical
    Blocked(c)              [N, C1, H, W, c]        ↔ [N, C1·c, H, W]
    BlockedKernel()         [O1, I1, kh, kw, i, o]  ↔ [O1·o, I1·i, kh, kw]
    DensePacked()           [M1, K, m]              ↔ [M1·m, K]
    BlockedOperand(a)       an operand broadcast against a blocked activation of raw shape a
                            ↔ [1, C, 1, 1] (per channel) or [1, C, H, W]
    ChannelVector(rank)     a per-channel vector [C] (any raw shape holding C values)
                            ↔ [C] followed by `rank - 2` ones (PRelu slopes, biases)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lfv_edge.convert.onnx_graph import OnnxGraph, Value


@dataclass(frozen=True, slots=True)
class Plain:
    """Raw and logical tensors are the same."""

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        return raw

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        return value

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        return g.reshape(value, raw)

    def __str__(self) -> str:
        return "plain"


@dataclass(frozen=True, slots=True)
class Blocked:
    """Channel-blocked activation NCHW{block}c."""

    block: int

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        n, c1, h, w, c = raw
        return (n, c1 * c, h, w)

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        n, c1, h, w, c = value.shape
        return g.reshape(g.transpose(value, (0, 1, 4, 2, 3)), (n, c1 * c, h, w))

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        n, c1, h, w, c = raw
        return g.transpose(g.reshape(value, (n, c1, c, h, w)), (0, 1, 3, 4, 2))

    def __str__(self) -> str:
        return f"NCHW{self.block}c"


@dataclass(frozen=True, slots=True)
class BlockedKernel:
    """Packed convolution weight OIHW{i}i{o}o."""

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        o1, i1, kh, kw, i, o = raw
        return (o1 * o, i1 * i, kh, kw)

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        o1, i1, kh, kw, i, o = value.shape
        return g.reshape(g.transpose(value, (0, 5, 1, 4, 2, 3)), (o1 * o, i1 * i, kh, kw))

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        o1, i1, kh, kw, i, o = raw
        return g.transpose(g.reshape(value, (o1, o, i1, i, kh, kw)), (0, 2, 4, 5, 3, 1))

    def __str__(self) -> str:
        return "OIHWio"


@dataclass(frozen=True, slots=True)
class DensePacked:
    """Packed dense weight [M/m, K, m]."""

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        m1, k, m = raw
        return (m1 * m, k)

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        m1, k, m = value.shape
        return g.reshape(g.transpose(value, (0, 2, 1)), (m1 * m, k))

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        m1, k, m = raw
        return g.transpose(g.reshape(value, (m1, m, k)), (0, 2, 1))

    def __str__(self) -> str:
        return "NKn"


def _aligned(raw: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(raw)) + raw


@dataclass(frozen=True, slots=True)
class BlockedOperand:
    """An operand that broadcasts (numpy rules) against a blocked activation of raw shape `act`."""

    act: tuple[int, ...]

    def _per_channel(self, raw: tuple[int, ...]) -> bool:
        aligned = _aligned(raw, 5)
        return all(d == 1 for axis, d in enumerate(aligned) if axis not in (1, 4))

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        n, c1, h, w, c = self.act
        return (1, c1 * c, 1, 1) if self._per_channel(raw) else (n, c1 * c, h, w)

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        _, c1, _, _, c = self.act
        aligned = g.reshape(value, _aligned(value.shape, 5))
        if self._per_channel(value.shape):
            full = g.expand(aligned, (1, c1, 1, 1, c))
            return g.reshape(g.transpose(full, (0, 1, 4, 2, 3)), (1, c1 * c, 1, 1))
        return Blocked(c).unpack(g, g.expand(aligned, self.act))

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        msg = "a broadcast operand cannot be packed back (it is never a kernel output)"
        raise NotImplementedError(msg)

    def __str__(self) -> str:
        return "operand of NCHWc"


@dataclass(frozen=True, slots=True)
class ChannelVector:
    """A per-channel vector however it is stored, as [C, 1, …] for broadcasting at axis 1."""

    rank: int  # rank of the activation it applies to

    def logical_shape(self, raw: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(raw, dtype=np.int64)),) + (1,) * max(self.rank - 2, 0)

    def unpack(self, g: OnnxGraph, value: Value) -> Value:
        return g.reshape(value, self.logical_shape(value.shape))

    def pack(self, g: OnnxGraph, value: Value, raw: tuple[int, ...]) -> Value:
        return g.reshape(value, raw)

    def __str__(self) -> str:
        return "per-channel"


Layout = Plain | Blocked | BlockedKernel | DensePacked | BlockedOperand | ChannelVector


def activation_layout(raw: tuple[int, ...]) -> Layout:
    """The layout an activation of this raw shape is taken to have: 5-D is NCHWc, else plain."""
    if len(raw) == 5:
        return Blocked(raw[4])
    return Plain()


def convert_layout(
    g: OnnxGraph, value: Value, source: Layout, target: Layout, raw: tuple[int, ...]
) -> Value:
    """A logical value held in `source` layout, re-expressed for a consumer expecting `target`."""
    if source == target:
        return value
    return target.unpack(g, source.pack(g, value, raw))
