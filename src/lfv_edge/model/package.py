"""Lookout for Vision edge model packages: a zip or folder → a checked `ModelPackage`.

    <package>/                 # or <package>.zip, extracted safely into the cache (archive.py)
    ├── manifest.json          # manifest.py
    └── <stage>/               # e.g. mochi/: compiled model files plus, usually, libdlr.so
        ├── *.json  *.params  *.so  [*.meta]  [libdlr.so]  [dlr.h]

Owns: finding the package root, reading the manifest, pre-flight of the stage folder
(preflight.py), choosing the `libdlr.so` (the package's own, else the CPU runtime from
cpu_runtime.py) and checking the graph's input and outputs against the manifest's heads.

A bare DLR model folder (a stage folder without `manifest.json`, as TVM or SageMaker Neo
write them) is read by `read_model_folder`: the same pre-flight and runtime choice, no LFV
rules. `open_model` takes either. Does not import dlr or cv2 and loads nothing into the
process: a model that passes here is one DLR will load, or whose failure we can explain.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lfv_edge.errors import ModelPackageError
from lfv_edge.model import cpu_runtime
from lfv_edge.model.archive import ZipLimits, extract_package_zip, sha256_of
from lfv_edge.model.elf import SharedObject
from lfv_edge.model.manifest import Manifest, decode_manifest
from lfv_edge.model.preflight import (
    FolderCheck,
    StageCheck,
    check_libdlr,
    check_model_folder,
    check_stage,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """Where each head's output is among the graph outputs, and its size."""

    mask_index: int | None
    score_index: int | None
    num_classes: int  # classification head channels (0 without the head)
    num_pixel_classes: int  # segmentation head channels (0 without the head)
    mask_shape: tuple[int, int] | None  # (height, width) of the raw mask output


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A package that passed every check, ready for the runner."""

    source: Path
    root: Path
    manifest: Manifest
    stage: StageCheck
    outputs: OutputLayout
    library: SharedObject
    library_sha256: str
    library_origin: Literal["package", "cpu-runtime"]
    name: str
    version: str  # "sha256:<12 hex>" of the zip, or of manifest + graph + params of a folder

    @property
    def stage_dir(self) -> Path:
        """The folder DLR loads."""
        return self.stage.files.graph_json.parent


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """A bare DLR model folder that passed every pre-flight check."""

    source: Path
    stage: FolderCheck
    library: SharedObject
    library_sha256: str
    library_origin: Literal["folder", "cpu-runtime"]
    name: str
    version: str  # "sha256:<12 hex>" of graph + params + kernel library

    @property
    def stage_dir(self) -> Path:
        """The folder DLR loads."""
        return self.stage.files.graph_json.parent


def _package_root(folder: Path) -> Path | None:
    if (folder / MANIFEST).is_file():
        return folder
    candidates = [p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if len(candidates) == 1:  # zips made by "compress folder" wrap the package in one folder
        return candidates[0]
    return None


def _find_root(folder: Path) -> Path:
    root = _package_root(folder)
    if root is None:
        msg = f"{folder}: no {MANIFEST} (looked in the folder and its sub-folders); is this an LFV model package?"
        raise ModelPackageError(msg)
    return root


def _runtime(stage: FolderCheck) -> tuple[SharedObject, str, bool]:
    """The `libdlr.so` a folder runs with, its sha256, and whether it is the folder's own."""
    if stage.libdlr is not None:
        return stage.libdlr, sha256_of(stage.libdlr.path), True
    runtime = cpu_runtime.require_cpu_runtime()
    return check_libdlr(runtime.library), runtime.sha256, False


