"""Pre-flight check of a DLR/TVM stage folder, before DLR ever sees it.

libdlr 1.6.0 accepts several broken folders silently (a missing or reshaped weight, the data
input not first) and dies by SIGBUS on others (a truncated `.so`); its load errors arrive
with an empty message (docs/dlr-runtime.md §7). This module finds those problems first and says
which file is wrong and how:

* path: exists, no `:` (DLR splits paths on it), ASCII only (DLR decodes errors as ASCII);
* files (non-recursive, like DLR): exactly one graph `*.json` (not `model-shapes.json` /
  `hyperparams.json`; `version.json` and `._*` count as extra), one `*.params`, one kernel
  `*.so` (not `libdlr.so`), at most one `*.meta`, no `*.tensorrt`;
* graph: parses and is well formed (tvm_graph.py); `.params`: decodes (tvm_params.py), every
  weight has the graph's exact shape and dtype;
* kernel `.so` and `libdlr.so`: complete ELF shared objects for this machine (a foreign
  architecture is named, with the device modules it carries); the modules packed in the
  kernel library (`__tvm_dev_mblob`, tvm_blob.py) are read; every function the graph calls is
  exported or lives in one of those modules (a TensorRT subgraph); every library it needs is
  found and every strong undefined symbol is defined by them or by this process's global scope
  (linker.py) — else DLR fails, or kills the process with "symbol lookup error";
  `libdlr.so` exports the C API the dlr Python layer calls;
* `.meta`: valid JSON; its device type is read for the device decision.

`check_model_folder` runs these on any DLR/TVM model folder; `check_stage` adds the rules of
an LFV stage: exactly one argument is not a weight (else a weight is missing and DLR would run
on uninitialised memory), it is the first (DLR reads input shapes by position), float32
`[1, 3, H, W]`.

Pure: no dlr, no cv2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.elf import (
    ElfError,
    SharedObject,
    host_machine,
    machine_name,
    read_machine,
    read_shared_object,
    read_symbol_data,
)
from lfv_edge.model.linker import Linked, ProcessLinking
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, BlobError, ModuleBlob, parse_module_blob
from lfv_edge.model.tvm_graph import Graph, GraphFormatError, TensorSpec, parse_graph
from lfv_edge.model.tvm_params import ParamsFormatError, decode_params

logger = logging.getLogger(__name__)

IGNORED_JSON = frozenset({"model-shapes.json", "hyperparams.json"})
LIBDLR_API = frozenset(
    {
        "CreateDLRModel", "DeleteDLRModel", "RunDLRModel", "SetDLRInput", "GetDLROutput",
        "GetDLROutputShape", "GetDLROutputSizeDim", "GetDLRNumInputs", "GetDLRNumOutputs",
        "GetDLRNumWeights", "GetDLRInputName", "GetDLRWeightName", "GetDLRBackend",
        "GetDLRVersion", "DLRGetLastError",
    }
)  # fmt: skip
# Module kinds that only a GPU build of DLR can run (a CUDA module, TensorRT subgraphs).
GPU_MODULE_KINDS = frozenset({"cuda", "tensorrt"})


@dataclass(frozen=True, slots=True)
class StageFiles:
    """The files DLR will use in a stage folder."""

    graph_json: Path
    params: Path
    kernel_lib: Path
    meta: Path | None
    libdlr: Path | None


@dataclass(frozen=True, slots=True)
class FolderCheck:
    """Everything pre-flight learned about a DLR model folder."""

    files: StageFiles
    graph: Graph
    inputs: tuple[TensorSpec, ...]  # graph arguments without a stored value, in input order
    weight_names: tuple[str, ...]
    weight_bytes: int
    unused_weights: tuple[str, ...]
    kernel: SharedObject
    kernel_linked: Linked  # the kernel library and the libraries it links
    modules: ModuleBlob | None  # what `__tvm_dev_mblob` holds, if the kernel library has one
    libdlr: SharedObject | None
    meta_device: str | None
    output_names: tuple[str, ...]

    @property
    def target_device(self) -> str | None:
        """What the model is compiled for: `gpu` with CUDA/TensorRT modules, else `.meta`'s device.

        The modules win over a `.meta` that says otherwise: only a GPU build of DLR can load them.
        """
        if self.modules is not None and GPU_MODULE_KINDS & set(self.modules.kinds):
            return "gpu"
        return self.meta_device


@dataclass(frozen=True, slots=True)
class StageCheck(FolderCheck):
    """A folder that also follows LFV's stage rules: one float32 [1, 3, H, W] data input."""

    input_name: str
    input_shape: tuple[int, ...]


