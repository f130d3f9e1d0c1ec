"""The modules TVM packs into a kernel library: the `__tvm_dev_mblob` data symbol. Pure.

A TVM build for a GPU (or with bring-your-own-codegen parts such as TensorRT) puts the device
code and the partitioned subgraphs into the host `.so` as one exported byte array. Its layout
(TVM's ModuleSerializer; all integers little-endian uint64, a string is a uint64 length and
its bytes):

    total byte count of what follows
    entry count
    per entry: type key (string), then that module's own bytes:
        "_lib"          the host library itself (no bytes)
        "_import_tree"  two uint64 vectors (row pointers, child indices): who imports whom
        "cuda"          format string ("cubin", "ptx", "fatbin"), function map, data string
        "tensorrt"      TVM 0.7 / DLR 1.6: one JSON string {"subgraphs": {name: ...}, ...};
                        TVM 0.8 JSON runtime: symbol, graph JSON, constant names
        "dnnl", …       JSON runtimes as TensorRT in 0.8
        "metadata"      constants for the JSON runtimes (names, NDArrays, symbol → names)

Without `_import_tree` (older blobs) the host library imports every listed module. A module
whose format we do not know ends the reading (its length is not stored); the entries read so
far are still reported, with a note.

Function names a graph node may call from these modules (not from the ELF exports): the
TensorRT subgraph names (`tensorrt_0` in 0.7, `tvmgen_default_tensorrt_main_0` in 0.8) and
every JSON runtime's symbol. CUDA kernels are launched by host functions, never by nodes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

BLOB_SYMBOL = "__tvm_dev_mblob"
_U64 = struct.Struct("<Q")
_MAX_COUNT = 1 << 24  # far above any real blob; guards against reading garbage as a count
_JSON_RUNTIMES = frozenset({"tensorrt", "dnnl", "ethos-n", "ethos-u", "arm_compute_lib", "cmsis"})
# Data types in a CUDA FunctionInfo: {code u8, bits u8, lanes u16}.
_DTYPE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "handle", 4: "bfloat"}


class BlobError(ValueError):
    """The blob is truncated or not in TVM's module serialization format."""


@dataclass(frozen=True, slots=True)
class DeviceFunction:
    """One kernel of a CUDA module: its argument types and launch tags."""

    name: str
    arg_types: tuple[str, ...]  # e.g. ("handle", "handle", "int32")
    thread_axis_tags: tuple[str, ...]  # e.g. ("blockIdx.x", "threadIdx.x")


@dataclass(frozen=True, slots=True)
class ImportedModule:
    """One entry of the blob."""

    kind: str  # the type key: "_lib", "cuda", "tensorrt", "metadata", …
    size: int  # bytes of this entry's body
    code_format: str = ""  # cuda: cubin, ptx or fatbin
    device_functions: tuple[DeviceFunction, ...] = ()  # cuda: its kernels
    graph_functions: tuple[str, ...] = ()  # names graph nodes may call (BYOC subgraphs)
    code: bytes = b""  # cuda: the cubin/PTX bytes
    ptx_target: str = ""  # cuda PTX: its `.target` line, e.g. sm_72
    fatbin_targets: tuple[str, ...] = ()  # cuda fatbin: e.g. ("sm_90", "compute_75")

    def describe(self) -> str:
        """One line: kind, format, how many functions."""
        if self.kind == "cuda":
            targets = self.fatbin_targets or ((self.ptx_target,) if self.ptx_target else ())
            target = f" {' + '.join(targets)}" if targets else ""
            return f"cuda ({self.code_format}{target}, {len(self.device_functions)} kernels)"
        if self.graph_functions:
            return f"{self.kind} ({', '.join(self.graph_functions)})"
        return self.kind


