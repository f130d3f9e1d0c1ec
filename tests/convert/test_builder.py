"""Every builder kernel and network converted, checked against DLR: exact op knowledge here.

The builder's kernels (modelbuild/kernels.c) are ours, so for these the right plan is known
in advance: a test network calls all 23 kernel symbols, and the plans the converter finds
are compared with what each symbol is documented to compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lfv_edge.convert.api import ConvertOptions, convert_package
from lfv_edge.convert.onnx_graph import op_types
from lfv_edge.inspection.pipeline import RawFrame
from lfv_edge.modelbuild.graph import KERNEL_SYMBOLS, Network
from lfv_edge.modelbuild.package import PackageSpec, write_dlr_model
from tests.conftest import PackageFactory

pytestmark = pytest.mark.dlr


def every_symbol_network() -> Network:
    """A 32×32 two-head network that calls each of the builder's 23 kernel symbols."""
    rng = np.random.default_rng(11)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.4, shape)

    def b(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.1, n)

    net = Network("every_symbol")
    x = net.input((1, 3, 32, 32))
    c1 = net.conv2d(x, w(8, 3, 3, 3), b(8), relu=True)
    c2 = net.conv2d(c1, w(8, 8, 3, 3), b(8))
    c3 = net.conv2d(c1, w(8, 8, 1, 1), b(8), relu=True)
    c4 = net.conv2d(c3, w(8, 8, 1, 1), b(8))
    r = net.relu(net.add(c3, net.add(c2, c4), relu=True))
    d = net.depthwise_conv2d(
        net.depthwise_conv2d(r, w(8, 1, 3, 3), b(8)), w(8, 1, 3, 3), b(8), relu=True
    )
    p = net.maxpool2(d)
    s1 = net.add(
        net.conv2d(p, w(8, 8, 3, 3), b(8), stride=2),
        net.conv2d(p, w(8, 8, 3, 3), b(8), stride=2, relu=True),
    )
    s2 = net.add(
        net.conv2d(p, w(8, 8, 1, 1), b(8), stride=2),
        net.conv2d(p, w(8, 8, 1, 1), b(8), stride=2, relu=True),
    )
    s3 = net.add(
        net.depthwise_conv2d(p, w(8, 1, 3, 3), b(8), stride=2),
        net.depthwise_conv2d(p, w(8, 1, 3, 3), b(8), stride=2, relu=True),
    )
    features = net.concat(net.concat(s1, s2), s3)
    mask = net.softmax_channels(
        net.conv2d(net.upsample_bilinear(features, 4), w(3, 24, 1, 1), b(3))
    )
    pooled = net.global_avg_pool(net.upsample_nearest(features, 2))
    net.set_outputs(mask, net.softmax(net.dense(pooled, w(2, 24), b(2))))
    return net


# symbol → the plan the converter must find (substring of the plan text)
EXPECTED = {
    "lfv_conv2d_k3_s1": "conv2d 3×3 s1 p1 g1 +bias",
    "lfv_conv2d_k3_s1_relu": "conv2d 3×3 s1 p1 g1 +bias + relu",
    "lfv_conv2d_k3_s2": "conv2d 3×3 s2 p1 g1 +bias",
    "lfv_conv2d_k3_s2_relu": "conv2d 3×3 s2 p1 g1 +bias + relu",
    "lfv_conv2d_k1_s1": "conv2d 1×1 s1 p0 g1 +bias",
    "lfv_conv2d_k1_s1_relu": "conv2d 1×1 s1 p0 g1 +bias + relu",
    "lfv_conv2d_k1_s2": "conv2d 1×1 s2 p0 g1 +bias",
    "lfv_conv2d_k1_s2_relu": "conv2d 1×1 s2 p0 g1 +bias + relu",
    "lfv_dwconv2d_k3_s1": "conv2d 3×3 s1 p1 g8 +bias",
    "lfv_dwconv2d_k3_s1_relu": "conv2d 3×3 s1 p1 g8 +bias + relu",
    "lfv_dwconv2d_k3_s2": "conv2d 3×3 s2 p1 g8 +bias",
    "lfv_dwconv2d_k3_s2_relu": "conv2d 3×3 s2 p1 g8 +bias + relu",
    "lfv_relu": "relu",
    "lfv_add": "add(in1)",
    "lfv_add_relu": "add(in1) + relu",
    "lfv_maxpool2d_k2_s2": "max_pool2d 2×2 s2×2 p0,0,0,0",
    "lfv_global_avg_pool": "GlobalAveragePool",
    "lfv_dense": "dense 24→2 +bias",
    "lfv_softmax": "softmax over axis 1 of [1, 2]",
    "lfv_softmax_channels": "softmax over axis 1 of [1, 3, 32, 32]",
    "lfv_upsample_nearest": "gather (upsample_nearest)",
    "lfv_upsample_bilinear": "bilinear resize 8×8 → 32×32 (half_pixel)",
    "lfv_concat_channels": "gather (concatenate)",
}


