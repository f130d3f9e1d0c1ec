"""Real third-party TVM/Neo builds (../shared/realmodels; skipped when absent).

Figures from each folder's SOURCE.txt are the oracle where it has one: the DLR project's own
4-in-2-out test gives exact outputs, InsightFace and RetinaFace give output statistics for a
seeded input. Every kernel must verify, and the converted model must reproduce DLR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lfv_edge.convert import ConvertError
from lfv_edge.convert.api import ConvertOptions, convert_package
from lfv_edge.convert.onnx_graph import op_types
from lfv_edge.model.onnx_runner import OnnxSession
from tests.convert.conftest import realmodel

pytestmark = pytest.mark.dlr


def test_dlr_integration_model_gives_its_oracle(tmp_path: Path) -> None:
    folder = realmodel("neo-dlr-test-4in2out")
    out = tmp_path / "m.onnx"
    report = convert_package(folder, out)
    assert report.verified == len(report.kernels) == 2
    assert report.vs_dlr is not None
    assert report.vs_dlr.max_abs == 0
    feeds = {
        "data1": np.array([1, 2], np.float32),
        "data2": np.array([3, 4], np.float32),
        "data3": np.array([5, 6, 7], np.float32),
        "data4": np.array([8, 9, 10], np.float32),
    }
    first, second = OnnxSession(out).run(feeds)
    assert first.tolist() == [4, 6]
    assert second.tolist() == [13, 15, 17]


def test_insightface_converts_with_every_kernel_verified(tmp_path: Path) -> None:
    folder = realmodel("tvm-insightface-x86")
    out = tmp_path / "insightface.onnx"
    report = convert_package(folder, out)
    assert report.verified == len(report.kernels) == 38, report.to_text(verbose=True)
    plans = {k.symbol: k.plan for k in report.kernels}
    # constants compiled into the pre-processing kernel, read off it
    assert plans["fuse___sub_scalar_____mul_scalar_____layout_transform__"].startswith(
        "sub_scalar(127.5) + mul_scalar(0.0078125) [plain → NCHW3c]"
    )
    assert report.vs_dlr is not None
    assert report.vs_dlr.max_abs < 1e-5
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    (embedding,) = OnnxSession(out).run({"data": x})
    first = np.asarray(embedding[0, :4], dtype=np.float64)
    np.testing.assert_allclose(first, [0.02161, -0.36446, -0.04446, 0.70428], atol=1e-3)
    assert float(embedding.sum()) == pytest.approx(-1.4935, abs=1e-3)
    # NCHW8c blocking and the packed weights are gone: plain convolutions only
    ops = op_types(out.read_bytes())
    assert "Transpose" not in ops
    assert "Gather" not in ops
    assert ops.count("Conv") == 49


def test_system_lib_model_dlr_cannot_load_converts(tmp_path: Path) -> None:
    folder = realmodel("tvm-wrn-syslib-x86")
    report = convert_package(folder, tmp_path / "wrn.onnx")
    assert report.model is not None, report.to_text(verbose=True)
    symbols = {k.symbol for k in report.kernels}
    assert len(symbols) == 53
    assert report.verified == len(report.kernels)
    eps = {k.plan for k in report.kernels if k.symbol.startswith("fuse___add_scalar")}
    assert eps == {"add_scalar(1e-05) [plain → plain]; constants 1e-05 read off the kernel"}
    assert report.vs_dlr is None
    assert "--system-lib" in report.dlr_note
    assert report.vs_kernels is not None
    assert report.vs_kernels.max_rel < 1e-5


@pytest.mark.slow
def test_retinaface_converts_with_blocked_outputs_kept(tmp_path: Path) -> None:
    folder = realmodel("tvm-retinaface-x86")
    out = tmp_path / "retinaface.onnx"
    report = convert_package(folder, out, options=ConvertOptions(e2e_runs=1))
    assert report.verified == len(report.kernels) == 78, report.to_text(verbose=True)
    assert report.vs_dlr is not None
    assert report.vs_dlr.max_rel < 1e-4
    session = OnnxSession(out)
    assert [tuple(s) for s in session.output_shapes()][:2] == [(1, 4, 32, 34), (1, 1, 32, 34, 8)]
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1057)).astype(np.float32)
    outputs = session.run({"data": x})
    assert float(outputs[0].sum()) == pytest.approx(2176.0, abs=1e-2)
    assert float(outputs[1].sum()) == pytest.approx(390.857, abs=1e-2)
    assert float(outputs[8].sum()) == pytest.approx(10533.917, abs=1e-2)


@pytest.mark.parametrize(
    "name", ["neo-rb5-tinyyolov3-arm64-noparams", "neo-xavier-ssd-arm64cuda-noparams"]
)
def test_aarch64_builds_are_refused_naming_the_gap(name: str, tmp_path: Path) -> None:
    folder = realmodel(name)
    with pytest.raises(
        ConvertError, match=r"aarch64 kernels.*AArch64 packages are not convertible yet"
    ):
        convert_package(folder, tmp_path / "m.onnx")