def _fail(stage_dir: Path, problem: str) -> ModelPackageError:
    return ModelPackageError(f"{stage_dir}: {problem}")


def check_path(path: Path) -> None:
    """Reject paths DLR cannot handle: `:` anywhere, non-ASCII characters."""
    text = str(path)
    if ":" in text:
        msg = (
            f"{text}: the path contains ':', which DLR treats as a path separator; move the package"
        )
        raise ModelPackageError(msg)
    if not text.isascii():
        msg = f"{text}: the path contains non-ASCII characters, which DLR cannot report errors for; move the package"
        raise ModelPackageError(msg)


def find_stage_files(stage_dir: Path) -> StageFiles:
    """Apply DLR's file rules (non-recursive) and name what is missing or duplicated."""
    if not stage_dir.is_dir():
        raise _fail(stage_dir, "the stage folder does not exist")
    files = sorted(p for p in stage_dir.iterdir() if p.is_file())
    names = ", ".join(p.name for p in files) or "nothing"
    tensorrt = [p.name for p in files if p.name.endswith(".tensorrt")]
    if tensorrt:
        raise _fail(
            stage_dir, f"{tensorrt[0]} is a TensorRT model of DLR 1.1, which is not supported"
        )
    graphs = [
        p for p in files if p.suffix == ".json" and p.name not in IGNORED_JSON
    ]  # version.json and AppleDouble ._x.json count too: DLR counts them (docs/dlr-runtime.md §3)
    params = [p for p in files if p.suffix == ".params"]
    kernels = [p for p in files if p.suffix == ".so" and not p.name.endswith("libdlr.so")]
    metas = [p for p in files if p.suffix == ".meta"]
    for role, found in (("graph *.json", graphs), ("*.params", params), ("kernel *.so", kernels)):
        if not found:
            hint = " (files in sub-folders are not seen)" if any(stage_dir.glob("*/*")) else ""
            why = (
                " (without one DLR takes the folder for a Treelite model and fails with an "
                "unrelated message)"
                if role == "*.params"
                else ""
            )
            foreign = foreign_binaries(stage_dir)
            prefix = f"{foreign}; " if foreign else ""
            raise _fail(stage_dir, f"{prefix}no {role} file{why}; found: {names}{hint}")
        if len(found) > 1:
            listed = ", ".join(p.name for p in found)
            raise _fail(
                stage_dir, f"exactly one {role} file is allowed, found {len(found)}: {listed}"
            )
    if len(metas) > 1:
        raise _fail(
            stage_dir,
            f"at most one *.meta file is allowed, found: {', '.join(p.name for p in metas)}",
        )
    libdlr = stage_dir / "libdlr.so"
    return StageFiles(
        graph_json=graphs[0],
        params=params[0],
        kernel_lib=kernels[0],
        meta=metas[0] if metas else None,
        libdlr=libdlr if libdlr.is_file() else None,
    )


