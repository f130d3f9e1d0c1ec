"""Writer of `__tvm_dev_mblob`: the device modules TVM packs into a kernel library. Pure.

The reader is `lfv_edge.model.tvm_blob`; this writes the same layout (TVM's ModuleSerializer
with an import tree, as DLR 1.8's TVM reads it; all integers little-endian uint64, a string
is its uint64 length then its bytes):

    total byte count of what follows
    entry count (3)
    "_lib"                                   the host library itself, the root (index 0)
    "cuda", fmt, function map, data          CUDAModuleNode::SaveToBinary
    "_import_tree", row pointers, children   [0, 1, 1], [1]: the host library imports the CUDA module

Function map: count, then per kernel its key (the name the host code asks for and the symbol
in the cubin/PTX), then FunctionInfo: name, argument types (count, then 4 bytes each:
DLDataType code, bits, lanes), thread-axis tags (count, then strings).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from lfv_edge.modelbuild import BuildError

_U64 = struct.Struct("<Q")
CODE_FORMATS = frozenset({"cubin", "ptx", "fatbin"})
THREAD_AXIS_TAGS = frozenset(
    {"blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z"}
)
# DLDataType (code, bits, lanes) of a kernel argument.
HANDLE = (3, 64, 1)
INT32 = (0, 32, 1)


@dataclass(frozen=True, slots=True)
class CudaFunction:
    """One kernel of a CUDA module, as the runtime's function table describes it."""

    name: str  # the symbol in the cubin/PTX; also the key the host code looks up
    arg_types: tuple[tuple[int, int, int], ...]  # DLDataType per kernel argument
    thread_axis_tags: tuple[str, ...]  # launch sizes the caller appends, in this order


@dataclass(frozen=True, slots=True)
class CudaModule:
    """Device code (cubin, PTX or a fatbin holding both) and its function table."""

    code_format: str
    functions: tuple[CudaFunction, ...]
    code: bytes


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _U64.pack(len(data)) + data


def _u64s(values: Sequence[int]) -> bytes:
    return _U64.pack(len(values)) + b"".join(_U64.pack(v) for v in values)


def _function(function: CudaFunction) -> bytes:
    if not function.name.isidentifier() or not function.name.isascii():
        msg = f"kernel name {function.name!r} is not a C identifier"
        raise BuildError(msg)
    unknown = sorted(set(function.thread_axis_tags) - THREAD_AXIS_TAGS)
    if unknown or len(set(function.thread_axis_tags)) != len(function.thread_axis_tags):
        msg = f"{function.name}: thread-axis tags {list(function.thread_axis_tags)} must be distinct blockIdx/threadIdx axes"
        raise BuildError(msg)
    types = b"".join(struct.pack("<BBH", *dtype) for dtype in function.arg_types)
    return (
        _string(function.name)
        + _string(function.name)
        + _U64.pack(len(function.arg_types))
        + types
        + _U64.pack(len(function.thread_axis_tags))
        + b"".join(_string(tag) for tag in function.thread_axis_tags)
    )


def encode_cuda_module(module: CudaModule) -> bytes:
    """The bytes `CUDAModuleNode::SaveToBinary` writes: format, function map, code."""
    if module.code_format not in CODE_FORMATS:
        msg = f"CUDA code format {module.code_format!r} is not one of {sorted(CODE_FORMATS)}"
        raise BuildError(msg)
    names = [f.name for f in module.functions]
    if not names or len(set(names)) != len(names):
        msg = f"a CUDA module needs distinct kernel names, got {names}"
        raise BuildError(msg)
    if not module.code:
        msg = "a CUDA module needs its device code"
        raise BuildError(msg)
    table = _U64.pack(len(module.functions)) + b"".join(_function(f) for f in module.functions)
    return _string(module.code_format) + table + _string(module.code)


def encode_module_blob(module: CudaModule) -> bytes:
    """The whole `__tvm_dev_mblob` symbol content (length prefix included) for one CUDA module."""
    body = (
        _U64.pack(3)
        + _string("_lib")
        + _string("cuda")
        + encode_cuda_module(module)
        + _string("_import_tree")
        + _u64s([0, 1, 1])
        + _u64s([1])
    )
    return _U64.pack(len(body)) + body
