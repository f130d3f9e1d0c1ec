"""The agent's models: named packages, each with LFV's lifecycle, its own thread and a bounded queue.

    STOPPED ──StartModel──▶ STARTING ──loaded──▶ RUNNING ──StopModel──▶ STOPPING ──▶ STOPPED
       ▲                       │ load failed                                          │
       └──── StartModel ◀── FAILED (status_message = the ModelPackageError text)        │
       ◀───────────────────────────────────────────────────────────────────────────────┘

Each started model gets one thread that loads the package and then runs every inference of
that model (a DLR handle is not thread-safe, and LFV serialised calls per model). Callers —
gRPC threads — pre-process in their own thread with a per-thread `Preprocessor`, queue the
tensor for the model thread, wait, and post-process the outputs themselves, so the model
thread only runs the model. At most `max_pending` calls per model are admitted (waiting or
running); one more is refused with `ModelBusyError` rather than queued without bound.

`StopModel` waits for the admitted calls to finish, then ends the thread and drops the model.
Knows nothing of gRPC (server.py maps these errors to status codes). Does not import dlr.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import LfvEdgeError
from lfv_edge.inspection.pipeline import Inspection, Inspector, Prepared
from lfv_edge.inspection.preprocess import Preprocessor

logger = logging.getLogger(__name__)

# package path → a loaded inspector: service.wiring.model_loader, or a test's own
Loader = Callable[[Path], Inspector]


class ModelStatus(enum.IntEnum):
    """LFV's model states; the values are the proto's `ModelStatus` numbers."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    FAILED = 3
    STOPPING = 4


class ModelNotFoundError(LfvEdgeError):
    """No model of that name is configured (gRPC NOT_FOUND)."""


class ModelStateError(LfvEdgeError):
    """The call is not valid in the model's current state (gRPC FAILED_PRECONDITION)."""

    def __init__(self, message: str, status: ModelStatus) -> None:
        super().__init__(message)
        self.status = status


class ModelBusyError(LfvEdgeError):
    """The model's queue is full (gRPC RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What DescribeModel and ListModels report about one model."""

    name: str
    status: ModelStatus
    status_message: str
    package: Path
    arn: str = ""  # LFV's lookout_vision_model_arn, where configured (a package has none)
    package_name: str = ""  # from the package once loaded (kept after a stop)
    package_version: str = ""


@dataclass(slots=True)
class _Job:
    tensor: NDArray[np.float32]
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[NDArray[np.float32]] | None = None
    run_ms: float = 0.0
    error: BaseException | None = None


class _Model:
    """One configured model; every field is guarded by the registry's condition."""

    def __init__(self, name: str, package: Path, arn: str) -> None:
        self.name = name
        self.package = package
        self.arn = arn
        self.status = ModelStatus.STOPPED
        self.message = ""
        self.inspector: Inspector | None = None
        self.generation = 0  # bumped on every start: per-thread preprocessors are per generation
        self.pending = 0  # admitted calls not yet finished
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.abandon = False  # shutdown while loading: drop the model once loaded
        self.identity = ("", "")  # package name and version, once loaded

    def info(self) -> ModelInfo:
        return ModelInfo(
            self.name, self.status, self.message, self.package, self.arn, *self.identity
        )