def test_every_builder_symbol_converts_to_its_documented_op(
    kernels_so: Path, tmp_path: Path
) -> None:
    net = every_symbol_network()
    assert {layer.func_name for layer in net.layers} == KERNEL_SYMBOLS == set(EXPECTED)
    stage = write_dlr_model(
        tmp_path / "stage", net, kernels=kernels_so, output_names=["mask", "probabilities"]
    )
    out = tmp_path / "every.onnx"
    report = convert_package(stage, out)
    assert report.model == str(out), report.to_text(verbose=True)
    for check in report.kernels:
        assert check.status == "verified"
        assert check.plan.startswith(EXPECTED[check.symbol]), (check.symbol, check.plan)
        assert check.max_rel <= 1e-5
        if check.recipe in ("gather", "elementwise", "pool"):
            assert check.identical, check.symbol  # data movement, max, add: bit for bit
    assert report.vs_dlr is not None, report.dlr_note
    assert report.vs_dlr.max_rel < 1e-5
    assert [o.name for o in report.vs_dlr.outputs] == ["mask", "probabilities"]
    assert "identical" in report.dlr_note  # our run of the kernels is DLR's run
    ops = op_types(out.read_bytes())
    assert ops.count("Conv") == 13
    assert "Transpose" not in ops


@pytest.mark.parametrize(
    "spec",
    [
        PackageSpec(network="reference"),
        PackageSpec(image_width=48, image_height=40),
        PackageSpec(segmentation_head=True, pixel_class_names=("background", "red", "blue")),
        PackageSpec(
            network="bench",
            image_width=96,
            image_height=64,
            segmentation_head=True,
            normalize=False,
        ),
    ],
    ids=["reference", "controllable", "segmenter", "bench-mask"],
)
def test_builder_packages_convert_and_give_dlr_verdicts(
    make_package: PackageFactory, spec: PackageSpec, tmp_path: Path
) -> None:
    package = make_package(spec)
    rng = np.random.default_rng(3)
    images = [
        (f"random {i}", RawFrame(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), "rgb"))
        for i in range(3)
    ]
    # strongly red / blue images cross the controllable networks' thresholds
    images.append(("red", RawFrame(np.full((64, 64, 3), (250, 10, 10), dtype=np.uint8), "rgb")))
    images.append(("blue", RawFrame(np.full((64, 64, 3), (10, 10, 250), dtype=np.uint8), "rgb")))
    out = tmp_path / "model.onnx"
    report = convert_package(package, out, images=images, options=ConvertOptions(e2e_runs=2))
    assert report.model == str(out), report.to_text(verbose=True)
    assert report.verified == len(report.kernels) > 0
    assert report.vs_dlr is not None
    assert report.vs_dlr.max_rel < 1e-5
    assert len(report.verdicts) == 5
    assert all(v.agree for v in report.verdicts)
    assert max(abs(v.dlr_confidence - v.onnx_confidence) for v in report.verdicts) < 1e-5
    assert all(v.mask_pixels_differing == 0 for v in report.verdicts)
    assert (tmp_path / "model.manifest.json").read_text() == (package / "manifest.json").read_text()
