"""The `__tvm_dev_mblob` reader on fabricated blobs and on a real Jetson (SageMaker Neo) build."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lfv_edge.model.elf import read_shared_object, read_symbol_data
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, BlobError, parse_module_blob

REAL = Path(__file__).resolve().parents[3] / "shared" / "realmodels"


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _u64(len(raw)) + raw


def _blob(*entries: bytes) -> bytes:
    body = _u64(len(entries)) + b"".join(entries)
    return _u64(len(body)) + body


def _cuda(fmt: str, functions: dict[str, list[str]], code: bytes) -> bytes:
    fmap = _u64(len(functions))
    for name, tags in functions.items():
        handle = struct.pack("<BBH", 3, 64, 1)
        fmap += _str(name) + _str(name) + _u64(2) + handle + handle
        fmap += _u64(len(tags)) + b"".join(_str(t) for t in tags)
    return _str("cuda") + _str(fmt) + fmap + _str(code)


def test_cuda_module_with_import_tree_is_read() -> None:
    # given a 0.8-style blob: host library, a CUDA module (PTX) and the import tree
    ptx = b"//\n.version 7.8\n.target sm_90\n.address_size 64\n"
    blob = _blob(
        _str("_lib"),
        _cuda("ptx", {"fused_relu_kernel0": ["blockIdx.x", "threadIdx.x"]}, ptx),
        _str("_import_tree") + _u64(3) + _u64(0) + _u64(1) + _u64(1) + _u64(1) + _u64(1),
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
    old = _str("tensorrt") + _str(
        json.dumps({"subgraphs": {"tensorrt_0": {}}, "use_implicit_batch": True})
    )
    new = (
        _str("tensorrt")
        + _str("tvmgen_default_tensorrt_main_0")
        + _str("{}")
        + _u64(1)
        + _str("c0")
    )
    assert parse_module_blob(_blob(old)).graph_functions == {"tensorrt_0"}
    assert parse_module_blob(_blob(new)).graph_functions == {"tvmgen_default_tensorrt_main_0"}


def test_metadata_module_is_skipped_by_its_length() -> None:
    ndarray = (
        _u64(0xDD5E40F096B4A13F) + _u64(0) + struct.pack("<iii", 1, 0, 1)
        + struct.pack("<BBH", 2, 32, 1) + struct.pack("<q", 2) + _u64(8) + b"\0" * 8
    )  # fmt: skip
    metadata = _str("metadata") + _u64(1) + _str("c0") + _u64(1) + ndarray + _u64(1)
    metadata += _str("tvmgen_default_tensorrt_main_0") + _u64(1) + _u64(1) + _str("c0")
    trt = _str("tensorrt") + _str("tvmgen_default_tensorrt_main_0") + _str("{}") + _u64(0)
    parsed = parse_module_blob(_blob(metadata, _str("_lib"), trt))
    assert parsed.kinds == ("metadata", "tensorrt")
    assert parsed.graph_functions == {"tvmgen_default_tensorrt_main_0"}


def test_unknown_module_kind_stops_reading_with_a_note() -> None:
    parsed = parse_module_blob(_blob(_str("_lib"), _str("hexagon") + b"opaque"))
    assert parsed.kinds == ("hexagon",)
    assert "format is not known" in parsed.notes[0]


@pytest.mark.parametrize("cut", [4, 12, 30])
def test_truncated_blob_is_a_blob_error(cut: int) -> None:
    blob = _blob(_cuda("cubin", {"k": ["blockIdx.x"]}, b"\x7fELF" * 10))
    with pytest.raises(BlobError):
        parse_module_blob(blob[:cut] if cut < 8 else _u64(len(blob) - 8) + blob[8:cut])


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
