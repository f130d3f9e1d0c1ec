"""What the converter refuses, and how the report names it: the whole path, child process included.

Graphs here call the hook kernels (hook_kernels.c): one honest kernel, one that lies about
what it computes, one with an op no converter knows, one that calls an external library,
one that crashes its process, one compiled like a `--system-lib` build.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.cli import main
from lfv_edge.convert.api import ConvertOptions, convert_package
from lfv_edge.convert.stage import load_stage
from lfv_edge.model.onnx_runner import OnnxSession
from lfv_edge.modelbuild.graph import GraphBuilder
from tests.convert.conftest import StageWriter

SHAPE = (1, 3, 4, 5)


def _chain(*symbols: str) -> GraphBuilder:
    builder = GraphBuilder()
    value = builder.add_input("data", SHAPE)
    for symbol in symbols:
        value = builder.add_op(symbol, [value], SHAPE)
    builder.set_outputs([value])
    return builder


def _statuses(report_json: Path) -> dict[str, tuple[str, str]]:
    body = json.loads(report_json.read_text())
    return {k["symbol"]: (k["status"], k["reason"]) for k in body["kernels"]}


def test_unverified_kernels_are_named_and_no_model_is_written(
    write_stage: StageWriter, hook_libraries: dict[str, Path], tmp_path: Path, capsys: object
) -> None:
    stage = write_stage(
        _chain("fused_nn_relu", "fused_vision_nms", "fused_nn_relu_1"), hook_libraries["hooks"]
    )
    out = tmp_path / "out" / "model.onnx"
    code = main(["convert", str(stage), str(out), "--no-dlr"])
    assert code == 1
    assert not out.exists()
    statuses = _statuses(tmp_path / "out" / "model.report.json")
    assert statuses["fused_nn_relu"][0] == "verified"
    assert statuses["fused_vision_nms"] == ("unverified", "ops without a converter: vision_nms")
    status, reason = statuses["fused_nn_relu_1"]
    assert status == "unverified"
    assert "closest: relu" in reason  # |x| is not relu: the nearest candidate, its miss
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert (
        "no model written: 2 kernel(s) not verified: fused_vision_nms, fused_nn_relu_1" in printed
    )


def test_a_crashing_kernel_is_reported_and_the_converter_survives(
    write_stage: StageWriter, hook_libraries: dict[str, Path], tmp_path: Path
) -> None:
    stage = write_stage(_chain("fused_nn_relu", "fused_tanh"), hook_libraries["hooks"])
    report = convert_package(stage, tmp_path / "m.onnx", options=ConvertOptions(check_dlr=False))
    assert report.model is None
    assert report.restarts == 1
    crashed = {k.symbol: k for k in report.kernels}["fused_tanh"]
    assert crashed.status == "crashed"
    assert "killed" in crashed.reason
    assert {k.symbol: k.status for k in report.kernels}["fused_nn_relu"] == "verified"


@pytest.mark.slow  # waits out the stall limit (3 s)
def test_a_kernel_that_never_returns_is_stopped_and_reported(
    write_stage: StageWriter, hook_libraries: dict[str, Path], tmp_path: Path
) -> None:
    stage = write_stage(_chain("fused_nn_relu", "fused_sigmoid"), hook_libraries["hooks"])
    options = ConvertOptions(check_dlr=False, stall_s=3.0)
    report = convert_package(stage, tmp_path / "m.onnx", options=options)
    assert report.model is None
    assert {k.symbol: k.status for k in report.kernels} == {
        "fused_nn_relu": "verified",
        "fused_sigmoid": "crashed",
    }


def test_an_external_library_call_is_named(
    write_stage: StageWriter, hook_libraries: dict[str, Path], tmp_path: Path
) -> None:
    stage = write_stage(_chain("fused_nn_relu_2"), hook_libraries["hooks"])
    report = convert_package(stage, tmp_path / "m.onnx", options=ConvertOptions(check_dlr=False))
    (check,) = report.kernels
    assert check.status == "unverified"
    assert "external function 'tvm.contrib.sort.argsort'" in check.reason


def test_a_system_lib_build_converts_against_its_own_kernels(
    write_stage: StageWriter, hook_libraries: dict[str, Path], tmp_path: Path
) -> None:
    stage = write_stage(_chain("fused_nn_relu"), hook_libraries["syslib"])
    assert load_stage(stage).system_lib
    out = tmp_path / "m.onnx"
    report = convert_package(stage, out)
    assert report.model == str(out)
    assert report.vs_dlr is None
    assert "--system-lib" in report.dlr_note
    assert report.vs_kernels is not None
    assert report.vs_kernels.max_abs == 0
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    (y,) = OnnxSession(out).run({"data": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_sources_that_cannot_work_are_refused_before_any_kernel_runs(tmp_path: Path) -> None:
    missing = main(["convert", str(tmp_path / "nothing"), str(tmp_path / "m.onnx")])
    assert missing == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(empty), str(tmp_path / "m.onnx")]) == 1