class ModelRegistry:
    """The named models of one agent and their lifecycles."""

    def __init__(
        self,
        models: Mapping[str, Path],
        *,
        loader: Loader,
        max_pending: int,
        arns: Mapping[str, str] | None = None,
    ) -> None:
        if max_pending < 1:
            msg = f"max_pending must be at least 1, got {max_pending}"
            raise ValueError(msg)
        arns = arns or {}
        self._models = {
            name: _Model(name, Path(path), arns.get(name, "")) for name, path in models.items()
        }
        self._loader = loader
        self._max_pending = max_pending
        self._changed = threading.Condition()
        self._local = threading.local()

    # --- lifecycle ----------------------------------------------------------------------

    def _get(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            msg = f"model component {name!r} is not configured on this agent (configured: {known})"
            raise ModelNotFoundError(msg)
        return model

    def capacity(self) -> int:
        """How many calls may be admitted at once, over all models."""
        return len(self._models) * self._max_pending

    def list(self) -> list[ModelInfo]:
        """Every configured model, in configuration order."""
        with self._changed:
            return [model.info() for model in self._models.values()]

    def describe(self, name: str) -> ModelInfo:
        """One model's status. Raises ModelNotFoundError."""
        with self._changed:
            return self._get(name).info()

    def start(self, name: str) -> ModelStatus:
        """Begin loading in the background; returns STARTING at once.

        Raises:
            ModelNotFoundError: no such model.
            ModelStateError: the model is not STOPPED or FAILED.
        """
        with self._changed:
            model = self._get(name)
            if model.status not in (ModelStatus.STOPPED, ModelStatus.FAILED):
                msg = f"model {name!r} is {model.status.name}; StartModel needs STOPPED or FAILED"
                raise ModelStateError(msg, model.status)
            model.generation += 1
            model.abandon = False
            model.jobs = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._serve, args=(model,), name=f"lfv-agent-model:{name}", daemon=True
            )
            model.thread = thread
            self._set(model, ModelStatus.STARTING, f"loading {model.package}")
        thread.start()
        return ModelStatus.STARTING

    def stop(self, name: str) -> ModelStatus:
        """Stop a RUNNING model once its admitted calls are done; returns STOPPED.

        Raises:
            ModelNotFoundError: no such model.
            ModelStateError: the model is not RUNNING.
        """
        with self._changed:
            model = self._get(name)
            if model.status != ModelStatus.RUNNING:
                msg = f"model {name!r} is {model.status.name}; StopModel needs RUNNING"
                raise ModelStateError(msg, model.status)
            self._set(model, ModelStatus.STOPPING, "finishing admitted calls")
            # Admitted callers may still be pre-processing: their jobs must enter the queue
            # before the stop sentinel, or they would wait for a thread that has gone.
            self._changed.wait_for(lambda: model.pending == 0)
            thread = model.thread
            model.jobs.put(None)
        if thread is not None:
            thread.join()
        return ModelStatus.STOPPED  # (a StartModel may already have followed: not our answer)

    def wait_for(self, name: str, statuses: tuple[ModelStatus, ...], timeout_s: float) -> ModelInfo:
        """Block until the model is in one of `statuses`; returns its info.

        Raises:
            ModelNotFoundError: no such model.
            TimeoutError: not reached within `timeout_s`.
        """
        with self._changed:
            model = self._get(name)
            if not self._changed.wait_for(lambda: model.status in statuses, timeout=timeout_s):
                msg = f"model {name!r} is still {model.status.name} after {timeout_s} s"
                raise TimeoutError(msg)
            return model.info()

    def wait_for_change(self, name: str, seen: ModelStatus, timeout_s: float) -> ModelInfo:
        """Block until the model's status is no longer `seen` (or the timeout); returns its info."""
        with self._changed:
            model = self._get(name)
            self._changed.wait_for(lambda: model.status != seen, timeout=timeout_s)
            return model.info()

    def wait_for_pending(self, name: str, count: int, timeout_s: float) -> int:
        """Block until at least `count` calls are admitted to the model; returns how many are.

        Raises:
            ModelNotFoundError: no such model.
            TimeoutError: fewer within `timeout_s`.
        """
        with self._changed:
            model = self._get(name)
            if not self._changed.wait_for(lambda: model.pending >= count, timeout=timeout_s):
                msg = f"model {name!r} has {model.pending} calls admitted, not {count}"
                raise TimeoutError(msg)
            return model.pending

    def close(self, timeout_s: float) -> None:
        """Stop every model (shutdown): running ones finish their admitted calls first.

        A model still loading is dropped as soon as its load returns; DLR cannot interrupt a
        load, so its thread (a daemon) may outlive `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            models = list(self._models.values())
            for model in models:
                if model.status == ModelStatus.STARTING:
                    model.abandon = True
        for model in models:
            # Not running: nothing to stop, or still loading (abandoned above).
            with contextlib.suppress(ModelStateError):
                self.stop(model.name)
        for model in models:
            thread = model.thread
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _set(self, model: _Model, status: ModelStatus, message: str) -> None:
        model.status, model.message = status, message
        logger.info("model %s %s %s", model.name, status.name, message)
        self._changed.notify_all()

    # --- the model thread ---------------------------------------------------------------

    def _serve(self, model: _Model) -> None:
        try:
            inspector = self._loader(model.package)
        except LfvEdgeError as exc:
            with self._changed:
                self._set(model, ModelStatus.FAILED, str(exc))
            return
        except Exception as exc:  # any load failure must end in FAILED, not a dead thread
            logger.exception("model %s: unexpected error while loading", model.name)
            with self._changed:
                self._set(model, ModelStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        with self._changed:
            if model.abandon:
                self._set(model, ModelStatus.STOPPED, "stopped while loading (agent shutdown)")
                return
            model.inspector = inspector
            package = inspector.package
            model.identity = (package.name, package.version)
            self._set(
                model,
                ModelStatus.RUNNING,
                f"package {package.name} {package.version} on {inspector.device.device}",
            )
        jobs = model.jobs
        while (job := jobs.get()) is not None:
            try:
                job.outputs, job.run_ms = inspector.infer(Prepared(job.tensor, (0, 0), 0.0, 0.0))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which answers INTERNAL
                job.error = exc
            finally:
                job.done.set()
        with self._changed:
            model.inspector = None  # the last reference: DLR frees the model
            self._set(model, ModelStatus.STOPPED, "")

    # --- calls --------------------------------------------------------------------------

    def _preprocessor(self, model: _Model, inspector: Inspector) -> Preprocessor:
        """This thread's preprocessor for the model's current generation (they keep buffers)."""
        cache: dict[str, tuple[int, Preprocessor]] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        entry = cache.get(model.name)
        if entry is None or entry[0] != model.generation:
            entry = (model.generation, Preprocessor(inspector.package.manifest.stage))
            cache[model.name] = entry
        return entry[1]

    def detect(self, name: str, pixels: NDArray[np.uint8], *, decode_ms: float = 0.0) -> Inspection:
        """Inspect an H×W×3 RGB image with a RUNNING model.

        Pre- and post-processing run in the calling thread, the model in the model's thread.

        Raises:
            ModelNotFoundError: no such model.
            ModelStateError: the model is not RUNNING.
            ModelBusyError: `max_pending` calls are already admitted.
            InputError: the pixels are not an image.
            InferenceError: the model failed (or anything the runner raised).
        """
        with self._changed:
            model = self._get(name)
            if model.status != ModelStatus.RUNNING or model.inspector is None:
                msg = f"model {name!r} is {model.status.name}; DetectAnomalies needs RUNNING"
                raise ModelStateError(msg, model.status)
            if model.pending >= self._max_pending:
                msg = (
                    f"model {name!r} already has {model.pending} calls in progress "
                    f"(maxPendingPerModel); retry later"
                )
                raise ModelBusyError(msg)
            model.pending += 1
            self._changed.notify_all()
            inspector = model.inspector
            jobs = model.jobs
            preprocessor = self._preprocessor(model, inspector)
        try:
            start = time.perf_counter()
            tensor = preprocessor(pixels, "rgb")
            prepared = Prepared(
                tensor=tensor,
                image_size=(int(pixels.shape[0]), int(pixels.shape[1])),
                decode_ms=decode_ms,
                preprocess_ms=(time.perf_counter() - start) * 1000.0,
            )
            job = _Job(tensor)
            jobs.put(job)
            job.done.wait()
            if job.error is not None:
                raise job.error
            assert job.outputs is not None  # noqa: S101 - set whenever error is None
            return inspector.finish(prepared, job.outputs, job.run_ms)
        finally:
            with self._changed:
                model.pending -= 1
                self._changed.notify_all()
