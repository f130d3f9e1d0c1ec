"""What the converter reads: a package (zip or folder) or a bare stage folder → `StageModel`.

Looser than pre-flight (model/preflight.py), which accepts only what LFV runs: any number of
data inputs, any dtypes, a kernel library compiled with `--system-lib`. What the converter
cannot do yet is refused here with the reason: a library for another CPU (AArch64 builds run
their kernels under emulation, not yet wired) or a GPU build (CUDA kernels in the module
blob).

Input names are the graph's argument nodes without a weight (what DLR reports); when every
argument has a stored value (a test model), they all become inputs with those values as
defaults. Output names come from the `.meta` (`Model.Outputs[i].name`), else `output_<i>`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.convert import ConvertError
from lfv_edge.convert.abi import SYSTEM_LIB_SYMBOLS
from lfv_edge.errors import ModelPackageError
from lfv_edge.model.archive import extract_package_zip, sha256_of
from lfv_edge.model.elf import (
    MACHINE_NAMES,
    ElfError,
    SharedObject,
    host_machine,
    read_shared_object,
    read_symbol_data,
)
from lfv_edge.model.manifest import Manifest, decode_manifest
from lfv_edge.model.preflight import find_stage_files, read_meta
from lfv_edge.model.tvm_blob import BlobError, parse_module_blob
from lfv_edge.model.tvm_graph import Graph, GraphFormatError, parse_graph
from lfv_edge.model.tvm_params import ParamArray, ParamsFormatError, decode_params

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class StageModel:
    """A compiled TVM graph-executor model, ready to be called kernel by kernel."""

    folder: Path
    graph: Graph
    params: dict[str, ParamArray]
    kernel_lib: Path
    kernel: SharedObject
    system_lib: bool
    input_names: tuple[str, ...]
    inputs_have_defaults: bool
    output_names: tuple[str, ...]
    graph_sha256: str
    params_sha256: str
    manifest: Manifest | None
    manifest_text: str | None
    package_root: Path | None

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Shape of a data input."""
        return self.graph.arg_shape(name)

    def input_dtype(self, name: str) -> str:
        """Dtype of a data input."""
        return self.graph.arg_dtype(name)


def _package_root(folder: Path) -> Path | None:
    if (folder / MANIFEST).is_file():
        return folder
    candidates = [p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    return candidates[0] if len(candidates) == 1 else None


def locate_stage(source: Path) -> tuple[Path, Path | None]:
    """(stage folder, package root or None) for a package zip/folder or a bare stage folder.

    Raises:
        ConvertError: nothing usable at `source`.
    """
    if not source.exists():
        msg = f"{source}: no such file or folder"
        raise ConvertError(msg)
    folder = source
    if source.is_file():
        if not zipfile.is_zipfile(source):
            msg = f"{source}: not a zip file, a package folder or a stage folder"
            raise ConvertError(msg)
        try:
            folder = extract_package_zip(source)
        except ModelPackageError as exc:
            raise ConvertError(str(exc)) from exc
    root = _package_root(folder)
    if root is None:
        return folder, None
    try:
        manifest = decode_manifest((root / MANIFEST).read_bytes())
    except ModelPackageError as exc:
        msg = f"{root / MANIFEST}: {exc}"
        raise ConvertError(msg) from exc
    return root / manifest.stage.type, root


def load_stage(source: Path) -> StageModel:
    """Read and check what the converter needs.

    Raises:
        ConvertError: missing or malformed files, a foreign-architecture or GPU build.
    """
    stage_dir, root = locate_stage(source)
    if stage_dir.is_dir():  # say "AArch64" before "no .params" for a foreign build
        for library in sorted(stage_dir.glob("*.so")):
            if not library.name.endswith("libdlr.so"):
                _read_kernel(library)
    try:
        files = find_stage_files(stage_dir)
    except ModelPackageError as exc:
        raise ConvertError(str(exc)) from exc
    try:
        graph = parse_graph(files.graph_json.read_bytes())
        params = decode_params(files.params.read_bytes())
    except (GraphFormatError, ParamsFormatError) as exc:
        msg = f"{stage_dir}: {exc}"
        raise ConvertError(msg) from exc
    kernel = _read_kernel(files.kernel_lib)
    _refuse_device_code(files.kernel_lib)
    manifest = manifest_text = None
    if root is not None:
        manifest_text = (root / MANIFEST).read_text()
        manifest = decode_manifest(manifest_text.encode())
    arg_names = graph.arg_names()
    inputs = tuple(name for name in arg_names if name not in params)
    defaults = not inputs
    if defaults:
        inputs = tuple(arg_names)
    missing = sorted(graph.kernel_names() - kernel.defined_symbols)
    if missing:
        msg = f"{files.graph_json.name} calls kernel(s) that {files.kernel_lib.name} does not export: {', '.join(missing)}"
        raise ConvertError(msg)
    try:
        _, meta_names = read_meta(files.meta)
    except ModelPackageError as exc:
        raise ConvertError(str(exc)) from exc
    heads = len(graph.heads)
    names = (
        meta_names
        if len(meta_names) == heads and len(set(meta_names)) == heads
        else tuple(f"output_{i}" for i in range(heads))
    )
    clash = set(names) & set(inputs)
    if clash:
        names = tuple(f"output_{i}" for i in range(heads))
    return StageModel(
        folder=stage_dir,
        graph=graph,
        params=params,
        kernel_lib=files.kernel_lib,
        kernel=kernel,
        system_lib=bool(kernel.undefined_symbols & SYSTEM_LIB_SYMBOLS),
        input_names=inputs,
        inputs_have_defaults=defaults,
        output_names=names,
        graph_sha256=sha256_of(files.graph_json),
        params_sha256=sha256_of(files.params),
        manifest=manifest,
        manifest_text=manifest_text,
        package_root=root,
    )


def _read_kernel(path: Path) -> SharedObject:
    with path.open("rb") as stream:
        header = stream.read(20)
    machine = int.from_bytes(header[18:20], "little") if len(header) == 20 else None
    host = host_machine()
    if machine is not None and host is not None and machine != host and header[:4] == b"\x7fELF":
        name = MACHINE_NAMES.get(machine, hex(machine))
        msg = (
            f"{path.name} holds {name} kernels; the converter calls kernels natively on "
            f"{MACHINE_NAMES.get(host, 'this machine')} only (AArch64 packages are not convertible yet)"
        )
        raise ConvertError(msg)
    try:
        return read_shared_object(path)
    except ElfError as exc:
        msg = f"{path}: {exc}"
        raise ConvertError(msg) from exc


def _refuse_device_code(path: Path) -> None:
    blob = read_symbol_data(path, "__tvm_dev_mblob")
    if blob is None:
        return
    try:
        modules = parse_module_blob(blob)
    except BlobError as exc:
        msg = f"{path.name}: unreadable __tvm_dev_mblob: {exc}"
        raise ConvertError(msg) from exc
    kinds = sorted(set(modules.kinds) - {"metadata"})
    if kinds:
        msg = f"{path.name} imports device/external modules ({', '.join(kinds)}): GPU (CUDA) and bring-your-own-codegen packages are not convertible yet"
        raise ConvertError(msg)
