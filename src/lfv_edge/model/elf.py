"""A minimal, defensive ELF64 reader for the shared objects in model packages.

Why: a kernel `.so` truncated after a valid header kills the process with SIGBUS inside
`dlopen`, a foreign-architecture library fails with a misleading "No such file or directory",
and a graph that names a kernel the `.so` lacks fails deep inside TVM (docs/dlr-runtime.md §7).
Reading the headers first turns all of these into plain messages. We also read `DT_NEEDED`
to tell whether a package's `libdlr.so` is a GPU build and which CUDA/TensorRT libraries it needs.

Reads only: the ELF header, program headers, section headers, `.dynsym` + its string table,
and `.dynamic`. Pure: no dlr, no cv2.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC, ET_DYN = 2, 3
PT_LOAD = 1
SHT_DYNSYM = 11
SHT_DYNAMIC = 6
SHN_UNDEF = 0
STB_LOCAL, STB_WEAK = 0, 2
DT_NULL, DT_NEEDED, DT_RPATH, DT_RUNPATH = 0, 1, 15, 29
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_DYN = struct.Struct("<qQ")

MACHINE_NAMES = {0x03: "x86 (32-bit)", 0x28: "ARM (32-bit)", 0x3E: "x86-64", 0xB7: "aarch64"}
_HOST_MACHINES = {"x86_64": 0x3E, "amd64": 0x3E, "aarch64": 0xB7, "arm64": 0xB7}


class ElfError(ValueError):
    """The file is not a loadable 64-bit little-endian shared object for this machine."""


@dataclass(frozen=True, slots=True)
class SharedObject:
    """What we learn from a shared object's headers."""

    path: Path
    machine: int
    defined_symbols: frozenset[str]
    needed: tuple[str, ...]
    # Strong undefined symbols: the dynamic linker must find each in a library already loaded
    # or in `needed`, or dlopen fails (RTLD_NOW) or the process dies at the first call (LAZY).
    undefined_symbols: frozenset[str] = frozenset()
    # DT_RPATH and DT_RUNPATH entries, $ORIGIN expanded; the linker treats them differently
    # (linker.py): RPATH is searched before LD_LIBRARY_PATH and only when RUNPATH is absent.
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()

    @property
    def machine_name(self) -> str:
        """Human name of the ELF machine (`x86-64`, `aarch64`, …)."""
        return machine_name(self.machine)

    @property
    def search_paths(self) -> tuple[str, ...]:
        """Every folder this object names for finding its `needed` libraries."""
        return (*self.rpath, *self.runpath)


def machine_name(machine: int) -> str:
    """Human name of an ELF machine code."""
    return MACHINE_NAMES.get(machine, f"machine 0x{machine:X}")


def read_machine(path: Path) -> int | None:
    """The ELF machine code in a file's header, or None when it is not a 64-bit ELF file."""
    with path.open("rb") as stream:
        head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size or head[:4] != ELF_MAGIC or head[4] != ELFCLASS64:
        return None
    return int(_HEADER.unpack_from(head)[2])


def host_machine() -> int | None:
    """ELF machine code of the running host, or None when unknown."""
    return _HOST_MACHINES.get(platform.machine().lower())


