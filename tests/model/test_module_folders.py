"""Imported modules in the kernel library (`__tvm_dev_mblob`): read, reported, and trusted for
the graph functions they provide (TensorRT subgraphs), on fabricated x86-64 folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.preflight import check_model_folder
from tests.conftest import PackageFactory
from tests.model import blobs
from tests.model.fabricate import kernel_folder, rename_function

pytestmark = pytest.mark.dlr

PTX = b"//\n.version 7.8\n.target sm_90\n.address_size 64\n"


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lfv_edge", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_tensorrt_07_subgraph_node_is_provided_by_its_module(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    # given a kernel library whose blob holds a TVM 0.7 TensorRT module with subgraph
    # tensorrt_0, and a graph node calling tensorrt_0 (exported by no ELF symbol)
    data = blobs.blob(blobs.string("_lib"), blobs.tensorrt_07("tensorrt_0"))
    folder = kernel_folder(
        make_package,
        tmp_path / "trt07",
        blobs.as_c_source(data),
        edit_graph=rename_function("lfv_softmax", "tensorrt_0"),
    )
    # when pre-flight reads it
    check = check_model_folder(folder)
    # then the node is not refused, and the module is reported
    assert check.modules is not None
    assert check.modules.describe() == ["tensorrt (tensorrt_0)"]
    assert "tensorrt_0" not in check.kernel.defined_symbols
    assert check.target_device == "gpu", "a TensorRT module needs a GPU build of DLR"
    run = _inspect(str(folder), "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["KernelLibrary"]["Modules"] == ["tensorrt (tensorrt_0)"]
    assert info["Runtime"]["TargetDevice"] == "gpu"
    assert info["Device"]["auto"]["possible"] is False
    assert "compiled for the GPU" in info["Device"]["auto"]["reason"]
    text = _inspect(str(folder))
    assert "Modules     tensorrt (tensorrt_0)" in text.stdout.splitlines(), text.stdout
    # and probing it on this CPU-only machine is refused before any child starts
    probe = _inspect(str(folder), "--probe")
    assert probe.returncode == 3, probe.stderr
    assert len(probe.stderr.strip().splitlines()) == 1
    assert "compiled for the GPU" in probe.stderr


def test_a_tensorrt_08_json_runtime_after_its_metadata_module_is_provided_too(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    symbol = "tvmgen_default_tensorrt_main_0"
    metadata = (
        blobs.string("metadata") + blobs.u64(0) + blobs.u64(0) + blobs.u64(1)
        + blobs.string(symbol) + blobs.u64(0)
    )  # fmt: skip
    data = blobs.blob(metadata, blobs.string("_lib"), blobs.tensorrt_08(symbol))
    folder = kernel_folder(
        make_package,
        tmp_path / "trt08",
        blobs.as_c_source(data),
        edit_graph=rename_function("lfv_softmax", symbol),
    )
    check = check_model_folder(folder)
    assert check.modules is not None
    assert check.modules.describe() == ["metadata", f"tensorrt ({symbol})"]


def test_a_function_neither_exported_nor_in_a_module_is_refused(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    data = blobs.blob(blobs.string("_lib"), blobs.tensorrt_07("tensorrt_0"))
    folder = kernel_folder(
        make_package,
        tmp_path / "trt-missing",
        blobs.as_c_source(data),
        edit_graph=rename_function("lfv_softmax", "tensorrt_1"),
    )
    with pytest.raises(
        ModelPackageError,
        match=r"calls function\(s\) that compiled\.so does not export and its modules "
        r"\(tensorrt\) do not provide: tensorrt_1",
    ):
        check_model_folder(folder)


def test_a_cuda_module_is_reported_and_marks_a_gpu_build(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    data = blobs.blob(
        blobs.string("_lib"),
        blobs.cuda("ptx", {"fused_relu_kernel0": ["blockIdx.x", "threadIdx.x"]}, PTX),
    )
    folder = kernel_folder(make_package, tmp_path / "cuda", blobs.as_c_source(data))
    check = check_model_folder(folder)
    assert check.modules is not None
    assert check.modules.describe() == ["cuda (ptx sm_90, 1 kernels)"]
    assert check.target_device == "gpu"


def test_an_unreadable_blob_is_refused_naming_the_symbol(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    data = blobs.blob(blobs.string("_lib"), blobs.tensorrt_07("tensorrt_0"))
    truncated = blobs.u64(len(data)) + data[8:40]  # claims more bytes than the symbol holds
    folder = kernel_folder(make_package, tmp_path / "cut", blobs.as_c_source(truncated))
    with pytest.raises(ModelPackageError, match=r"the modules packed in __tvm_dev_mblob cannot"):
        check_model_folder(folder)


def test_our_own_folders_import_no_modules_and_describe_as_folders(
    make_package: PackageFactory,
) -> None:
    stage = make_package(with_libdlr=False) / "mochi"
    check = check_model_folder(stage)
    assert check.modules is None, "no __tvm_dev_mblob"
    assert check.target_device == "cpu", "our builder writes a .meta for the CPU"
    run = _inspect(str(stage), "--json", "--probe")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert [i["Name"] for i in info["Inputs"]] == ["data"]
    assert info["Outputs"][0]["Name"] is not None, "output names from the .meta"
    (probe,) = info["Probe"]
    assert probe["Shape"] == info["Outputs"][0]["Shape"]
    assert abs(probe["Sum"] - 1.0) < 1e-5, "softmax probabilities sum to one"
