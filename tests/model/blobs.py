"""Fabricated `__tvm_dev_mblob` contents in TVM's module serialisation (docs/dlr-runtime.md §11)."""

from __future__ import annotations

import json
import struct


def u64(value: int) -> bytes:
    """A little-endian uint64."""
    return struct.pack("<Q", value)


def string(value: str | bytes) -> bytes:
    """A uint64 length, then the bytes."""
    raw = value.encode() if isinstance(value, str) else value
    return u64(len(raw)) + raw


def blob(*entries: bytes) -> bytes:
    """The whole symbol: byte count, entry count, entries (each starting with its type key)."""
    body = u64(len(entries)) + b"".join(entries)
    return u64(len(body)) + body


def cuda(fmt: str, functions: dict[str, list[str]], code: bytes) -> bytes:
    """A CUDA module entry: format, function map (two handle arguments each), code."""
    fmap = u64(len(functions))
    for name, tags in functions.items():
        handle = struct.pack("<BBH", 3, 64, 1)
        fmap += string(name) + string(name) + u64(2) + handle + handle
        fmap += u64(len(tags)) + b"".join(string(t) for t in tags)
    return string("cuda") + string(fmt) + fmap + string(code)


def tensorrt_07(*subgraphs: str) -> bytes:
    """A TensorRT module as TVM 0.7 / DLR 1.6 write it: one JSON string."""
    body = {"subgraphs": {name: {} for name in subgraphs}, "use_implicit_batch": True}
    return string("tensorrt") + string(json.dumps(body))


def tensorrt_08(symbol: str, *constants: str) -> bytes:
    """A TensorRT JSON runtime as TVM 0.8 writes it: symbol, graph JSON, constant names."""
    return (
        string("tensorrt") + string(symbol) + string("{}") + u64(len(constants))
        + b"".join(string(c) for c in constants)
    )  # fmt: skip


def as_c_source(data: bytes) -> str:
    """C source defining `__tvm_dev_mblob` with these bytes, exported like TVM does."""
    values = ",".join(str(b) for b in data)
    return (
        '__attribute__((visibility("default"))) const unsigned char '
        f"__tvm_dev_mblob[{len(data)}] = {{{values}}};\n"
    )