@dataclass(frozen=True, slots=True)
class ModuleBlob:
    """What `__tvm_dev_mblob` holds."""

    modules: tuple[ImportedModule, ...]
    import_tree: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    notes: tuple[str, ...] = field(default=())  # what could not be read, and why

    @property
    def graph_functions(self) -> frozenset[str]:
        """Every function a graph node may call through the imported modules."""
        return frozenset(name for module in self.modules for name in module.graph_functions)

    @property
    def imported(self) -> tuple[ImportedModule, ...]:
        """The modules besides the host library itself."""
        return tuple(m for m in self.modules if m.kind not in {"_lib", "_import_tree"})

    @property
    def kinds(self) -> tuple[str, ...]:
        """The module kinds, host library and import tree left out."""
        return tuple(m.kind for m in self.imported)

    def describe(self) -> list[str]:
        """One line per imported module (`ImportedModule.describe`)."""
        return [module.describe() for module in self.imported]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u64(self, what: str) -> int:
        if self.at + 8 > len(self.data):
            msg = f"truncated at byte {self.at} while reading {what}"
            raise BlobError(msg)
        (value,) = _U64.unpack_from(self.data, self.at)
        self.at += 8
        return int(value)

    def count(self, what: str) -> int:
        value = self.u64(what)
        if value > _MAX_COUNT:
            msg = f"{what} is {value}, not a plausible count (byte {self.at - 8})"
            raise BlobError(msg)
        return value

    def raw(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.at:
            msg = f"{what} needs {size} bytes at byte {self.at}, only {len(self.data) - self.at} remain"
            raise BlobError(msg)
        value = self.data[self.at : self.at + size]
        self.at += size
        return value

    def string(self, what: str) -> bytes:
        return self.raw(self.u64(f"the length of {what}"), what)

    def text(self, what: str) -> str:
        return self.string(what).decode("utf-8", errors="replace")

    def texts(self, what: str) -> tuple[str, ...]:
        return tuple(self.text(f"{what}[{i}]") for i in range(self.count(f"{what} count")))

    def u64s(self, what: str) -> tuple[int, ...]:
        return tuple(self.u64(f"{what}[{i}]") for i in range(self.count(f"{what} count")))


def parse_module_blob(data: bytes) -> ModuleBlob:
    """Read the modules of a `__tvm_dev_mblob` (the symbol's bytes, length prefix included).

    Raises:
        BlobError: truncated, or counts and lengths that cannot be right.
    """
    reader = _Reader(data)
    total = reader.u64("the blob length")
    if total > len(data) - 8:
        msg = f"the blob says it holds {total} bytes, the symbol has {len(data) - 8}"
        raise BlobError(msg)
    reader.data = data[: 8 + total]
    modules: list[ImportedModule] = []
    tree: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    notes: list[str] = []
    for index in range(reader.count("the module count")):
        kind = reader.text(f"the type key of module {index}")
        start = reader.at
        if kind == "_lib":
            modules.append(ImportedModule(kind, 0))
        elif kind == "_import_tree":
            tree = (reader.u64s("import tree row pointers"), reader.u64s("import tree children"))
        elif kind == "cuda":
            modules.append(_cuda(reader, start))
        elif kind == "metadata":
            _skip_metadata(reader)
            modules.append(ImportedModule(kind, reader.at - start))
        elif kind in _JSON_RUNTIMES:
            modules.append(_json_runtime(reader, kind, start))
        else:
            notes.append(
                f"module {index} is of kind {kind!r}, whose format is not known here; "
                "it and any after it were not read"
            )
            modules.append(ImportedModule(kind, len(reader.data) - start))
            break
    return ModuleBlob(modules=tuple(modules), import_tree=tree, notes=tuple(notes))


def _cuda(reader: _Reader, start: int) -> ImportedModule:
    code_format = reader.text("the CUDA code format")
    functions: list[DeviceFunction] = []
    for i in range(reader.count("the CUDA function count")):
        key = reader.text(f"CUDA function {i} key")
        name = reader.text(f"CUDA function {i} name") or key  # Neo builds leave the name empty
        types = []
        for j in range(reader.count(f"CUDA function {name} argument count")):
            code, bits, lanes = struct.unpack("<BBH", reader.raw(4, f"{name} argument {j}"))
            label = _DTYPE_NAMES.get(code, f"code{code}")
            types.append(
                label if code == 3 else f"{label}{bits}" + (f"x{lanes}" if lanes > 1 else "")
            )
        tags = reader.texts(f"CUDA function {name} thread axis tags")
        functions.append(DeviceFunction(name, tuple(types), tags))
    code = reader.string("the CUDA code")
    target = ""
    fatbin = fatbin_targets(code) if code_format == "fatbin" else ()
    if code_format == "ptx":
        for line in code[:4096].decode("ascii", errors="replace").splitlines():
            if line.strip().startswith(".target"):
                target = line.split()[1].rstrip(",") if len(line.split()) > 1 else ""
                break
    return ImportedModule(
        "cuda", reader.at - start, code_format, tuple(functions), code=code, ptx_target=target,
        fatbin_targets=fatbin,
    )  # fmt: skip


_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries
_FATBIN_ENTRY = struct.Struct("<HHIQ")  # kind (1 PTX, 2 machine code), ?, header size, size
_FATBIN_ARCH_OFFSET = 28  # uint32 compute capability × 10 inside an entry header


def fatbin_targets(code: bytes) -> tuple[str, ...]:
    """The entries of a CUDA fatbin: `sm_XY` for machine code, `compute_XY` for PTX.

    NVIDIA does not document the container; this reads only what nvcc 11–13 are seen to
    write (magic, entry kinds and architectures) and returns () for anything else. It
    describes a package; nothing depends on it.
    """
    if len(code) < _FATBIN_HEADER.size:
        return ()
    magic, _, header_size, size = _FATBIN_HEADER.unpack_from(code)
    if magic != _FATBIN_MAGIC or header_size < _FATBIN_HEADER.size:
        return ()
    found: list[str] = []
    at, end = header_size, min(len(code), header_size + size)
    while at + _FATBIN_ARCH_OFFSET + 4 <= end and len(found) < 64:
        kind, _, entry_header, payload = _FATBIN_ENTRY.unpack_from(code, at)
        if entry_header < _FATBIN_ARCH_OFFSET + 4 or kind not in (1, 2):
            break
        (arch,) = struct.unpack_from("<I", code, at + _FATBIN_ARCH_OFFSET)
        found.append(f"{'sm' if kind == 2 else 'compute'}_{arch}")
        at += entry_header + payload
    return tuple(found)


def _json_runtime(reader: _Reader, kind: str, start: int) -> ImportedModule:
    first = reader.string(f"the first string of the {kind} module")
    names: tuple[str, ...]
    try:
        old = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        old = None
    if isinstance(old, dict) and isinstance(old.get("subgraphs"), dict):
        names = tuple(str(name) for name in old["subgraphs"])  # TVM 0.7 / DLR 1.6 TensorRT
    else:
        reader.string(f"the graph JSON of the {kind} module")  # 0.8: symbol, graph, constants
        reader.texts(f"the constant names of the {kind} module")
        names = (first.decode("utf-8", errors="replace"),)
    return ImportedModule(kind, reader.at - start, graph_functions=names)


def _skip_metadata(reader: _Reader) -> None:
    reader.texts("metadata variable names")
    for i in range(reader.count("metadata array count")):
        _skip_ndarray(reader, f"metadata array {i}")
    reader.texts("metadata symbols")
    for i in range(reader.count("metadata symbol count")):
        reader.texts(f"metadata symbol {i} variables")


def _skip_ndarray(reader: _Reader, what: str) -> None:
    # NDArray::Save, as in .params records: magic, reserved, device (2×i32), ndim (i32),
    # dtype (4 bytes), shape (ndim × i64), data byte count (i64), data.
    header = reader.raw(8 + 8 + 8 + 4 + 4, what)
    ndim = struct.unpack_from("<i", header, 24)[0]
    if not 0 <= ndim <= 32:
        msg = f"{what} has {ndim} dimensions"
        raise BlobError(msg)
    reader.raw(8 * ndim, f"{what} shape")
    reader.raw(reader.u64(f"{what} byte count"), f"{what} data")
