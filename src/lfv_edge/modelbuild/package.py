"""LFV-style model packages built from our kernels: `PackageSpec` → folder (or zip).

Writes exactly the layout of a Lookout for Vision edge package (docs/model-packages.md §4, §5):

    <package>/
    ├── manifest.json            model_graph (single_stage_model_graph, one "mochi" stage),
    │                            compilable_models, dataset
    └── mochi/
        ├── compiled.so          our kernels: C (compile.py), or for a `cuda` target one host
        │                        function per node + the CUDA module in __tvm_dev_mblob (gpu.py)
        ├── compiled_model.json  graph JSON (graph.py)
        ├── compiled.params      weights (tvm_params.encode_params)
        ├── compiled.meta        optional: Requirements.TargetDeviceType, Model.Outputs[i].name
        └── libdlr.so            optional: a copy of the given runtime (never committed)

DLR checks neither weight names nor shapes (docs/dlr-runtime.md §5), so after writing, the stage
is read back with `parse_graph` / `decode_params` and compared with the network. Does not
import dlr or cv2.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lfv_edge.model.elf import ElfError, read_shared_object, read_symbol_data
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, BlobError, parse_module_blob
from lfv_edge.model.tvm_graph import GraphFormatError, parse_graph
from lfv_edge.model.tvm_params import ParamsFormatError, decode_params, encode_params
from lfv_edge.modelbuild import BuildError, networks
from lfv_edge.modelbuild.compile import compile_kernels
from lfv_edge.modelbuild.gpu import (
    DEFAULT_CUDA_TARGETS,
    KERNEL_SUFFIX,
    compile_gpu_kernels,
    gpu_func_names,
)
from lfv_edge.modelbuild.graph import Network

STAGE_TYPE = "mochi"
GRAPH_TYPE = "single_stage_model_graph"
GRAPH_FILE = "compiled_model.json"
PARAMS_FILE = "compiled.params"
KERNELS_FILE = "compiled.so"
META_FILE = "compiled.meta"
LIBDLR_FILE = "libdlr.so"
DEFAULT_PIXEL_CLASSES = ("background", "scratch", "dent")
# Keys build_lfv_package writes itself; extra_stage_keys may not replace them.
CORE_STAGE_KEYS = frozenset(
    {
        "type", "class_normal_ids", "seg_normal_ids", "classification_head_enabled",
        "segmentation_head_enabled", "threshold", "normalize", "image_range_scale",
        "image_width", "image_height", "input_shape",
    }
)  # fmt: skip
# Fixed zip entry time (the zip format's epoch): the same package always zips to the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

NetworkChoice = Literal["reference", "controllable", "bench"]
DeviceType = Literal["cpu", "gpu"]
Target = Literal["cpu", "cuda"]  # what the kernel library is compiled for


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """Everything that varies between the packages tests and demos need.

    `class_names` / `class_normal_ids` may come in either order (["anomaly", "normal"] with
    [1], or ["normal", "anomaly"] with [0]); the network's outputs follow that order.
    `pixel_class_names[0]` must be "background". `extra_stage_keys` adds optional stage keys
    (seg_recall_bias, raw_image_shape, interpolation, classification_logic, …).
    `meta_device=None` writes no `.meta`. `network` is "controllable" (controllable classifier
    or segmenter, see networks.py), "reference", "bench" or an explicit `Network`.
    `target="cuda"` compiles the network's GPU kernel library (gpu.py; needs nvcc) for
    `cuda_targets`; its `.meta` must then say "gpu" (or be left out).
    """

    image_width: int = 64
    image_height: int = 64
    class_names: tuple[str, ...] = ("anomaly", "normal")
    class_normal_ids: tuple[int, ...] = (1,)
    threshold: float = 0.5
    normalize: bool = True
    image_range_scale: bool = True
    classification_head: bool = True
    segmentation_head: bool = False
    pixel_class_names: tuple[str, ...] = DEFAULT_PIXEL_CLASSES
    seg_normal_ids: tuple[int, ...] = (0,)
    extra_stage_keys: Mapping[str, object] = field(default_factory=dict)
    meta_device: DeviceType | None = "cpu"
    network: NetworkChoice | Network = "controllable"
    seed: int = 1234
    target: Target = "cpu"
    cuda_targets: tuple[str, ...] = DEFAULT_CUDA_TARGETS

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The model's data input, NCHW."""
        return (1, 3, self.image_height, self.image_width)

    @property
    def anomaly_index(self) -> int:
        """The one class index not in `class_normal_ids` (two-class packages)."""
        anomalous = [i for i in range(len(self.class_names)) if i not in self.class_normal_ids]
        if len(anomalous) != 1:
            msg = (
                f"expected exactly one anomalous class, got {anomalous} of {list(self.class_names)}"
            )
            raise BuildError(msg)
        return anomalous[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in LFV order: the mask first, then the class probabilities."""
        names = ("mask",) if self.segmentation_head else ()
        return names + (("probabilities",) if self.classification_head else ())


def _check_names(names: Sequence[str], what: str) -> None:
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        msg = f"{what} {list(names)} must be distinct non-empty strings"
        raise BuildError(msg)


def _check_ids(ids: Sequence[int], count: int, what: str) -> None:
    if len(set(ids)) != len(ids) or not all(0 <= i < count for i in ids):
        msg = f"{what} {list(ids)} must be distinct indices below {count}"
        raise BuildError(msg)


def check_spec(spec: PackageSpec) -> None:
    """Raise `BuildError` naming the first inconsistent field of `spec`."""
    if spec.image_width < 1 or spec.image_height < 1:
        msg = f"image size {spec.image_width}×{spec.image_height} must be positive"
        raise BuildError(msg)
    if not (spec.classification_head or spec.segmentation_head):
        msg = "a package needs at least one head (classification or segmentation)"
        raise BuildError(msg)
    if not (isinstance(spec.threshold, int | float) and math.isfinite(spec.threshold)):
        msg = f"threshold {spec.threshold!r} must be a finite number"
        raise BuildError(msg)
    _check_names(spec.class_names, "class_names")
    _check_ids(spec.class_normal_ids, len(spec.class_names), "class_normal_ids")
    if spec.classification_head and (
        not spec.class_normal_ids or len(spec.class_normal_ids) == len(spec.class_names)
    ):
        msg = f"class_normal_ids {list(spec.class_normal_ids)} must leave at least one anomalous class"
        raise BuildError(msg)
    if spec.segmentation_head:
        _check_names(spec.pixel_class_names, "pixel_class_names")
        if len(spec.pixel_class_names) < 2 or spec.pixel_class_names[0] != "background":
            msg = f"pixel_class_names {list(spec.pixel_class_names)} must start with 'background' and have an anomaly class"
            raise BuildError(msg)
        _check_ids(spec.seg_normal_ids, len(spec.pixel_class_names), "seg_normal_ids")
    clashes = sorted(CORE_STAGE_KEYS & set(spec.extra_stage_keys))
    if clashes:
        msg = f"extra_stage_keys {clashes} would replace keys the builder writes"
        raise BuildError(msg)
    try:
        json.dumps(dict(spec.extra_stage_keys), allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"extra_stage_keys must be JSON values: {exc}"
        raise BuildError(msg) from exc
    if spec.meta_device not in ("cpu", "gpu", None):
        msg = f"meta_device {spec.meta_device!r} must be 'cpu', 'gpu' or None"
        raise BuildError(msg)
    if spec.target not in ("cpu", "cuda"):
        msg = f"target {spec.target!r} must be 'cpu' or 'cuda'"
        raise BuildError(msg)
    if spec.target == "cuda" and spec.meta_device == "cpu":
        msg = "a cuda build's .meta must say 'gpu' (meta_device='gpu') or be left out (None)"
        raise BuildError(msg)


def network_for(spec: PackageSpec) -> Network:
    """The network a spec asks for, checked against the spec's input size and heads."""
    check_spec(spec)
    h, w = spec.image_height, spec.image_width
    choice: object = spec.network  # widened: callers may pass anything despite the type
    if isinstance(choice, Network):
        network = choice
    elif choice == "reference":
        if spec.segmentation_head:
            msg = "the reference classifier has no segmentation head; use 'controllable' or 'bench'"
            raise BuildError(msg)
        network = networks.reference_classifier(
            h, w, num_classes=len(spec.class_names), seed=spec.seed
        )
    elif choice == "controllable":
        if spec.segmentation_head and len(spec.pixel_class_names) != networks.SEGMENTER_CLASSES:
            msg = f"the controllable segmenter has 3 pixel classes (background, red, blue), got {list(spec.pixel_class_names)}"
            raise BuildError(msg)
        if spec.classification_head and len(spec.class_names) != 2:
            msg = f"the controllable networks have 2 classes, got {list(spec.class_names)}"
            raise BuildError(msg)
        anomaly = spec.anomaly_index if spec.classification_head else 0
        if spec.segmentation_head:
            network = networks.controllable_segmenter(
                h,
                w,
                classification_head=spec.classification_head,
                anomaly_index=anomaly,
                normalize=spec.normalize,
                image_range_scale=spec.image_range_scale,
            )
        else:
            network = networks.controllable_classifier(
                h,
                w,
                anomaly_index=anomaly,
                normalize=spec.normalize,
                image_range_scale=spec.image_range_scale,
            )
    elif choice == "bench":
        network = networks.bench_network(
            h,
            w,
            segmentation_head=spec.segmentation_head,
            classification_head=spec.classification_head,
            num_classes=len(spec.class_names),
            num_pixel_classes=len(spec.pixel_class_names),
            seed=spec.seed,
        )
    else:
        msg = f"unknown network {choice!r} (reference, controllable, bench or a Network)"
        raise BuildError(msg)
    _check_network_heads(network, spec)
    return network


def _check_network_heads(network: Network, spec: PackageSpec) -> None:
    if network.input_shape != spec.input_shape:
        msg = f"network input {list(network.input_shape)} != spec input {list(spec.input_shape)}"
        raise BuildError(msg)
    shapes = network.output_shapes
    if len(shapes) != len(spec.output_names):
        msg = f"network has {len(shapes)} outputs, the spec's heads need {list(spec.output_names)}"
        raise BuildError(msg)
    if spec.segmentation_head:
        mask = shapes[0]
        if len(mask) != 4 or mask[:2] != (1, len(spec.pixel_class_names)):
            msg = f"mask output {list(mask)} must be [1,{len(spec.pixel_class_names)},H,W]"
            raise BuildError(msg)
    if spec.classification_head and shapes[-1] != (1, len(spec.class_names)):
        msg = f"class output {list(shapes[-1])} must be [1,{len(spec.class_names)}]"
        raise BuildError(msg)


def manifest_for(spec: PackageSpec) -> dict[str, object]:
    """The `manifest.json` content for `spec` (docs/model-packages.md §4–§5)."""
    check_spec(spec)
    seg = spec.segmentation_head
    stage: dict[str, object] = {
        "type": STAGE_TYPE,
        "class_normal_ids": list(spec.class_normal_ids),
        "seg_normal_ids": list(spec.seg_normal_ids) if seg else [],
        "classification_head_enabled": spec.classification_head,
        "segmentation_head_enabled": seg,
        "threshold": float(spec.threshold),
        "normalize": spec.normalize,
        "image_range_scale": spec.image_range_scale,
        "image_width": spec.image_width,
        "image_height": spec.image_height,
        "input_shape": list(spec.input_shape),
    }
    stage.update(spec.extra_stage_keys)
    return {
        "model_graph": {
            "model_graph_type": GRAPH_TYPE,
            "stages": [stage],
            "image_level_classes": {
                "names": list(spec.class_names),
                "normal_ids": list(spec.class_normal_ids),
            },
            "pixel_level_classes": {
                "names": list(spec.pixel_class_names) if seg else [],
                "normal_ids": list(spec.seg_normal_ids) if seg else [],
            },
        },
        "compilable_models": [
            {
                "filename": f"{STAGE_TYPE}.pt",
                "data_input_config": {"input": list(spec.input_shape)},
                "framework": "PYTORCH",
            }
        ],
        "dataset": {"image_width": spec.image_width, "image_height": spec.image_height},
    }


def meta_for(
    network: Network, device: DeviceType, output_names: Sequence[str]
) -> dict[str, object]:
    """The `.meta` JSON: DLR reads `Requirements.TargetDeviceType` and `Model.Outputs[i].name`."""
    if len(output_names) != len(network.outputs):
        msg = f"{len(output_names)} output names for {len(network.outputs)} outputs"
        raise BuildError(msg)
    return {
        "Requirements": {"TargetDeviceType": device},
        "Model": {
            "Inputs": [
                {"name": network.input_name, "dtype": "float32", "shape": list(network.input_shape)}
            ],
            "Outputs": [
                {"name": name, "dtype": "float32", "shape": list(shape)}
                for name, shape in zip(output_names, network.output_shapes, strict=True)
            ],
        },
    }


def write_dlr_model(
    folder: Path,
    network: Network,
    *,
    kernels: Path | None = None,
    libdlr: Path | None = None,
    meta_device: DeviceType | None = "cpu",
    output_names: Sequence[str] | None = None,
    target: Target = "cpu",
    cuda_targets: Sequence[str] = DEFAULT_CUDA_TARGETS,
) -> Path:
    """Write a DLR model folder (kernels, graph, params, optional .meta and libdlr.so) and verify it.

    Args:
        folder: created if missing; must not already hold model files.
        network: what to write.
        kernels: a compiled kernel library (default: `compile_kernels()`'s cached one, or for
            `target="cuda"` the network's `compile_gpu_kernels()`).
        libdlr: copied into the folder when given.
        meta_device: `TargetDeviceType` of the `.meta`; None writes no `.meta`.
        output_names: `.meta` output names (default output0, output1, …).
        target: "cpu" (kernels.c) or "cuda" (one host function per node + CUDA module).
        cuda_targets: the fatbin's `sm_XY` / `compute_XY` entries for `target="cuda"`.

    Raises:
        BuildError: the network is incomplete or the written files do not read back identically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clutter = sorted(
        p.name for p in folder.iterdir() if p.suffix in {".so", ".json", ".params", ".meta"}
    )
    if clutter:
        msg = f"{folder} already holds model files {clutter}; DLR needs exactly one of each"
        raise BuildError(msg)
    builder = network.to_graph(gpu_func_names(network) if target == "cuda" else None)
    (folder / GRAPH_FILE).write_text(builder.to_json(indent=1) + "\n")
    (folder / PARAMS_FILE).write_bytes(encode_params(builder.params()))
    if kernels is not None:
        _copy(kernels, folder / KERNELS_FILE)
    elif target == "cuda":
        compile_gpu_kernels(network, folder / KERNELS_FILE, targets=cuda_targets)
    else:
        compile_kernels(folder / KERNELS_FILE)
    if meta_device is not None:
        names = (
            list(output_names)
            if output_names is not None
            else [f"output{i}" for i in range(len(network.outputs))]
        )
        meta = meta_for(network, meta_device, names)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if libdlr is not None:
        _check_libdlr(libdlr)
        _copy(libdlr, folder / LIBDLR_FILE)
    verify_dlr_model(folder, network, target=target)
    return folder


def _copy(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        msg = f"cannot copy {source} to {target}: {exc}"
        raise BuildError(msg) from exc
    target.chmod(0o755)


def _check_libdlr(path: Path) -> None:
    try:
        library = read_shared_object(path)
    except (ElfError, OSError) as exc:
        msg = f"{path} is not a usable libdlr.so: {exc}"
        raise BuildError(msg) from exc
    if "CreateDLRModel" not in library.defined_symbols:
        msg = f"{path} does not define CreateDLRModel: not a DLR runtime"
        raise BuildError(msg)


def verify_dlr_model(folder: Path, network: Network, *, target: Target = "cpu") -> None:
    """Read the written graph, params and kernels back and compare them with `network`.

    For `target="cuda"` also: every node calls its own host function, and the library's
    `__tvm_dev_mblob` holds exactly one CUDA module with each node's `<func_name>_kernel0`.

    Raises:
        BuildError: names the first difference.
    """
    try:
        graph = parse_graph((folder / GRAPH_FILE).read_bytes())
        params = decode_params((folder / PARAMS_FILE).read_bytes())
        kernels = read_shared_object(folder / KERNELS_FILE)
    except (GraphFormatError, ParamsFormatError, ElfError, OSError) as exc:
        msg = f"{folder}: the written model does not read back: {exc}"
        raise BuildError(msg) from exc
    arg_names = graph.arg_names()
    if not arg_names or arg_names[0] != network.input_name:
        msg = f"{folder}: the first arg node is {arg_names[:1]}, not the data input {network.input_name!r}"
        raise BuildError(msg)
    if graph.arg_shape(network.input_name) != network.input_shape:
        msg = f"{folder}: data input shape {list(graph.arg_shape(network.input_name))} != {list(network.input_shape)}"
        raise BuildError(msg)
    expected = network.params()
    if list(params) != arg_names[1:] or set(params) != set(expected):
        msg = f"{folder}: .params names {list(params)} != weight arg nodes {arg_names[1:]}"
        raise BuildError(msg)
    for name, stored in params.items():
        want = expected[name]
        if (
            stored.dtype != "float32"
            or graph.arg_dtype(name) != "float32"
            or stored.shape != graph.arg_shape(name)
            or stored.shape != want.shape
            or not np.array_equal(stored.to_numpy(), want)
        ):
            msg = f"{folder}: weight {name!r} reads back as {stored.dtype}{list(stored.shape)}, graph says {graph.arg_dtype(name)}{list(graph.arg_shape(name))}, network has float32{list(want.shape)}"
            raise BuildError(msg)
    if graph.output_shapes() != network.output_shapes:
        msg = f"{folder}: graph outputs {graph.output_shapes()} != network outputs {network.output_shapes}"
        raise BuildError(msg)
    missing = sorted(graph.kernel_names() - kernels.defined_symbols)
    if missing:
        msg = f"{folder}: {KERNELS_FILE} does not export {missing}"
        raise BuildError(msg)
    if target == "cuda":
        _verify_gpu_library(folder, network, graph.kernel_names())


def _verify_gpu_library(folder: Path, network: Network, called: set[str]) -> None:
    expected = set(gpu_func_names(network).values())
    if set(called) != expected:
        msg = f"{folder}: the graph calls {sorted(called)}, a GPU build's nodes are {sorted(expected)}"
        raise BuildError(msg)
    try:
        data = read_symbol_data(folder / KERNELS_FILE, BLOB_SYMBOL)
        blob = parse_module_blob(data) if data is not None else None
    except (BlobError, ElfError, OSError) as exc:
        msg = f"{folder}: {KERNELS_FILE}'s {BLOB_SYMBOL} does not read back: {exc}"
        raise BuildError(msg) from exc
    if blob is None or blob.kinds != ("cuda",) or blob.notes:
        kinds = blob.kinds if blob is not None else "no blob"
        msg = f"{folder}: {KERNELS_FILE} must carry exactly one CUDA module, found {kinds}"
        raise BuildError(msg)
    cuda = next(m for m in blob.modules if m.kind == "cuda")
    kernels = {f.name for f in cuda.device_functions}
    wanted = {name + KERNEL_SUFFIX for name in expected}
    if kernels != wanted:
        msg = f"{folder}: the CUDA module's kernels {sorted(kernels ^ wanted)} do not match the graph's nodes"
        raise BuildError(msg)


def build_lfv_package(
    dest: Path, spec: PackageSpec, *, libdlr: Path | None, kernels: Path | None = None
) -> Path:
    """Write an LFV-style package folder for `spec` at `dest` (created; must be empty).

    Args:
        dest: the package folder.
        spec: what to build.
        libdlr: copied to `mochi/libdlr.so` as LFV packages do; None leaves it out (the runner
            then uses the installed CPU runtime).
        kernels: a compiled kernel library (default: `compile_kernels()`, or for a `cuda`
            target the network's `compile_gpu_kernels()`).

    Raises:
        BuildError: an inconsistent spec, a non-empty `dest`, or a failed read-back check.
    """
    network = network_for(spec)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        msg = f"{dest} exists and is not an empty folder"
        raise BuildError(msg)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = manifest_for(spec)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_dlr_model(
        dest / STAGE_TYPE,
        network,
        kernels=kernels,
        libdlr=libdlr,
        meta_device=spec.meta_device,
        output_names=spec.output_names,
        target=spec.target,
        cuda_targets=spec.cuda_targets,
    )
    return dest


def zip_package(folder: Path, zip_path: Path) -> Path:
    """Zip a package folder with sorted entries and fixed timestamps (same input, same bytes)."""
    if not (folder / "manifest.json").is_file():
        msg = f"{folder} has no manifest.json: not a package folder"
        raise BuildError(msg)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=zip_path.parent, suffix=".partial", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so the permission bits below are honoured
                mode = 0o755 if path.suffix == ".so" else 0o644
                info.external_attr = (0o100000 | mode) << 16
                archive.writestr(info, path.read_bytes())
        partial.replace(zip_path)
    finally:
        partial.unlink(missing_ok=True)
    return zip_path
