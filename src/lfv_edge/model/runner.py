"""The DLR runtime behind the `Runner` port: the only module that imports `dlr`.

What this module guarantees (docs/dlr-runtime.md §2, §7, §8):

* DLR's phone-home is replaced by an inert stub **before** the first `import dlr`: no banner,
  no file written into site-packages, no network attempt. If something imported `dlr` before
  us, we refuse to run rather than phone home.
* `TVM_BIND_THREADS=0` (else TVM pins the calling Python thread to one core) and
  `TVM_NUM_THREADS` are set before the first inference.
* The `libdlr.so` is chosen by the caller (the package's own, else the CPU runtime), never by
  DLR's search of `sys.prefix`.
* Load errors, which libdlr writes to native fd 2 and reports to Python as an empty
  `DLRError('')`, are captured and raised as `ModelPackageError` with the real message.
* One lock per model: a DLR handle has one set of input/output buffers and is not thread-safe.
* Inputs are checked exactly (DLR compares element counts only): `run` sets the one data input
  of an LFV model; `run_inputs` sets any graph arguments of a general model by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import InferenceError, ModelPackageError
from lfv_edge.model.tvm_graph import TensorSpec

logger = logging.getLogger(__name__)

_PHONE_HOME_MODULE = "dlr.counter.phone_home"
_DLR_LOGGER = "dlr.neologger_logger"
# libdlr's load errors: "[hh:mm:ss] <build path>/src/dlr.cc:321: <message>", sometimes with a
# nested "[hh:mm:ss] <file>:<line>: " prefix inside the message.
_DLR_ERROR_LINE = re.compile(r"dlr\.cc:\d+: (?:\[[0-9:]+\] \S+: )?(.*)")
# fd 2 is process-wide and DLR's loader edits os.environ["PATH"]: one load at a time.
_LOAD_LOCK = threading.Lock()
NATIVE_STDERR_PREFIX = "libdlr-stderr-"
_import_lock = threading.Lock()
_dlr_module: types.ModuleType | None = None


class Runner(Protocol):
    """Runs a loaded model on one prepared input tensor."""

    def run(self, tensor: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Outputs in the graph's `heads` order."""
        ...


def _phone_home_stub() -> types.ModuleType:
    stub = types.ModuleType(_PHONE_HOME_MODULE)
    stub.__doc__ = "lfv-edge: DLR phone-home disabled (no telemetry, no network)."

    def call_phone_home(func: Any) -> Any:  # noqa: ANN401 - identity decorator for any callable
        return func

    stub.call_phone_home = call_phone_home  # type: ignore[attr-defined]
    stub.MGR = None  # type: ignore[attr-defined]
    return stub


def import_dlr() -> types.ModuleType:
    """Import `dlr` with its phone-home replaced by an inert stub; idempotent.

    Raises:
        ModelPackageError: `dlr` was imported earlier without the stub, or is not installed.
    """
    global _dlr_module
    with _import_lock:
        if _dlr_module is not None:
            return _dlr_module
        existing = sys.modules.get(_PHONE_HOME_MODULE)
        active = existing is None or getattr(existing, "MGR", None) is not None
        if "dlr" in sys.modules and active:
            # Someone imported dlr with its phone-home on: model loads would call home.
            msg = "dlr was imported before lfv-edge could disable its phone-home; refusing to run"
            raise ModelPackageError(msg)
        if active:
            sys.modules[_PHONE_HOME_MODULE] = _phone_home_stub()
        try:
            import dlr
            import dlr.dlr_model
        except ImportError as exc:
            msg = f"the dlr Python package is not installed ({exc}); run scripts/setup"
            raise ModelPackageError(msg) from exc
        # DLR rebuilds this logger's handlers on every model load; `disabled` is what sticks.
        logging.getLogger(_DLR_LOGGER).disabled = True
        module: types.ModuleType = dlr
        _dlr_module = module
        return module


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(
    num_threads: int | None, environ: MutableMapping[str, str] = os.environ
) -> int:
    """Set TVM's thread variables before the first inference; returns the worker count.

    `TVM_BIND_THREADS=0` keeps TVM from pinning our Python threads to one core. The worker
    count defaults to the CPUs this process may use (TVM would halve it, assuming SMT).
    """
    environ["TVM_BIND_THREADS"] = "0"
    if num_threads is None:
        existing = environ.get("TVM_NUM_THREADS", "")
        if existing.isdigit() and int(existing) > 0:
            return int(existing)
        num_threads = usable_cpus()
    if num_threads < 1:
        msg = f"num_threads must be at least 1, got {num_threads}"
        raise ValueError(msg)
    environ["TVM_NUM_THREADS"] = str(num_threads)
    return num_threads


