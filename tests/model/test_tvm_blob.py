"""The `__tvm_dev_mblob` reader on fabricated blobs and on a real Jetson (SageMaker Neo) build."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lfv_edge.model.elf import read_shared_object, read_symbol_data
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, BlobError, parse_module_blob
from tests.model import blobs

REAL = Path(__file__).resolve().parents[3] / "shared" / "realmodels"


def test_cuda_module_with_import_tree_is_read() -> None:
    # given a 0.8-style blob: host library, a CUDA module (PTX) and the import tree
    ptx = b"//\n.version 7.8\n.target sm_90\n.address_size 64\n"
    blob = blobs.blob(
        blobs.string("_lib"),
        blobs.cuda("ptx", {"fused_relu_kernel0": ["blockIdx.x", "threadIdx.x"]}, ptx),
        blobs.string("_import_tree")
        + blobs.u64(3)
        + blobs.u64(0)
        + blobs.u64(1)
        + blobs.u64(1)
        + blobs.u64(1)
        + blobs.u64(1),
    )
    # when
    parsed = parse_module_blob(blob)
    # then
    assert parsed.kinds == ("cuda",), "the host library is not an imported module"
    cuda = parsed.modules[1]
    assert cuda.code_format == "ptx"
    assert cuda.ptx_target == "sm_90"
    assert cuda.device_functions[0].name == "fused_relu_kernel0"
    assert cuda.device_functions[0].arg_types == ("handle", "handle")
    assert cuda.device_functions[0].thread_axis_tags == ("blockIdx.x", "threadIdx.x")
    assert cuda.code == ptx
    assert parsed.import_tree == ((0, 1, 1), (1,))
    assert parsed.graph_functions == frozenset(), "CUDA kernels are launched by host functions"


def test_tensorrt_subgraphs_are_graph_functions_in_both_eras() -> None:
    old = blobs.string("tensorrt") + blobs.string(
        json.dumps({"subgraphs": {"tensorrt_0": {}}, "use_implicit_batch": True})
    )
    new = (
        blobs.string("tensorrt")
        + blobs.string("tvmgen_default_tensorrt_main_0")
        + blobs.string("{}")
        + blobs.u64(1)
        + blobs.string("c0")
    )
    assert parse_module_blob(blobs.blob(old)).graph_functions == {"tensorrt_0"}
    assert parse_module_blob(blobs.blob(new)).graph_functions == {"tvmgen_default_tensorrt_main_0"}


def test_metadata_module_is_skipped_by_its_length() -> None:
    ndarray = (
        blobs.u64(0xDD5E40F096B4A13F) + blobs.u64(0) + struct.pack("<iii", 1, 0, 1)
        + struct.pack("<BBH", 2, 32, 1) + struct.pack("<q", 2) + blobs.u64(8) + b"\0" * 8
    )  # fmt: skip
    metadata = (
        blobs.string("metadata")
        + blobs.u64(1)
        + blobs.string("c0")
        + blobs.u64(1)
        + ndarray
        + blobs.u64(1)
    )
    metadata += (
        blobs.string("tvmgen_default_tensorrt_main_0")
        + blobs.u64(1)
        + blobs.u64(1)
        + blobs.string("c0")
    )
    trt = (
        blobs.string("tensorrt")
        + blobs.string("tvmgen_default_tensorrt_main_0")
        + blobs.string("{}")
        + blobs.u64(0)
    )
    parsed = parse_module_blob(blobs.blob(metadata, blobs.string("_lib"), trt))
    assert parsed.kinds == ("metadata", "tensorrt")
    assert parsed.graph_functions == {"tvmgen_default_tensorrt_main_0"}


def test_unknown_module_kind_stops_reading_with_a_note() -> None:
    parsed = parse_module_blob(
        blobs.blob(blobs.string("_lib"), blobs.string("hexagon") + b"opaque")
    )
    assert parsed.kinds == ("hexagon",)
    assert "format is not known" in parsed.notes[0]


@pytest.mark.parametrize("cut", [4, 12, 30])
def test_truncated_blob_is_a_blob_error(cut: int) -> None:
    blob = blobs.blob(blobs.cuda("cubin", {"k": ["blockIdx.x"]}, b"\x7fELF" * 10))
    with pytest.raises(BlobError):
        parse_module_blob(blob[:cut] if cut < 8 else blobs.u64(len(blob) - 8) + blob[8:cut])


def test_real_jetson_build_embeds_ptx_for_sm_72() -> None:
    folder = REAL / "neo-xavier-ssd-arm64cuda-noparams"
    if not folder.is_dir():
        pytest.skip(f"real model folders not present at {REAL}")
    library = folder / "compiled.so"
    read_shared_object(library, expected_machine=0xB7)  # AArch64: the headers still read
    data = read_symbol_data(library, BLOB_SYMBOL)
    assert data is not None, "a Neo GPU build exports __tvm_dev_mblob"
    parsed = parse_module_blob(data)
    assert parsed.kinds == ("cuda",)
    cuda = parsed.modules[0]
    assert cuda.code_format == "ptx"
    assert cuda.ptx_target == "sm_72"
    assert len(cuda.device_functions) == 152
    assert all("_kernel" in f.name for f in cuda.device_functions)