def _output_layout(manifest: Manifest, stage: StageCheck, stage_dir: Path) -> OutputLayout:
    config = manifest.stage
    if stage.input_shape != config.input_shape:
        msg = (
            f"{stage_dir}: the model's input is {list(stage.input_shape)} but manifest.json says "
            f"image_height {config.image_height} × image_width {config.image_width} "
            f"({list(config.input_shape)})"
        )
        raise ModelPackageError(msg)
    shapes = stage.graph.output_shapes()
    dtypes = stage.graph.output_dtypes()
    expected = int(config.segmentation_head) + int(config.classification_head)
    heads = " and ".join(
        name
        for name, on in (
            ("segmentation", config.segmentation_head),
            ("classification", config.classification_head),
        )
        if on
    )
    if len(shapes) != expected:
        msg = f"{stage_dir}: manifest.json enables the {heads} head(s), so the model needs {expected} output(s), it has {len(shapes)}"
        raise ModelPackageError(msg)
    if any(dtype != "float32" for dtype in dtypes):
        msg = f"{stage_dir}: model outputs must be float32, found {dtypes}"
        raise ModelPackageError(msg)
    mask_index = 0 if config.segmentation_head else None  # LFV order: (mask, score)
    score_index = (1 if config.segmentation_head else 0) if config.classification_head else None
    num_classes = num_pixel = 0
    mask_shape = None
    if score_index is not None:
        shape = shapes[score_index]
        if len(shape) != 2 or shape[0] != 1 or shape[1] < 1:
            msg = (
                f"{stage_dir}: the classification output must be [1, classes], it is {list(shape)}"
            )
            raise ModelPackageError(msg)
        num_classes = shape[1]
        bad = [i for i in config.class_normal_ids if i >= num_classes]
        if bad:
            msg = f"manifest.json: class_normal_ids {bad} are out of range for a model with {num_classes} classes"
            raise ModelPackageError(msg)
        names = manifest.image_classes.names
        if names and len(names) != num_classes:
            msg = f"manifest.json: image_level_classes.names has {len(names)} names, the model outputs {num_classes} classes"
            raise ModelPackageError(msg)
    if mask_index is not None:
        shape = shapes[mask_index]
        if len(shape) != 4 or shape[0] != 1 or shape[1] < 1:
            msg = f"{stage_dir}: the segmentation output must be [1, classes, H, W], it is {list(shape)}"
            raise ModelPackageError(msg)
        num_pixel = shape[1]
        names = manifest.pixel_classes.names
        if len(names) != num_pixel:
            msg = f"manifest.json: pixel_level_classes.names has {len(names)} names, the model outputs {num_pixel} mask channels"
            raise ModelPackageError(msg)
        if num_pixel > 256:
            msg = f"{stage_dir}: {num_pixel} mask classes; at most 256 are supported"
            raise ModelPackageError(msg)
        mask_shape = (shape[2], shape[3])
    return OutputLayout(mask_index, score_index, num_classes, num_pixel, mask_shape)


def read_model_package(
    source: Path,
    *,
    cache_dir: Path | None = None,
    zip_limits: ZipLimits | None = None,
) -> ModelPackage:
    """Open, check and describe a model package (zip or folder).

    Raises:
        ModelPackageError: the package is missing, unsafe, malformed or unsupported (the
            message names the file or manifest key); `RuntimeProvisionError` when the package
            has no libdlr.so and the CPU runtime is not installed.
    """
    if not source.exists():
        msg = f"{source}: no such file or folder"
        raise ModelPackageError(msg)
    if source.is_file():
        if not zipfile.is_zipfile(source):
            msg = f"{source}: not a zip file or a package folder"
            raise ModelPackageError(msg)
        folder = extract_package_zip(source, cache_dir=cache_dir, limits=zip_limits)
        version_paths = [source]
        name = source.name.removesuffix(".zip")
    else:
        folder = source
        version_paths = []
        name = source.resolve().name
    root = _find_root(folder)
    manifest = decode_manifest((root / MANIFEST).read_bytes())
    for key in manifest.unknown_keys:
        logger.info("manifest.json: key %s is not used by lfv-edge", key)
    stage_dir = root / manifest.stage.type
    stage = check_stage(stage_dir)
    outputs = _output_layout(manifest, stage, stage_dir)
    library, library_sha, own = _runtime(stage)
    origin = "package" if own else "cpu-runtime"
    if not version_paths:
        version_paths = [root / MANIFEST, stage.files.graph_json, stage.files.params]
    version = "sha256:" + sha256_of(*version_paths)[:12]
    return ModelPackage(
        source=source,
        root=root,
        manifest=manifest,
        stage=stage,
        outputs=outputs,
        library=library,
        library_sha256=library_sha,
        library_origin=origin,  # type: ignore[arg-type]
        name=name,
        version=version,
    )


def read_model_folder(folder: Path) -> ModelFolder:
    """Check and describe a bare DLR model folder (graph JSON, `.params`, kernel `.so`).

    Raises:
        ModelPackageError: the folder is missing, malformed, for another machine, or would
            crash DLR (the message names the file and why); `RuntimeProvisionError` when it
            has no libdlr.so and the CPU runtime is not installed.
    """
    if not folder.is_dir():
        msg = f"{folder}: no such folder"
        raise ModelPackageError(msg)
    stage = check_model_folder(folder)
    library, library_sha, own = _runtime(stage)
    files = stage.files
    return ModelFolder(
        source=folder,
        stage=stage,
        library=library,
        library_sha256=library_sha,
        library_origin="folder" if own else "cpu-runtime",
        name=folder.resolve().name,
        version="sha256:" + sha256_of(files.graph_json, files.params, files.kernel_lib)[:12],
    )


def open_model(source: Path) -> ModelPackage | ModelFolder:
    """An LFV package (zip, or folder with `manifest.json`) or else a bare DLR model folder."""
    if source.is_dir() and _package_root(source) is None:
        return read_model_folder(source)
    return read_model_package(source)