@contextlib.contextmanager
def _captured_native_stderr(directory: Path | None = None) -> Iterator[list[str]]:
    """Redirect fd 2 into a temporary file; the yielded list receives what was written.

    With `directory`, the file is a named one there: if the process dies inside (a crash, a
    "symbol lookup error"), the file stays behind for whoever watches (the probe's parent).
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with contextlib.ExitStack() as stack:
        sink: IO[bytes]
        if directory is None:
            sink = stack.enter_context(tempfile.TemporaryFile(mode="w+b"))
        else:
            sink = stack.enter_context(
                tempfile.NamedTemporaryFile(mode="w+b", dir=directory, prefix=NATIVE_STDERR_PREFIX)
            )
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))


def dlr_load_message(stderr_text: str, exception_text: str) -> str:
    """The real reason for a failed DLR load, from libdlr's stderr or the exception text."""
    matches = _DLR_ERROR_LINE.findall(stderr_text)
    if matches and matches[-1].strip():
        return str(matches[-1]).strip()
    head = exception_text.split("Stack trace:")[0].strip()
    return head or "DLR reported no reason"


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What DLR reports about a loaded model."""

    library: Path
    dlr_version: str
    backend: str
    inputs: tuple[TensorSpec, ...]  # the inputs DLR lists, with the graph's shapes and dtypes
    output_shapes: tuple[tuple[int, ...], ...]
    # Every graph argument `run_inputs` may set: the inputs and the arguments stored in the
    # `.params` file (setting one of those replaces its stored value for later runs too).
    arguments: tuple[TensorSpec, ...] = ()

    @property
    def input_name(self) -> str:
        """The data input of a single-input (LFV) model."""
        return self.inputs[0].name

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The data input's shape of a single-input (LFV) model."""
        return self.inputs[0].shape


def run_dlr_once(
    stage_dir: Path, *, library: Path, feeds: Mapping[str, NDArray[np.generic]], device: str = "cpu"
) -> list[NDArray[np.generic]]:
    """Load a model folder and run it once on named inputs (any number; weights by name too).

    For checks against DLR (the converter's end-to-end comparison), not for serving.

    Raises:
        ModelPackageError: DLR could not load the model; `InferenceError` when the run fails.
    """
    model, _version, _backend = _load_dlr_model(stage_dir, library, device, None)
    try:
        outputs: Sequence[NDArray[np.generic]] = model.run(
            {k: np.asarray(v) for k, v in feeds.items()}
        )
    except Exception as exc:
        text = str(exc).split("Stack trace:")[0].strip()
        msg = f"inference failed: {text}"
        raise InferenceError(msg) from exc
    return [np.array(output) for output in outputs]