def read_meta(meta: Path | None) -> tuple[str | None, tuple[str, ...]]:
    if meta is None:
        return None, ()
    try:
        body = json.loads(meta.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        msg = f"{meta}: not valid JSON: {exc}"
        raise ModelPackageError(msg) from exc
    if not isinstance(body, dict):
        msg = f"{meta}: expected a JSON object"
        raise ModelPackageError(msg)
    requirements = body.get("Requirements", {})
    device = requirements.get("TargetDeviceType") if isinstance(requirements, dict) else None
    if device is not None and device not in {"cpu", "gpu", "opencl"}:
        msg = f"{meta}: Requirements.TargetDeviceType {device!r} is not cpu, gpu or opencl"
        raise ModelPackageError(msg)
    outputs = (
        body.get("Model", {}).get("Outputs", []) if isinstance(body.get("Model"), dict) else []
    )
    names = tuple(
        str(item["name"]) for item in outputs if isinstance(item, dict) and "name" in item
    )
    return device, names


def check_model_folder(folder: Path, *, linking: ProcessLinking | None = None) -> FolderCheck:
    """Run every pre-flight check that any DLR/TVM model folder must pass.

    Args:
        folder: the model (stage) folder.
        linking: what a kernel library loaded into this process can link against (default:
            this process).

    Raises:
        ModelPackageError: names the file and the problem.
    """
    check_path(folder.resolve())
    files = find_stage_files(folder)
    try:
        graph = parse_graph(files.graph_json.read_bytes())
    except GraphFormatError as exc:
        raise _fail(folder, f"{files.graph_json.name}: {exc}") from exc
    try:
        weights = decode_params(files.params.read_bytes())
    except ParamsFormatError as exc:
        raise _fail(folder, f"{files.params.name}: {exc}") from exc
    arg_names = graph.arg_names()
    unused = tuple(sorted(set(weights) - set(arg_names)))
    if unused:  # DLR only warns about these; they cost memory but change nothing
        logger.warning(
            "%s: %s holds weights the graph does not use: %s",
            folder,
            files.params.name,
            ", ".join(unused),
        )
    for name, array in weights.items():
        if name in unused:
            continue
        shape, dtype = graph.arg_shape(name), graph.arg_dtype(name)
        if array.shape != shape or array.dtype != dtype:
            raise _fail(
                folder,
                f"weight {name} is {array.dtype}{list(array.shape)} in {files.params.name} but "
                f"{dtype}{list(shape)} in {files.graph_json.name}",
            )
    foreign = foreign_binaries(folder)
    if foreign:
        raise _fail(folder, foreign)
    try:
        kernel = read_shared_object(files.kernel_lib)
    except ElfError as exc:
        raise _fail(folder, str(exc)) from exc
    modules = _read_modules(folder, kernel)
    _check_functions(folder, files, graph, kernel, modules)
    kernel_linked = _check_linking(folder, kernel, linking or ProcessLinking.of_this_process())
    libdlr = check_libdlr(files.libdlr) if files.libdlr is not None else None
    meta_device, output_names = read_meta(files.meta)
    return FolderCheck(
        files=files,
        graph=graph,
        inputs=tuple(spec for spec in graph.arg_specs() if spec.name not in weights),
        weight_names=tuple(sorted(set(weights) - set(unused))),
        weight_bytes=sum(len(weights[name].data) for name in weights if name not in unused),
        unused_weights=unused,
        kernel=kernel,
        kernel_linked=kernel_linked,
        modules=modules,
        libdlr=libdlr,
        meta_device=meta_device,
        output_names=output_names,
    )


def check_stage(stage_dir: Path, *, linking: ProcessLinking | None = None) -> StageCheck:
    """Run every pre-flight check on an LFV stage folder: the folder checks and LFV's input rules.

    Raises:
        ModelPackageError: names the file and the problem.
    """
    folder = check_model_folder(stage_dir, linking=linking)
    files, graph = folder.files, folder.graph
    inputs = [spec.name for spec in folder.inputs]
    arg_names = graph.arg_names()
    if len(inputs) != 1:
        missing = ", ".join(inputs[1:] if inputs else [])
        raise _fail(
            stage_dir,
            f"{files.params.name} is missing weight(s) {missing}: DLR would run with "
            "uninitialised memory"
            if len(inputs) > 1
            else "every graph argument is a weight: there is no data input",
        )
    input_name = inputs[0]
    if arg_names[0] != input_name:
        raise _fail(
            stage_dir,
            f"the data input {input_name!r} must be the first argument node (arg_nodes[0] is "
            f"{arg_names[0]!r}): DLR reads the input shape by position",
        )
    input_shape = graph.arg_shape(input_name)
    if (
        graph.arg_dtype(input_name) != "float32"
        or len(input_shape) != 4
        or input_shape[:2] != (1, 3)
    ):
        raise _fail(
            stage_dir,
            f"the data input {input_name!r} is {graph.arg_dtype(input_name)}{list(input_shape)}; "
            "LFV models take float32 [1, 3, H, W]",
        )
    base = {field.name: getattr(folder, field.name) for field in fields(FolderCheck)}
    return StageCheck(**base, input_name=input_name, input_shape=input_shape)


def foreign_binaries(folder: Path) -> str | None:
    """Name the shared objects in `folder` built for another machine, with their device modules.

    None when every `*.so` is for this machine (or is not an ELF file at all: the full checks
    report that). Reads the headers only, and a foreign kernel library's module blob.
    """
    host = host_machine()
    if host is None:
        return None
    by_machine: dict[int, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".so" or not path.is_file():
            continue
        machine = read_machine(path)
        if machine is None or machine == host:
            continue
        label = path.name
        try:
            read_shared_object(path, expected_machine=machine)
            blob = read_symbol_data(path, BLOB_SYMBOL)
            modules = parse_module_blob(blob).describe() if blob is not None else ()
        except (ElfError, BlobError, OSError):
            modules = ()
        if modules:
            label += f" (modules: {', '.join(modules)})"
        by_machine.setdefault(machine, []).append(label)
    if not by_machine:
        return None
    parts = [
        f"{' and '.join(labels)} {'is' if len(labels) == 1 else 'are'} built for "
        f"{machine_name(machine)}"
        for machine, labels in by_machine.items()
    ]
    return f"{'; '.join(parts)}: this machine runs {machine_name(host)} code"


def _read_modules(folder: Path, kernel: SharedObject) -> ModuleBlob | None:
    try:
        blob = read_symbol_data(kernel.path, BLOB_SYMBOL)
        if blob is None:
            return None
        modules = parse_module_blob(blob)
    except (ElfError, BlobError) as exc:
        raise _fail(
            folder, f"{kernel.path.name}: the modules packed in {BLOB_SYMBOL} cannot be read: {exc}"
        ) from exc
    for note in modules.notes:
        logger.warning("%s: %s: %s", folder, kernel.path.name, note)
    return modules


def _check_functions(
    folder: Path, files: StageFiles, graph: Graph, kernel: SharedObject, modules: ModuleBlob | None
) -> None:
    """Every function the graph calls is exported, or lives in an imported module."""
    from_modules = modules.graph_functions if modules is not None else frozenset()
    absent = sorted(graph.kernel_names() - kernel.defined_symbols - from_modules)
    if not absent:
        return
    where = f"{files.kernel_lib.name} does not export"
    if modules is not None and modules.kinds:
        where += f" and its modules ({', '.join(modules.kinds)}) do not provide"
    unread = f" ({'; '.join(modules.notes)})" if modules is not None and modules.notes else ""
    raise _fail(
        folder,
        f"{files.graph_json.name} calls function(s) that {where}: " + ", ".join(absent) + unread,
    )


def _check_linking(folder: Path, kernel: SharedObject, linking: ProcessLinking) -> Linked:
    """The kernel library's libraries are found and its undefined symbols defined."""
    result = linking.check(kernel)
    name = kernel.path.name
    if result.linked.missing:
        listed = ", ".join(
            f"{library} (needed by {needer})" if needer != name else library
            for library, needer in result.linked.missing
        )
        raise _fail(folder, f"{name} needs libraries that are not installed: {listed}")
    if result.unresolved:
        links = ", ".join(kernel.needed) or "none"
        msg = (
            f"{name} needs symbols that neither the libraries it links ({links}) nor this "
            f"process provide: {', '.join(sorted(result.unresolved))}; DLR would fail to load "
            "it or the process would die (symbol lookup error)"
        )
        if any(symbol.startswith("TVM") for symbol in result.unresolved):
            msg += (
                ". TVM* symbols come from TVM's own runtime (a --system-lib build expects "
                "libtvm_runtime.so), which DLR does not provide to kernel libraries"
            )
        raise _fail(folder, msg)
    return result.linked


def check_libdlr(path: Path) -> SharedObject:
    """Check that `path` is a complete `libdlr.so` for this machine exporting DLR's C API."""
    check_path(path.resolve())
    try:
        library = read_shared_object(path)
    except ElfError as exc:
        msg = f"{path}: {exc}"
        raise ModelPackageError(msg) from exc
    absent = sorted(LIBDLR_API - library.defined_symbols)
    if absent:
        msg = f"{path}: not a DLR runtime library: it does not export {', '.join(absent)}"
        raise ModelPackageError(msg)
    return library
