"""Candidate plans against kernels written in numpy: the search logic on its own.

The kernels here are numpy functions standing in for compiled code (the real ones are tested
in test_builder.py, test_hooks.py and test_realmodels.py); each test states what the name
and shapes leave open and checks that the first matching candidate is the right function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.convert.names import split_kernel_name
from lfv_edge.convert.plans import (
    Context,
    KernelSpec,
    Plan,
    TensorSpec,
    Unsupported,
    _float32_neighbours,
    _geometries,
    candidates,
    fit_constants,
)
from lfv_edge.convert.verify import difference, single_kernel_model
from lfv_edge.model.onnx_runner import OnnxSession

Kernel = Callable[[Sequence[NDArray[np.float32]]], list[NDArray[np.float32]]]


def _spec(
    symbol: str,
    ins: Sequence[tuple[int, ...]],
    outs: Sequence[tuple[int, ...]],
    params: Sequence[bool] = (),
) -> KernelSpec:
    flags = list(params) + [False] * (len(ins) - len(params))
    return KernelSpec(
        symbol,
        split_kernel_name(symbol),
        tuple(TensorSpec(s, "float32", p) for s, p in zip(ins, flags, strict=True)),
        tuple(TensorSpec(s, "float32") for s in outs),
    )


def _first_match(spec: KernelSpec, kernel: Kernel, seed: int = 0) -> tuple[Plan, int]:
    """What verify.py does, with a numpy kernel: the first candidate matching twice."""
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(t.shape).astype(np.float32) for t in spec.inputs]
    ctx = Context(
        spec, lambda arrays: kernel([np.asarray(a, np.float32) for a in arrays]), inputs, rng
    )
    for tried, plan in enumerate(candidates(ctx), start=1):
        session = OnnxSession(single_kernel_model(spec, plan))
        ok = True
        for feeds in (
            inputs,
            [rng.standard_normal(t.shape).astype(np.float32) for t in spec.inputs],
        ):
            got = session.run({f"in{i}": a for i, a in enumerate(feeds)})
            for g, w in zip(got, kernel(feeds), strict=True):
                if not difference(g, w).passes(plan.exact):
                    ok = False
        if ok:
            return plan, tried
    msg = "no candidate matched"
    raise AssertionError(msg)


# -- data movement read off an index ramp


def test_transpose_is_read_as_a_gather() -> None:
    spec = _spec("fused_transpose", [(2, 3, 4)], [(4, 2, 3)])
    plan, _ = _first_match(spec, lambda a: [np.ascontiguousarray(a[0].transpose(2, 0, 1))])
    assert plan.recipe == "gather"
    assert plan.exact


@pytest.mark.parametrize("fill", [-7.5, 0.0])
def test_padding_with_a_constant_is_a_gather_with_fill(fill: float) -> None:
    def pad(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        return [np.pad(a[0], ((0, 0), (0, 0), (1, 0), (0, 2)), constant_values=fill)]

    plan, _ = _first_match(_spec("fused_nn_pad", [(1, 2, 3, 3)], [(1, 2, 4, 5)]), pad)
    assert plan.recipe == "gather"


def test_split_gives_one_map_per_output() -> None:
    def split(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        x = a[0].reshape(1, 12, 2)
        return [np.ascontiguousarray(x[:, :5]), np.ascontiguousarray(x[:, 5:])]

    spec = _spec("fused_reshape_split", [(1, 24)], [(1, 5, 2), (1, 7, 2)])
    plan, _ = _first_match(spec, split)
    assert len(plan.out_layouts) == 2


def test_upsample_then_crop_then_add_is_a_sum_of_gathers() -> None:
    # RetinaFace's FPN merge: out = a + crop(upsample2x(b)), all in one kernel.
    def merge(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        up = a[1].repeat(2, axis=2).repeat(2, axis=3)[:, :, :5, :7]
        return [a[0] + up]

    spec = _spec(
        "fused_upsampling_slice_like_elemwise_add", [(1, 2, 5, 7), (1, 2, 3, 4)], [(1, 2, 5, 7)]
    )
    plan, _ = _first_match(spec, merge)
    assert plan.recipe == "gather-sum"
    assert plan.exact


def test_upsampling_that_interpolates_is_found_among_resize_modes() -> None:
    # "upsampling" may be nearest (data movement) or bilinear: the index ramp rules out the
    # former, and the resize candidates follow. align_corners=True interpolation, factor 2:
    def bilinear(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        x = a[0].astype(np.float64)
        h, w = x.shape[2:]
        ys, xs = np.linspace(0, h - 1, 2 * h), np.linspace(0, w - 1, 2 * w)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        top = x[:, :, y0][:, :, :, x0] * (1 - fx) + x[:, :, y0][:, :, :, x1] * fx
        bottom = x[:, :, y1][:, :, :, x0] * (1 - fx) + x[:, :, y1][:, :, :, x1] * fx
        return [(top * (1 - fy) + bottom * fy).astype(np.float32)]

    plan, _ = _first_match(_spec("fused_nn_upsampling", [(1, 2, 3, 4)], [(1, 2, 6, 8)]), bilinear)
    assert plan.summary.endswith("(align_corners)")


def test_a_kernel_that_computes_is_not_taken_for_data_movement() -> None:
    spec = _spec("fused_reshape", [(2, 3)], [(3, 2)])
    rng = np.random.default_rng(0)
    ctx = Context(
        spec,
        lambda a: [np.asarray(a[0], np.float32).reshape(3, 2) * 2],
        [rng.standard_normal((2, 3))],
        rng,
    )
    with pytest.raises(Unsupported, match="not a copy"):
        list(candidates(ctx))


# -- constants compiled into the code


def test_preprocessing_constants_are_probed_exactly() -> None:
    def pre(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        return [(a[0] - np.float32(127.5)) * np.float32(0.0078125)]

    plan, _ = _first_match(
        _spec("fuse___sub_scalar_____mul_scalar__", [(1, 3, 8, 8)], [(1, 3, 8, 8)]), pre
    )
    assert "127.5" in plan.summary
    assert "0.0078125" in plan.summary
    assert plan.exact


def test_an_epsilon_is_read_where_the_value_is_small() -> None:
    eps = np.float32(1e-5)
    plan, _ = _first_match(_spec("fuse___add_scalar__", [(16,)], [(16,)]), lambda a: [a[0] + eps])
    assert f"add_scalar({eps!s})" in plan.summary


def test_a_constant_one_float_step_off_is_rejected() -> None:
    # The fitted constant's float32 neighbours are candidates too; only the exact one passes.
    c = np.nextafter(np.float32(0.1), np.float32(1))
    plan, tried = _first_match(_spec("fuse___mul_scalar__", [(64,)], [(64,)]), lambda a: [a[0] * c])
    assert f"mul_scalar({c!s})" in plan.summary
    assert tried >= 1


def test_fit_and_neighbours() -> None:
    x = np.linspace(-5, 300, 200)
    fitted = fit_constants(lambda c: (x - c[0]) * c[1], (x - 127.5) * 0.0078125, [0.0, 1.0])
    assert fitted == pytest.approx([127.5, 0.0078125])
    neighbours = list(_float32_neighbours([1.0], spread=1))
    assert neighbours[0] == (1.0,)
    assert {n[0] for n in neighbours} == {
        1.0,
        float(np.nextafter(np.float32(1), np.float32(2))),
        float(np.nextafter(np.float32(1), np.float32(0))),
    }


# -- what the shapes leave open


def test_conv_geometries_put_the_usual_padding_first() -> None:
    assert _geometries(112, 56, 3)[0] == (2, 1, 1, 1)  # stride 2, pad 1
    assert _geometries(32, 32, 3)[0] == (1, 1, 1, 1)
    assert _geometries(7, 1, 7)[0] == (1, 1, 0, 0)
    assert (1, 1, 0, 2) in _geometries(32, 32, 3)  # asymmetric ("SAME") padding is a candidate


def _conv(
    x: NDArray[np.float32], w: NDArray[np.float32], stride: int, pads: tuple[int, int, int, int]
) -> NDArray[np.float32]:
    """A direct float64 convolution (batch 1, groups 1)."""
    top, left, bottom, right = pads
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    o, _, kh, kw = w.shape
    h = (padded.shape[2] - kh) // stride + 1
    ww = (padded.shape[3] - kw) // stride + 1
    out = np.zeros((1, o, h, ww))
    for y in range(kh):
        for xx in range(kw):
            patch = padded[:, :, y : y + stride * h : stride, xx : xx + stride * ww : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, y, xx].astype(np.float64))
    return out.astype(np.float32)


def test_asymmetric_padding_is_found_by_the_kernel_not_guessed() -> None:
    # TF-style SAME padding of a stride-2 3×3 conv on an even size pads only bottom/right.
    spec = _spec(
        "fused_nn_conv2d", [(1, 3, 8, 8), (4, 3, 3, 3)], [(1, 4, 4, 4)], params=[False, True]
    )
    plan, tried = _first_match(spec, lambda a: [_conv(a[0], a[1], 2, (0, 0, 1, 1))])
    assert "p0,0,1,1" in plan.summary
    assert tried > 1  # the symmetric candidate came first, and missed


def test_softmax_axis_is_decided_by_the_kernel() -> None:
    def softmax_axis2(a: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        e = np.exp(a[0] - a[0].max(axis=2, keepdims=True))
        return [(e / e.sum(axis=2, keepdims=True)).astype(np.float32)]

    plan, tried = _first_match(
        _spec("fused_nn_softmax", [(1, 3, 4, 5)], [(1, 3, 4, 5)]), softmax_axis2
    )
    assert "axis 2" in plan.summary
    assert tried == 3


def test_subtraction_order_is_decided_by_the_kernel() -> None:
    spec = _spec("fused_subtract", [(1, 4), (1, 4)], [(1, 4)])
    plan, _ = _first_match(spec, lambda a: [a[1] - a[0]])
    assert "swapped" in plan.summary


def test_unknown_ops_and_non_float_kernels_are_refused_with_a_reason() -> None:
    rng = np.random.default_rng(0)
    spec = _spec("fused_vision_get_valid_counts", [(1, 10, 6)], [(1,)])
    with pytest.raises(Unsupported, match="vision_get_valid_counts"):
        list(candidates(Context(spec, lambda a: [], [], rng)))
    ints = KernelSpec(
        "fused_add",
        split_kernel_name("fused_add"),
        (TensorSpec((3,), "int32"), TensorSpec((3,), "int32")),
        (TensorSpec((3,), "int32"),),
    )
    with pytest.raises(Unsupported, match="int32"):
        list(candidates(Context(ints, lambda a: [], [], rng)))
