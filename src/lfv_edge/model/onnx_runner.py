"""ONNX Runtime behind the `Runner` port: the only module that imports `onnxruntime`.

Two users:

* `OnnxRunner`: a converted package model (`lfv-edge convert`) run in place of DLR, with the
  same exact input checks as `DlrRunner` and one lock per session. `OnnxRunner.load(package)`
  checks that the ONNX model was converted from *this* package's graph and weights (digests
  the converter writes into the model's metadata) and that its input and outputs have the
  package graph's names and shapes.
* `OnnxSession`: a plain session over model bytes, for the converter's kernel-by-kernel
  checks (no package).

Execution providers: `cpu` (always), `cuda` and `tensorrt` where the installed onnxruntime
build has them (`onnxruntime-gpu`); `auto` takes the best available. onnxruntime is an
optional dependency (`pip install 'lfv-edge[onnx]'`): importing this module without it works,
loading a model raises `ModelPackageError` saying what to install.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import DeviceError, InferenceError, ModelPackageError
from lfv_edge.model.archive import sha256_of
from lfv_edge.model.device import DeviceChoice, DeviceRequest
from lfv_edge.model.package import ModelPackage

logger = logging.getLogger(__name__)

OnnxProvider = Literal["auto", "cpu", "cuda", "tensorrt"]
PROVIDER_NAMES: Mapping[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Where the converter puts a package's model (a stage folder may carry it beside the DLR
# files: DLR and pre-flight ignore *.onnx) and the metadata keys it writes.
STAGE_MODEL_FILE = "model.onnx"
META_GRAPH_SHA256 = "lfv.source.graph_sha256"
META_PARAMS_SHA256 = "lfv.source.params_sha256"
META_MANIFEST = "lfv.manifest"

_import_lock = threading.Lock()
_ort_module: types.ModuleType | None = None


def import_onnxruntime() -> types.ModuleType:
    """Import onnxruntime once, quietly (its default logging prints to stderr).

    Raises:
        ModelPackageError: onnxruntime is not installed.
    """
    global _ort_module
    with _import_lock:
        if _ort_module is None:
            try:
                import onnxruntime
            except ImportError as exc:
                msg = f"ONNX Runtime is not installed ({exc}); pip install 'lfv-edge[onnx]'"
                raise ModelPackageError(msg) from exc
            onnxruntime.set_default_logger_severity(3)  # errors only
            _ort_module = onnxruntime
        return _ort_module


def available_providers() -> list[str]:
    """Our names (`cpu`, `cuda`, `tensorrt`) of the providers this onnxruntime build has."""
    ort = import_onnxruntime()
    have = set(ort.get_available_providers())
    return [short for short, name in PROVIDER_NAMES.items() if name in have]


def provider_chain(request: OnnxProvider) -> list[str]:
    """onnxruntime provider names for `request`, best first, always ending with CPU.

    Raises:
        ModelPackageError: the requested provider is not in this onnxruntime build.
    """
    have = available_providers()
    if request == "auto":
        chosen = [p for p in ("tensorrt", "cuda") if p in have]
    elif request == "cpu":
        chosen = []
    elif request not in have:
        msg = f"ONNX Runtime here has no {PROVIDER_NAMES[request]} (available: {', '.join(have)}); install onnxruntime-gpu with CUDA/TensorRT, or use cpu"
        raise ModelPackageError(msg)
    else:
        chosen = [request, "cuda"] if request == "tensorrt" and "cuda" in have else [request]
    return [PROVIDER_NAMES[p] for p in [*chosen, "cpu"]]


def _session(model: bytes | Path, providers: Sequence[str], threads: int | None) -> Any:  # noqa: ANN401 - onnxruntime is untyped
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if isinstance(model, bytes) else f"{model}: "
        msg = f"{where}ONNX Runtime could not load the model: {text}"
        raise ModelPackageError(msg) from exc


class OnnxSession:
    """An ONNX Runtime session over model bytes or a file; `run(feeds)` → outputs in order."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        threads: int | None = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self._session = _session(model, providers, threads)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.providers = list(self._session.get_providers())

    def run(self, feeds: Mapping[str, NDArray[np.generic]]) -> list[NDArray[np.generic]]:
        """All outputs, in the model's output order.

        Raises:
            InferenceError: ONNX Runtime failed (bad feed, kernel error).
        """
        try:
            outputs = self._session.run(None, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = f"ONNX Runtime failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            raise InferenceError(msg) from exc
        return [np.asarray(output) for output in outputs]

    def metadata(self) -> dict[str, str]:
        """The model's metadata_props."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def input_shapes(self) -> list[tuple[int | str | None, ...]]:
        """Declared input shapes (symbolic dimensions as strings or None)."""
        return [tuple(i.shape) for i in self._session.get_inputs()]

    def output_shapes(self) -> list[tuple[int | str | None, ...]]:
        """Declared output shapes."""
        return [tuple(o.shape) for o in self._session.get_outputs()]


@dataclass(frozen=True, slots=True)
class OnnxRuntimeInfo:
    """What was loaded: the file, the providers in use, the input and output names."""

    model: Path
    providers: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]


class OnnxRunner:
    """A converted package model in ONNX Runtime: one session, one lock, exact input checks."""

    def __init__(self, session: OnnxSession, info: OnnxRuntimeInfo) -> None:
        self._session = session
        self.info = info
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        package: ModelPackage,
        *,
        model: Path | None = None,
        provider: OnnxProvider = "auto",
        threads: int | None = None,
    ) -> OnnxRunner:
        """Load the ONNX model converted from `package`.

        Args:
            package: the DLR package the model was converted from (its manifest drives pre-
                and post-processing; its graph gives the expected input and output shapes).
            model: the .onnx file; default `<stage folder>/model.onnx`.
            provider: `auto` (TensorRT, CUDA where installed, else CPU), `cpu`, `cuda`,
                `tensorrt`.
            threads: intra-op threads (default: onnxruntime's choice, all cores).

        Raises:
            ModelPackageError: no model file, onnxruntime missing, a model converted from a
                different package, or inputs/outputs that do not match the package graph.
        """
        path = model if model is not None else package.stage_dir / STAGE_MODEL_FILE
        if not path.is_file():
            msg = f"{path}: no ONNX model; convert the package first (lfv-edge convert PACKAGE {STAGE_MODEL_FILE} --into-package OUT)"
            raise ModelPackageError(msg)
        session = OnnxSession(path, threads=threads, providers=provider_chain(provider))
        meta = session.metadata()
        expected = {
            META_GRAPH_SHA256: sha256_of(package.stage.files.graph_json),
            META_PARAMS_SHA256: sha256_of(package.stage.files.params),
        }
        for key, digest in expected.items():
            if meta.get(key) != digest:
                msg = f"{path}: this ONNX model was not converted from {package.source} (metadata {key} is {meta.get(key)!r}, the package's is {digest[:16]}…)"
                raise ModelPackageError(msg)
        input_shape = package.stage.input_shape
        if len(session.input_names) != 1 or session.input_shapes()[0] != input_shape:
            msg = f"{path}: expected one input of shape {list(input_shape)}, the model has {session.input_names} {session.input_shapes()}"
            raise ModelPackageError(msg)
        graph_outputs = [tuple(s) for s in package.stage.graph.output_shapes()]
        if [tuple(s) for s in session.output_shapes()] != graph_outputs:
            msg = f"{path}: output shapes {session.output_shapes()} differ from the package graph's {graph_outputs}"
            raise ModelPackageError(msg)
        info = OnnxRuntimeInfo(
            model=path,
            providers=tuple(session.providers),
            input_name=session.input_names[0],
            input_shape=input_shape,
            output_names=tuple(session.output_names),
        )
        logger.info("ONNX Runtime %s with %s", path, ", ".join(info.providers))
        return cls(session, info)

    def run(self, tensor: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Run one inference; outputs in the package graph's `heads` order."""
        if tensor.shape != self.info.input_shape or tensor.dtype != np.float32:
            msg = (
                f"input tensor {tensor.dtype}{list(tensor.shape)} does not match the model's "
                f"float32{list(self.info.input_shape)}"
            )
            raise InferenceError(msg)
        with self._lock:
            outputs = self._session.run({self.info.input_name: tensor})
        return [np.asarray(output, dtype=np.float32) for output in outputs]


def load_onnx_runner(
    package: ModelPackage,
    *,
    device: DeviceRequest = "auto",
    threads: int | None = None,
    model: Path | None = None,
) -> tuple[OnnxRunner, DeviceChoice]:
    """`model.runtime: onnx`: the package's converted model in ONNX Runtime, and the device.

    `device` maps to execution providers: `cpu` → CPU; `gpu` → TensorRT and/or CUDA (an
    error when this onnxruntime build has neither); `auto` → the GPU providers when present,
    else CPU. `model` defaults to `<stage folder>/model.onnx` (`lfv-edge convert
    --into-package` puts it there).

    Raises:
        DeviceError: `gpu` asked for and no GPU provider installed.
        ModelPackageError: no converted model, or one converted from another package.
    """
    have = available_providers()
    gpu = [p for p in ("tensorrt", "cuda") if p in have]
    if device == "gpu" and not gpu:
        msg = f"device gpu with the onnx runtime needs onnxruntime-gpu (CUDA or TensorRT execution provider); this onnxruntime has {', '.join(have)}"
        raise DeviceError(msg)
    provider: OnnxProvider = (
        "cpu" if device == "cpu" or not gpu else ("tensorrt" if "tensorrt" in gpu else "cuda")
    )
    runner = OnnxRunner.load(package, model=model, provider=provider, threads=threads)
    used = runner.info.providers[0]
    on_gpu = used != PROVIDER_NAMES["cpu"]
    reason = f"ONNX Runtime {used}" + (
        "" if device != "auto" else " (auto: best installed provider)"
    )
    return runner, DeviceChoice("gpu" if on_gpu else "cpu", reason)
