"""The `__tvm_dev_mblob` writer against the project's reader (tvm_blob.py)."""

from __future__ import annotations

import struct

import pytest

from lfv_edge.model.tvm_blob import BlobError, parse_module_blob
from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.blob import (
    HANDLE,
    INT32,
    CudaFunction,
    CudaModule,
    encode_cuda_module,
    encode_module_blob,
)

PTX = b"//\n.version 8.0\n.target sm_75\n.address_size 64\n"


def _module(*functions: CudaFunction, code: bytes = PTX, fmt: str = "ptx") -> CudaModule:
    return CudaModule(fmt, functions, code)


def test_written_blob_reads_back_with_every_field() -> None:
    # given
    conv = CudaFunction(
        "fused_conv_kernel0", (HANDLE, HANDLE, INT32), ("blockIdx.x", "blockIdx.y", "threadIdx.x")
    )
    relu = CudaFunction("fused_relu_kernel0", (HANDLE, HANDLE), ("blockIdx.x", "threadIdx.x"))
    # when
    blob = parse_module_blob(encode_module_blob(_module(conv, relu)))
    # then
    assert [m.kind for m in blob.modules] == ["_lib", "cuda"], "host library first, then CUDA"
    assert blob.import_tree == ((0, 1, 1), (1,)), "the host library imports the CUDA module"
    assert blob.notes == ()
    cuda = blob.modules[1]
    assert cuda.code_format == "ptx"
    assert cuda.code == PTX
    assert cuda.ptx_target == "sm_75"
    functions = {f.name: f for f in cuda.device_functions}
    assert functions["fused_conv_kernel0"].arg_types == ("handle", "handle", "int32")
    assert functions["fused_conv_kernel0"].thread_axis_tags == (
        "blockIdx.x", "blockIdx.y", "threadIdx.x",
    )  # fmt: skip
    assert functions["fused_relu_kernel0"].arg_types == ("handle", "handle")


def test_length_prefix_counts_exactly_the_body() -> None:
    # given
    data = encode_module_blob(_module(CudaFunction("k", (HANDLE,), ("threadIdx.x",))))
    # when
    (total,) = struct.unpack_from("<Q", data)
    # then
    assert total == len(data) - 8, "TVM reads exactly the prefixed byte count"
    with pytest.raises(BlobError):
        parse_module_blob(data[:-1])


def test_function_table_keys_are_the_kernel_names() -> None:
    # given: CUDAModuleNode looks kernels up by the table key and loads that symbol
    body = encode_cuda_module(_module(CudaFunction("fused_a_kernel0", (HANDLE,), ("blockIdx.x",))))
    # when
    fmt_len = struct.unpack_from("<Q", body)[0]
    at = 8 + fmt_len + 8  # format string, then the function count
    key_len = struct.unpack_from("<Q", body, at)[0]
    key = body[at + 8 : at + 8 + key_len]
    name_len = struct.unpack_from("<Q", body, at + 8 + key_len)[0]
    name = body[at + 16 + key_len : at + 16 + key_len + name_len]
    # then
    assert key == name == b"fused_a_kernel0"


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        (CudaModule("elf", (CudaFunction("k", (HANDLE,), ("blockIdx.x",)),), PTX), "format"),
        (CudaModule("ptx", (), PTX), "distinct kernel names"),
        (CudaModule("ptx", (CudaFunction("k", (HANDLE,), ("blockIdx.x",)),), b""), "device code"),
        (_module(CudaFunction("k", (HANDLE,), ("warp.x",))), "thread-axis tags"),
        (_module(CudaFunction("k", (HANDLE,), ("blockIdx.x", "blockIdx.x"))), "thread-axis"),
        (_module(CudaFunction("not a name", (HANDLE,), ("blockIdx.x",))), "C identifier"),
        (
            _module(
                CudaFunction("k", (HANDLE,), ("blockIdx.x",)),
                CudaFunction("k", (HANDLE,), ("blockIdx.x",)),
            ),
            "distinct",
        ),
    ],
)
def test_bad_modules_are_refused_with_the_reason(module: CudaModule, problem: str) -> None:
    with pytest.raises(BuildError, match=problem):
        encode_module_blob(module)
