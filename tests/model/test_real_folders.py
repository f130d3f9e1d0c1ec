"""Real, third-party TVM / SageMaker Neo model folders: inspect, probe, refusals, and our runner
against a plain DLR C-API run (same library, same inputs: the outputs must be identical)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.errors import InferenceError, ModelPackageError
from lfv_edge.model.package import ModelFolder, read_model_folder
from lfv_edge.model.runner import DlrRunner, configure_threads
from tests.model.realmodels import capi_run, real_folder

pytestmark = pytest.mark.dlr

RUNNABLE = ("neo-dlr-test-4in2out", "tvm-insightface-x86", "tvm-retinaface-x86")
SYSLIB = "tvm-wrn-syslib-x86"
RB5 = "neo-rb5-tinyyolov3-arm64-noparams"
JETSON = "neo-xavier-ssd-arm64cuda-noparams"


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    configure_threads(None)  # TVM_BIND_THREADS=0 before the first inference in this process


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lfv_edge", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _seeded_inputs(model: ModelFolder) -> dict[str, NDArray[np.generic]]:
    # The inputs DLR lists; the NNVM test model stores values for all four of its inputs in
    # its .params (DLR then lists none), so there we set its graph arguments by name.
    specs = model.stage.inputs or model.stage.graph.arg_specs()
    rng = np.random.default_rng(0)
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in specs}


def _our_run(
    model: ModelFolder, inputs: Mapping[str, NDArray[np.generic]]
) -> list[NDArray[np.generic]]:
    runner = DlrRunner.load_model(
        model.stage_dir, library=model.library.path, arguments=model.stage.graph.arg_specs()
    )
    return runner.run_inputs(inputs)


def _summary(output: NDArray[np.generic]) -> dict[str, object]:
    return {
        "Shape": list(output.shape),
        "Sum": float(np.sum(output, dtype=np.float64)),
        "L2": float(np.sqrt(np.sum(np.square(output, dtype=np.float64)))),
    }


@pytest.mark.parametrize("name", RUNNABLE)
def test_our_runner_matches_a_plain_c_api_run_exactly(
    name: str, cpu_libdlr: Path, tmp_path: Path
) -> None:
    # given a real folder that passed pre-flight, and seeded random inputs
    model = read_model_folder(real_folder(name))
    assert model.library.path == cpu_libdlr, "no libdlr.so in the folder: the CPU runtime"
    inputs = _seeded_inputs(model)
    # when it runs through our runner (in this process) and through libdlr's C API (a child)
    ours = _our_run(model, inputs)
    theirs = capi_run(cpu_libdlr, model.stage_dir, inputs, tmp_path)
    # then every output is identical, bit for bit
    assert isinstance(theirs, list), f"the C-API run failed: {theirs}"
    assert len(ours) == len(theirs) == len(model.stage.graph.heads)
    for index, (mine, plain) in enumerate(zip(ours, theirs, strict=True)):
        assert (mine.shape, mine.dtype) == (plain.shape, plain.dtype), f"output {index}"
        assert mine.tobytes() == plain.tobytes(), f"output {index} differs from the C-API run"
        assert np.isfinite(mine).all(), f"output {index} is finite"


def test_the_nnvm_test_model_adds_as_its_own_test_says(cpu_libdlr: Path) -> None:
    # The DLR project's own oracle for this folder: data1+data2 and data3+data4.
    model = read_model_folder(real_folder("neo-dlr-test-4in2out"))
    given = {
        "data1": np.array([1, 2], np.float32),
        "data2": np.array([3, 4], np.float32),
        "data3": np.array([5, 6, 7], np.float32),
        "data4": np.array([8, 9, 10], np.float32),
    }
    first, second = _our_run(model, given)
    assert first.tolist() == [4.0, 6.0]
    assert second.tolist() == [13.0, 15.0, 17.0]


def test_insightface_gives_the_embedding_recorded_with_its_source(cpu_libdlr: Path) -> None:
    model = read_model_folder(real_folder("tvm-insightface-x86"))
    (embedding,) = _our_run(model, _seeded_inputs(model))
    assert embedding.shape == (1, 128)
    expected = np.array([0.02161, -0.36446, -0.04446, 0.70428], np.float64)
    assert np.abs(embedding[0, :4].astype(np.float64) - expected).max() < 1e-3
    assert abs(float(embedding.sum(dtype=np.float64)) - -1.4935) < 1e-3
    assert abs(float(np.linalg.norm(embedding.astype(np.float64))) - 3.2654) < 1e-3


def test_retinaface_gives_the_sums_recorded_with_its_source(cpu_libdlr: Path) -> None:
    model = read_model_folder(real_folder("tvm-retinaface-x86"))
    outputs = _our_run(model, _seeded_inputs(model))
    assert len(outputs) == 9
    assert outputs[1].shape == (1, 1, 32, 34, 8), "NCHWc outputs stay 5-D"
    for index, expected in ((0, 2176.0), (1, 390.857), (8, 10533.917)):
        assert abs(float(outputs[index].sum(dtype=np.float64)) - expected) < 1e-2, index


EXPECTED = {
    "neo-dlr-test-4in2out": ([], [[2], [3]], 2, 2),
    "tvm-insightface-x86": ([("data", [1, 3, 112, 112])], [[1, 128]], 85, 38),
    "tvm-retinaface-x86": (
        [("data", [1, 3, 1024, 1057])],
        [[1, 4, 32, 34], [1, 1, 32, 34, 8], [1, 4, 32, 34, 5],
         [1, 4, 64, 67], [1, 1, 64, 67, 8], [1, 4, 64, 67, 5],
         [1, 4, 128, 133], [1, 1, 128, 133, 8], [1, 4, 128, 133, 5]],
        103,
        78,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", RUNNABLE)
def test_inspect_probe_describes_the_folder_and_reports_the_zero_input_run(
    name: str, cpu_libdlr: Path, tmp_path: Path
) -> None:
    folder = real_folder(name)
    run = _inspect(str(folder), "--json", "--probe")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    inputs, outputs, calls, functions = EXPECTED[name]
    assert [(i["Name"], i["Shape"]) for i in info["Inputs"]] == inputs, "weights are not inputs"
    assert all(i["Dtype"] == "float32" for i in info["Inputs"])
    assert [o["Shape"] for o in info["Outputs"]] == outputs
    assert (info["Graph"]["KernelCalls"], info["Graph"]["Functions"]) == (calls, functions)
    assert info["KernelLibrary"]["Machine"] == "x86-64"
    assert info["KernelLibrary"]["Modules"] == [], "plain CPU builds import no device module"
    assert info["Device"]["auto"]["device"] == "cpu"
    # the probe's numbers are those of a plain C-API run with zeros in every listed input
    zeros = {i["Name"]: np.zeros(i["Shape"], np.float32) for i in info["Inputs"]}
    plain = capi_run(cpu_libdlr, folder, zeros, tmp_path)
    assert isinstance(plain, list), plain
    assert info["Probe"] == [_summary(output) for output in plain]
    text = _inspect(str(folder), "--probe")
    assert text.returncode == 0, text.stderr
    assert "a DLR model folder" in text.stdout.splitlines()[0]
    assert sum(line.startswith("Probe ") for line in text.stdout.splitlines()) == len(outputs)


def _refused(name: str, *needles: str) -> None:
    folder = real_folder(name)
    with pytest.raises(ModelPackageError) as caught:
        read_model_folder(folder)
    for needle in needles:
        assert needle in str(caught.value), f"{needle!r} in {caught.value}"
    for args in ((), ("--probe",), ("--json", "--probe")):
        run = _inspect(str(folder), *args)
        assert run.returncode == 3, (args, run.returncode, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, f"one line: {run.stderr}"
        assert "Traceback" not in run.stderr
        assert run.stdout == ""
        for needle in needles:
            assert needle in run.stderr, f"{needle!r} in {run.stderr}"


def test_a_system_lib_build_is_refused_naming_its_symbols_before_dlr_sees_it(
    cpu_libdlr: Path, tmp_path: Path
) -> None:
    symbols = (
        "TVMAPISetLastError", "TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace",
        "TVMBackendParallelLaunch", "TVMBackendRegisterSystemLibSymbol",
    )  # fmt: skip
    _refused(SYSLIB, "wrn_8s_g5.tar.so", *symbols)
    # why pre-flight must refuse it: loaded by DLR, the folder kills the whole process
    died = capi_run(cpu_libdlr, real_folder(SYSLIB), {}, tmp_path)
    assert isinstance(died, subprocess.CompletedProcess)
    assert died.returncode == 127, died.returncode
    assert "symbol lookup error" in died.stderr
    assert "undefined symbol: TVMBackend" in died.stderr


def test_aarch64_neo_builds_are_refused_naming_the_architecture_and_the_missing_params() -> None:
    _refused(RB5, "compiled.so and libdlr.so are built for aarch64", "no *.params file")
    _refused(
        JETSON,
        "compiled.so (modules: cuda (ptx sm_72, 152 kernels)) is built for aarch64",
        "no *.params file",
    )


def test_the_runner_checks_every_named_input_exactly(cpu_libdlr: Path) -> None:
    # DLR compares element counts only; the runner compares shapes and dtypes by name
    model = read_model_folder(real_folder("neo-dlr-test-4in2out"))
    runner = DlrRunner.load_model(
        model.stage_dir, library=model.library.path, arguments=model.stage.graph.arg_specs()
    )
    assert runner.info.inputs == (), "DLR lists no input: all four have stored values"
    good = np.array([1, 2], np.float32)
    with pytest.raises(InferenceError, match=r"input data1: float64\[2\] does not match"):
        runner.run_inputs({"data1": good.astype(np.float64)})
    with pytest.raises(InferenceError, match=r"input data3: float32\[2\] does not match .*\[3\]"):
        runner.run_inputs({"data3": good})
    with pytest.raises(InferenceError, match="'data5' is not an argument of this model"):
        runner.run_inputs({"data5": good})
    first, _ = runner.run_inputs({"data1": good, "data2": good})
    assert first.tolist() == [2.0, 4.0], "and the handle still works"