def read_shared_object(
    path: Path, *, expected_machine: int | None = None, executable: bool = False
) -> SharedObject:
    """Read and check a shared object's headers.

    Args:
        path: the `.so` file.
        expected_machine: ELF machine code that must match (default: this host's).
        executable: also accept a program (`ET_EXEC`), e.g. the Python interpreter.

    Raises:
        ElfError: not ELF, wrong class/endianness/type/machine, or truncated/corrupt tables.
    """
    data = path.read_bytes()
    name = path.name
    if len(data) < _HEADER.size or data[:4] != ELF_MAGIC:
        msg = f"{name} is not an ELF shared object (bad magic or shorter than an ELF header)"
        raise ElfError(msg)
    (ident, e_type, e_machine, _ver, _entry, e_phoff, e_shoff, _flags, _ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, _shstrndx) = _HEADER.unpack_from(data)  # fmt: skip
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        msg = f"{name} is not a 64-bit little-endian ELF file"
        raise ElfError(msg)
    if e_type != ET_DYN and not (executable and e_type == ET_EXEC):
        msg = f"{name} is an ELF file of type {e_type}, not a shared object (3)"
        raise ElfError(msg)
    wanted = host_machine() if expected_machine is None else expected_machine
    if wanted is not None and e_machine != wanted:
        msg = f"{name} is built for {machine_name(e_machine)}, this machine needs {machine_name(wanted)}"
        raise ElfError(msg)
    if e_phentsize != _PHDR.size or e_shentsize != _SHDR.size:
        msg = f"{name}: unexpected program/section header sizes; the file is corrupt"
        raise ElfError(msg)
    _check_range(data, e_phoff, e_phnum * _PHDR.size, name, "program header table")
    for index in range(e_phnum):
        p_type, _pf, p_offset, _va, _pa, p_filesz, _memsz, _align = _PHDR.unpack_from(
            data, e_phoff + index * _PHDR.size
        )
        if p_type == PT_LOAD:
            # dlopen maps PT_LOAD segments; a segment past the end of the file is SIGBUS.
            _check_range(data, p_offset, p_filesz, name, f"loadable segment {index}")
    _check_range(data, e_shoff, e_shnum * _SHDR.size, name, "section header table")
    sections = [_SHDR.unpack_from(data, e_shoff + i * _SHDR.size) for i in range(e_shnum)]
    symbols: set[str] = set()
    undefined: set[str] = set()
    needed: list[str] = []
    paths: dict[int, list[str]] = {DT_RPATH: [], DT_RUNPATH: []}
    for (
        _sh_name,
        sh_type,
        _f,
        _addr,
        sh_offset,
        sh_size,
        sh_link,
        _info,
        _al,
        sh_entsize,
    ) in sections:
        if sh_type not in {SHT_DYNSYM, SHT_DYNAMIC}:
            continue
        _check_range(data, sh_offset, sh_size, name, "dynamic section")
        if sh_link >= len(sections):
            msg = f"{name}: dynamic section links to a missing string table"
            raise ElfError(msg)
        str_offset, str_size = sections[sh_link][4], sections[sh_link][5]
        _check_range(data, str_offset, str_size, name, "dynamic string table")
        strings = data[str_offset : str_offset + str_size]
        if sh_type == SHT_DYNSYM:
            step = sh_entsize or _SYM.size
            for offset in range(sh_offset, sh_offset + sh_size - _SYM.size + 1, step):
                st_name, st_info, _other, st_shndx, _value, _size = _SYM.unpack_from(data, offset)
                if not st_name:
                    continue
                if st_shndx != SHN_UNDEF:
                    if st_info >> 4 != STB_LOCAL:  # a local symbol binds nothing outside
                        symbols.add(_c_string(strings, st_name))
                elif st_info >> 4 != STB_WEAK:
                    undefined.add(_c_string(strings, st_name))
        else:
            step = sh_entsize or _DYN.size
            for offset in range(sh_offset, sh_offset + sh_size - _DYN.size + 1, step):
                tag, value = _DYN.unpack_from(data, offset)
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    needed.append(_c_string(strings, value))
                elif tag in paths:
                    origin = str(path.resolve().parent)
                    paths[tag].extend(
                        entry.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                        for entry in _c_string(strings, value).split(":")
                    )
    return SharedObject(
        path=path,
        machine=e_machine,
        defined_symbols=frozenset(symbols),
        needed=tuple(needed),
        undefined_symbols=frozenset(undefined),
        rpath=tuple(paths[DT_RPATH]),
        runpath=tuple(paths[DT_RUNPATH]),
    )


def read_symbol_data(path: Path, symbol: str) -> bytes | None:
    """The bytes an exported data symbol points at in the file (None when it is not defined).

    For `__tvm_dev_mblob`, the modules TVM packs into a kernel library (tvm_blob.py). Reads
    the symbol's address and size from `.dynsym` and maps the address to a file offset
    through the loadable segments. Call `read_shared_object` first: this assumes sane tables.

    Raises:
        ElfError: the symbol's bytes lie outside every loadable segment or beyond the file.
    """
    data = path.read_bytes()
    (_ident, _type, _machine, _ver, _entry, e_phoff, e_shoff, _flags, _ehsize, _phentsize,
     e_phnum, _shentsize, e_shnum, _shstrndx) = _HEADER.unpack_from(data)  # fmt: skip
    sections = [_SHDR.unpack_from(data, e_shoff + i * _SHDR.size) for i in range(e_shnum)]
    wanted = symbol.encode()
    found: tuple[int, int] | None = None
    for _n, sh_type, _f, _a, sh_offset, sh_size, sh_link, _i, _al, sh_entsize in sections:
        if sh_type != SHT_DYNSYM or sh_link >= len(sections):
            continue
        str_offset, str_size = sections[sh_link][4], sections[sh_link][5]
        strings = data[str_offset : str_offset + str_size]
        step = sh_entsize or _SYM.size
        for offset in range(sh_offset, sh_offset + sh_size - _SYM.size + 1, step):
            st_name, _info, _other, st_shndx, st_value, st_size = _SYM.unpack_from(data, offset)
            if (
                st_shndx != SHN_UNDEF
                and strings[st_name : st_name + len(wanted) + 1] == wanted + b"\0"
            ):
                found = (st_value, st_size)
                break
    if found is None:
        return None
    address, size = found
    for index in range(e_phnum):
        p_type, _pf, p_offset, p_vaddr, _pa, p_filesz, _memsz, _align = _PHDR.unpack_from(
            data, e_phoff + index * _PHDR.size
        )
        if p_type == PT_LOAD and p_vaddr <= address and address + size <= p_vaddr + p_filesz:
            start = p_offset + address - p_vaddr
            _check_range(data, start, size, path.name, f"symbol {symbol}")
            return data[start : start + size]
    msg = f"{path.name}: symbol {symbol} lies outside the file's loadable segments"
    raise ElfError(msg)


def _check_range(data: bytes, offset: int, size: int, name: str, what: str) -> None:
    if offset < 0 or size < 0 or offset + size > len(data):
        msg = (
            f"{name} is truncated or corrupt: its {what} (bytes {offset}..{offset + size}) "
            f"lies beyond the end of the file ({len(data)} bytes)"
        )
        raise ElfError(msg)


def _c_string(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    raw = table[offset:] if end < 0 else table[offset:end]
    return raw.decode("utf-8", errors="replace")
