"""TVM `.params` files (an NDArray list): encode, decode and check, byte for byte.

Layout (all little-endian; docs/dlr-runtime.md §5):

    u64 0xF7E58D4F05049CB7, u64 0          list magic, reserved
    u64 N, N × (u64 len + UTF-8 name)      names
    u64 N                                  array count (must equal N)
    N × array record, in name order:
        u64 0xDD5E40F096B4A13F, u64 0      array magic, reserved
        i32 device_type (1 = CPU), i32 device_id
        i32 ndim; u8 code, u8 bits, u16 lanes
        i64 × ndim shape; i64 data_bytes; raw C-order data

DLR compares only byte sizes when it loads weights, so a reshaped or missing weight runs
silently wrong: `decode_params` gives the names, dtypes and shapes that preflight.py checks
against the graph. Pure: no dlr, no cv2.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

LIST_MAGIC = 0xF7E58D4F05049CB7
ARRAY_MAGIC = 0xDD5E40F096B4A13F
CPU_DEVICE = 1

_DTYPE_CODES = {0: "int", 1: "uint", 2: "float"}
_CODES_BY_KIND = {"i": 0, "u": 1, "f": 2}
# A name longer than this is certainly a corrupt length field, not a weight name.
_MAX_NAME_BYTES = 1 << 16


class ParamsFormatError(ValueError):
    """The bytes are not a well-formed TVM NDArray list; the message says where it broke."""


@dataclass(frozen=True, slots=True)
class ParamArray:
    """One decoded weight: its dtype as TVM spells it (`float32`), shape and raw bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_numpy(self) -> NDArray[np.generic]:
        """The weight as a numpy array (a copy)."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(
            self.shape
        )


def encode_params(arrays: Mapping[str, NDArray[np.generic]]) -> bytes:
    """Serialise named arrays in the order given (DLR matches them by name)."""
    names = list(arrays)
    out = bytearray(struct.pack("<QQQ", LIST_MAGIC, 0, len(names)))
    for name in names:
        encoded = name.encode("utf-8")
        out += struct.pack("<Q", len(encoded)) + encoded
    out += struct.pack("<Q", len(names))
    for name in names:
        array = np.ascontiguousarray(arrays[name])
        kind = array.dtype.kind
        if kind not in _CODES_BY_KIND:
            msg = f"{name}: dtype {array.dtype} cannot be stored in a .params file"
            raise ParamsFormatError(msg)
        bits = array.dtype.itemsize * 8
        out += struct.pack("<QQiii", ARRAY_MAGIC, 0, CPU_DEVICE, 0, array.ndim)
        out += struct.pack("<BBH", _CODES_BY_KIND[kind], bits, 1)
        out += struct.pack(f"<{array.ndim}q", *array.shape)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        out += struct.pack("<q", len(data)) + data
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self._data):
            msg = (
                f"truncated at byte {self.offset}: {what} needs {size} bytes, "
                f"{len(self._data) - self.offset} left"
            )
            raise ParamsFormatError(msg)
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def decode_params(data: bytes) -> dict[str, ParamArray]:
    """Parse a `.params` file's bytes.

    Raises:
        ParamsFormatError: wrong magic, truncation, count mismatch, non-CPU device, bad sizes.
    """
    if not data:
        msg = "the file is empty"
        raise ParamsFormatError(msg)
    reader = _Reader(data)
    magic, _reserved = reader.unpack("<QQ", "header")
    if magic != LIST_MAGIC:
        msg = f"not a TVM parameter file (magic 0x{magic:016X}, expected 0x{LIST_MAGIC:016X})"
        raise ParamsFormatError(msg)
    (count,) = reader.unpack("<Q", "name count")
    names: list[str] = []
    for index in range(count):
        (length,) = reader.unpack("<Q", f"length of name {index}")
        if length > _MAX_NAME_BYTES:
            msg = f"name {index} claims {length} bytes: corrupt file"
            raise ParamsFormatError(msg)
        raw = reader.take(length, f"name {index}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            msg = f"name {index} is not UTF-8"
            raise ParamsFormatError(msg) from exc
    (array_count,) = reader.unpack("<Q", "array count")
    if array_count != count:
        msg = f"{count} names but {array_count} arrays"
        raise ParamsFormatError(msg)
    arrays: dict[str, ParamArray] = {}
    for name in names:
        arrays[name] = _decode_array(reader, name)
    if reader.offset != len(data):
        msg = f"{len(data) - reader.offset} unexpected bytes after the last array"
        raise ParamsFormatError(msg)
    return arrays


def _decode_array(reader: _Reader, name: str) -> ParamArray:
    magic, _reserved = reader.unpack("<QQ", f"header of {name}")
    if magic != ARRAY_MAGIC:
        msg = f"{name}: bad array magic 0x{magic:016X}"
        raise ParamsFormatError(msg)
    device_type, _device_id, ndim = reader.unpack("<iii", f"device and ndim of {name}")
    if device_type != CPU_DEVICE:
        msg = f"{name}: stored for device type {device_type}, DLR loads only CPU (1) arrays"
        raise ParamsFormatError(msg)
    if not 0 <= ndim <= 32:  # TVM never goes near this; a bigger value is a corrupt field
        msg = f"{name}: implausible ndim {ndim}"
        raise ParamsFormatError(msg)
    code, bits, lanes = reader.unpack("<BBH", f"dtype of {name}")
    if code not in _DTYPE_CODES or bits not in {8, 16, 32, 64} or lanes != 1:
        msg = f"{name}: unsupported dtype (code {code}, bits {bits}, lanes {lanes})"
        raise ParamsFormatError(msg)
    shape = reader.unpack(f"<{ndim}q", f"shape of {name}")
    if any(dim < 0 for dim in shape):
        msg = f"{name}: negative dimension in shape {list(shape)}"
        raise ParamsFormatError(msg)
    (data_bytes,) = reader.unpack("<q", f"size of {name}")
    expected = int(np.prod(shape, dtype=np.int64)) * (bits // 8)
    if data_bytes != expected:
        msg = f"{name}: {data_bytes} data bytes for shape {list(shape)} × {bits} bits ({expected})"
        raise ParamsFormatError(msg)
    data = reader.take(data_bytes, f"data of {name}")
    return ParamArray(name=name, dtype=f"{_DTYPE_CODES[code]}{bits}", shape=shape, data=data)