class DlrRunner:
    """A loaded DLR model: one handle, one lock, exact input checks."""

    def __init__(self, model: Any, info: RuntimeInfo) -> None:  # noqa: ANN401 - dlr is untyped
        self._model = model
        self.info = info
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        stage_dir: Path,
        *,
        library: Path,
        input_shape: tuple[int, ...],
        device: str = "cpu",
    ) -> DlrRunner:
        """Load the LFV model in `stage_dir` with the given `libdlr.so` on `device` (cpu|gpu).

        `input_shape` is the data input's shape from the graph (DLR itself compares only
        element counts, so a transposed tensor would run silently wrong).

        Raises:
            ModelPackageError: with libdlr's own message when the load fails, or when DLR
                does not list exactly one input.
        """
        model, version, backend = _load_dlr_model(stage_dir, library, device, None)
        names = list(model.get_input_names())
        if len(names) != 1:
            msg = f"{stage_dir}: expected one data input, DLR reports {names}"
            raise ModelPackageError(msg)
        data = TensorSpec(names[0], input_shape, "float32")
        return cls(model, _info(model, library, version, backend, (data,), (data,)))

    @classmethod
    def load_model(
        cls,
        stage_dir: Path,
        *,
        library: Path,
        arguments: Sequence[TensorSpec],
        device: str = "cpu",
        stderr_dir: Path | None = None,
    ) -> DlrRunner:
        """Load any DLR/TVM model folder; `arguments` are the graph's argument nodes.

        Args:
            stage_dir: the model folder.
            library: the `libdlr.so` to load it with.
            arguments: every graph argument (inputs and stored weights) with its shape and
                dtype, from the graph: DLR's own input shapes are read by position and can be
                a weight's.
            device: cpu or gpu.
            stderr_dir: keep libdlr's captured stderr in a named file there while loading,
                so that a process killed inside DLR leaves its last words behind.

        Raises:
            ModelPackageError: with libdlr's own message when the load fails.
        """
        model, version, backend = _load_dlr_model(stage_dir, library, device, stderr_dir)
        by_name = {spec.name: spec for spec in arguments}
        names = [str(name) for name in model.get_input_names()]
        unknown = [name for name in names if name not in by_name]
        if unknown:
            msg = f"{stage_dir}: DLR lists input(s) {unknown} that the graph does not have"
            raise ModelPackageError(msg)
        inputs = tuple(by_name[name] for name in names)
        return cls(model, _info(model, library, version, backend, inputs, tuple(arguments)))

    def run(self, tensor: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Run one inference; DLR itself compares only element counts, so we check exactly."""
        if tensor.shape != self.info.input_shape or tensor.dtype != np.float32:
            msg = (
                f"input tensor {tensor.dtype}{list(tensor.shape)} does not match the model's "
                f"float32{list(self.info.input_shape)}"
            )
            raise InferenceError(msg)
        outputs = self._run({self.info.input_name: tensor})
        return [np.asarray(output, dtype=np.float32) for output in outputs]

    def run_inputs(self, inputs: Mapping[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """Set graph arguments by name (exact shape and dtype) and run once.

        Outputs come back in the graph's `heads` order, in the dtypes DLR reports.
        """
        allowed = {spec.name: spec for spec in self.info.arguments}
        for name, array in inputs.items():
            spec = allowed.get(name)
            if spec is None:
                msg = f"{name!r} is not an argument of this model (it has {sorted(allowed)})"
                raise InferenceError(msg)
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                msg = (
                    f"input {name}: {array.dtype}{list(array.shape)} does not match the model's "
                    f"{spec.dtype}{list(spec.shape)}"
                )
                raise InferenceError(msg)
        return [np.asarray(output) for output in self._run(dict(inputs))]

    def _run(self, inputs: dict[str, NDArray[Any]]) -> Sequence[NDArray[Any]]:
        with self._lock:
            try:
                outputs: Sequence[NDArray[Any]] = self._model.run(inputs)
            except Exception as exc:
                text = str(exc).split("Stack trace:")[0].strip()
                msg = f"inference failed: {text}"
                raise InferenceError(msg) from exc
        return outputs


def _load_dlr_model(
    stage_dir: Path, library: Path, device: str, stderr_dir: Path | None
) -> tuple[Any, str, str]:
    """A DLR model object on our choice of `libdlr.so`, its DLR version and backend."""
    dlr = import_dlr()
    impl_class = dlr.dlr_model.DLRModelImpl
    # dlr's public constructor picks <stage>/libdlr.so or searches sys.prefix; choosing the
    # library ourselves needs its internals. Safe because pyproject pins dlr==1.10.0 exactly:
    # the last release (Nov 2021) of a project no longer developed, so these names stay put.
    load_lib = dlr.dlr_model._load_lib

    class _ChosenLibraryModel(impl_class):  # type: ignore[misc, valid-type]
        # DLR would pick <stage>/libdlr.so or search sys.prefix; we decide which library.
        def _init_libdlr(self) -> None:
            self._lib = load_lib(str(library))

    with _LOAD_LOCK, _captured_native_stderr(stderr_dir) as stderr:
        try:
            model = _ChosenLibraryModel(str(stage_dir), device, 0)
            error: BaseException | None = None
        except (dlr.dlr_model.DLRError, UnicodeDecodeError, ValueError, OSError) as exc:
            error = exc
    if error is not None:
        reason = dlr_load_message("".join(stderr), str(error))
        if isinstance(error, UnicodeDecodeError):
            reason = "DLR failed and its message could not be decoded (non-ASCII path?)"
        msg = f"{stage_dir}: DLR could not load the model: {reason}"
        raise ModelPackageError(msg) from error
    noise = "".join(stderr).strip()
    if noise:
        logger.debug("libdlr stderr while loading %s: %s", stage_dir, noise)
    return model, str(model.get_version()), str(model.backend)


def _info(
    model: Any,  # noqa: ANN401 - dlr is untyped
    library: Path,
    version: str,
    backend: str,
    inputs: tuple[TensorSpec, ...],
    arguments: tuple[TensorSpec, ...],
) -> RuntimeInfo:
    return RuntimeInfo(
        library=library,
        dlr_version=version,
        backend=backend,
        inputs=inputs,
        output_shapes=tuple(tuple(int(d) for d in shape) for shape in model.output_shapes),
        arguments=arguments,
    )
