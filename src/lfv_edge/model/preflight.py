"""Pre-flight check of a DLR/TVM stage folder, before DLR ever sees it.

libdlr 1.6.0 accepts several broken folders silently (a missing or reshaped weight, the data
input not first) and dies by SIGBUS on others (a truncated `.so`); its load errors arrive
with an empty message (dlr-runtime.md §7). This module finds those problems first and says
which file is wrong and how:

* path: exists, no `:` (DLR splits paths on it), ASCII only (DLR decodes errors as ASCII);
* files (non-recursive, like DLR): exactly one graph `*.json` (not `model-shapes.json` /
  `hyperparams.json`; `version.json` and `._*` count as extra), one `*.params`, one kernel
  `*.so` (not `libdlr.so`), at most one `*.meta`, no `*.tensorrt`;
* graph: parses and is well formed (tvm_graph.py); `.params`: decodes (tvm_params.py), every
  weight has the graph's exact shape and dtype, exactly one argument is not a weight and it is
  the first (the data input), float32 `[1, 3, H, W]`;
* kernel `.so` and `libdlr.so`: complete ELF shared objects for this machine; every kernel the
  graph calls is exported; `libdlr.so` exports the C API the dlr Python layer calls;
* `.meta`: valid JSON; its device type is read for the device decision.

Pure: no dlr, no cv2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.elf import ElfError, SharedObject, read_shared_object
from lfv_edge.model.tvm_graph import Graph, GraphFormatError, parse_graph
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


@dataclass(frozen=True, slots=True)
class StageFiles:
    """The files DLR will use in a stage folder."""

    graph_json: Path
    params: Path
    kernel_lib: Path
    meta: Path | None
    libdlr: Path | None


@dataclass(frozen=True, slots=True)
class StageCheck:
    """Everything pre-flight learned about a stage folder."""

    files: StageFiles
    graph: Graph
    input_name: str
    input_shape: tuple[int, ...]
    weight_names: tuple[str, ...]
    unused_weights: tuple[str, ...]
    kernel: SharedObject
    libdlr: SharedObject | None
    meta_device: str | None
    output_names: tuple[str, ...]


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
    ]  # version.json and AppleDouble ._x.json count too: DLR counts them (dlr-runtime.md §3)
    params = [p for p in files if p.suffix == ".params"]
    kernels = [p for p in files if p.suffix == ".so" and not p.name.endswith("libdlr.so")]
    metas = [p for p in files if p.suffix == ".meta"]
    for role, found in (("graph *.json", graphs), ("*.params", params), ("kernel *.so", kernels)):
        if not found:
            hint = " (files in sub-folders are not seen)" if any(stage_dir.glob("*/*")) else ""
            raise _fail(stage_dir, f"no {role} file; found: {names}{hint}")
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


def check_stage(stage_dir: Path) -> StageCheck:
    """Run every pre-flight check on a stage folder.

    Raises:
        ModelPackageError: names the file and the problem.
    """
    check_path(stage_dir.resolve())
    files = find_stage_files(stage_dir)
    try:
        graph = parse_graph(files.graph_json.read_bytes())
    except GraphFormatError as exc:
        raise _fail(stage_dir, f"{files.graph_json.name}: {exc}") from exc
    try:
        weights = decode_params(files.params.read_bytes())
    except ParamsFormatError as exc:
        raise _fail(stage_dir, f"{files.params.name}: {exc}") from exc
    arg_names = graph.arg_names()
    unused = tuple(sorted(set(weights) - set(arg_names)))
    if unused:  # DLR only warns about these; they cost memory but change nothing
        logger.warning(
            "%s: %s holds weights the graph does not use: %s",
            stage_dir,
            files.params.name,
            ", ".join(unused),
        )
    for name, array in weights.items():
        if name in unused:
            continue
        shape, dtype = graph.arg_shape(name), graph.arg_dtype(name)
        if array.shape != shape or array.dtype != dtype:
            raise _fail(
                stage_dir,
                f"weight {name} is {array.dtype}{list(array.shape)} in {files.params.name} but "
                f"{dtype}{list(shape)} in {files.graph_json.name}",
            )
    inputs = [name for name in arg_names if name not in weights]
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
    try:
        kernel = read_shared_object(files.kernel_lib)
    except ElfError as exc:
        raise _fail(stage_dir, str(exc)) from exc
    absent = sorted(graph.kernel_names() - kernel.defined_symbols)
    if absent:
        raise _fail(
            stage_dir,
            f"{files.graph_json.name} calls kernel(s) that {files.kernel_lib.name} does not export: "
            + ", ".join(absent),
        )
    libdlr = check_libdlr(files.libdlr) if files.libdlr is not None else None
    meta_device, output_names = read_meta(files.meta)
    return StageCheck(
        files=files,
        graph=graph,
        input_name=input_name,
        input_shape=input_shape,
        weight_names=tuple(sorted(set(weights) - set(unused))),
        unused_weights=unused,
        kernel=kernel,
        libdlr=libdlr,
        meta_device=meta_device,
        output_names=output_names,
    )


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
