"""The LFV Edge Agent gRPC API (`AWS.LookoutVision.EdgeAgent`) on a Unix socket; the only grpc user.

    client ──gRPC/UDS──▶ EdgeAgentServicer (a gRPC thread per call: validate, map shared
        memory, pre-process, post-process, build the reply) ──▶ ModelRegistry (registry.py:
        lifecycle, one thread and a bounded queue per model)

Status codes follow the agent's documentation: INVALID_ARGUMENT for a bad request (bitmap
size, shared memory region), NOT_FOUND for an unknown model component, FAILED_PRECONDITION
when the model is not in the state the call needs, RESOURCE_EXHAUSTED when a model's queue is
full, INTERNAL for a failed inference or anything unexpected (the agent keeps serving).

`AgentServer` owns the socket: it refuses a path a live server answers on, replaces a stale
socket file, creates the socket with `socket_mode` (0660 by default: the agent's user and
group, e.g. ggc_user/ggc_group, may connect) and removes it on `stop()`. It can run alone
(`lfv-edge agent`) or beside the MQTT/IPC service in one process; `on_verdict` lets the
embedding process publish each gRPC verdict too (`verdict_publisher`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import grpc
import numpy as np
from numpy.typing import NDArray

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent import edge_agent_pb2_grpc as pb2_grpc
from lfv_edge.agent.registry import (
    Loader,
    ModelBusyError,
    ModelInfo,
    ModelNotFoundError,
    ModelRegistry,
    ModelStateError,
)
from lfv_edge.agent.shm import ShmRegion, map_image, write_region
from lfv_edge.errors import ConfigError, InferenceError, InputError, LfvEdgeError, TransportError
from lfv_edge.inspection.imaging import SizeLimits, check_size
from lfv_edge.inspection.pipeline import Inspection, Timings
from lfv_edge.service.config import DEFAULT_AGENT_SOCKET, AgentConfig, Device, ServiceConfig
from lfv_edge.service.messages import SCHEMA_VERSION, ModelIdentity, encode_verdict
from lfv_edge.service.ports import ReplyRoute, Transport

logger = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
# A 4096 × 4096 RGB888 bitmap inline is 48 MiB; gRPC's default limit is 4 MiB.
MAX_MESSAGE_BYTES = 4096 * 4096 * 3 + (1 << 16)
BITMAP_REQUIRED = "BitmapRequired"
BITMAP_SIZE_MISMATCH = "BitmapSizeMismatch"
MODEL_COMPONENT_REQUIRED = "ModelComponentRequired"

InputKind = Literal["byte_data", "shared_memory"]
MaskOutput = Literal["none", "byte_data", "shared_memory"]


class SocketInUseError(LfvEdgeError):
    """The socket path is held by a live server, or is not a socket we may replace."""


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What one DetectAnomalies call asked for and how long its stages took (for `on_verdict`)."""

    model_component: str
    width: int
    height: int
    input: InputKind
    mask_output: MaskOutput
    timings: Timings
    model_name: str  # the package's name and version, as in published results
    model_version: str


# The generated module is untyped; this is the one function of it the server calls.
_add_servicer: Callable[[object, grpc.Server], None] = pb2_grpc.add_EdgeAgentServicer_to_server
OnVerdict = Callable[[str, CallSummary, Inspection], None]  # runs on the gRPC thread: keep it quick


def socket_path(target: str) -> Path:
    """The filesystem path of `unix:///abs/path` (gRPC's form), `unix:path` or a plain path.

    Raises:
        ConfigError: not a Unix socket target, or longer than a socket path can be.
    """
    if target.startswith("unix://"):
        raw = target[len("unix://") :]
        if not raw.startswith("/"):
            msg = f"socket {target!r}: expected unix:///absolute/path (three slashes)"
            raise ConfigError(msg)
    elif target.startswith("unix:"):
        raw = target[len("unix:") :]
    elif ":" in target.split("/", 1)[0]:
        msg = f"socket {target!r}: only Unix domain sockets are served (unix:///path)"
        raise ConfigError(msg)
    else:
        raw = target
    if not raw:
        msg = f"socket {target!r}: no path"
        raise ConfigError(msg)
    path = Path(raw).absolute()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        msg = f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow {MAX_SOCKET_PATH}"
        raise ConfigError(msg)
    return path


def claim_socket_path(path: Path) -> None:
    """Make `path` free for a new server: refuse a live one, remove a stale socket file.

    Raises:
        SocketInUseError: a server accepts connections there, or the path is not a socket.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        msg = f"{path} exists and is not a socket; refusing to replace it"
        raise SocketInUseError(msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        logger.warning("removing stale socket %s (nothing listens on it)", path)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. another user's socket in sticky /tmp
            msg = f"{path} is a stale socket that cannot be removed: {exc.strerror or exc}"
            raise SocketInUseError(msg) from exc
        return
    except OSError as exc:  # EACCES: a socket we may not even probe is not ours to replace
        msg = f"{path} is a socket we cannot probe ({exc.strerror or exc}); refusing to replace it"
        raise SocketInUseError(msg) from exc
    finally:
        probe.close()
    msg = f"{path}: another server is listening on this socket (is an Edge Agent running?)"
    raise SocketInUseError(msg)


def _status_code(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, ModelNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, ModelStateError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, ModelBusyError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, method: str, error: BaseException) -> NoReturn:
    code = _status_code(error)
    if code == grpc.StatusCode.INTERNAL and not isinstance(error, InferenceError):
        logger.error("%s: unexpected error", method, exc_info=error)
        details = f"internal error: {type(error).__name__}: {error}"
    elif code == grpc.StatusCode.INTERNAL:
        logger.warning("%s: %s", method, error)
        details = str(error)
    else:
        logger.debug("%s: %s %s", method, code.name, error)
        details = str(error)
    context.abort(code, details)
    raise AssertionError  # pragma: no cover - context.abort always raises


def _model_name(name: str) -> str:
    if not name:
        raise InputError(MODEL_COMPONENT_REQUIRED, "model_component is required")
    return name


def _describe(info: ModelInfo) -> dict[str, object]:
    return {
        "model_component": info.name,
        "lookout_vision_model_arn": info.arn,
        "status": int(info.status),
        "status_message": info.status_message,
    }


def _mask_region(request: pb2.DetectAnomaliesRequest) -> ShmRegion | None:
    if not request.HasField("anomaly_mask_params"):
        return None
    params = request.anomaly_mask_params
    for field in ("shared_memory_handle", "shared_memory_handle_field3"):
        if params.HasField(field):
            handle = getattr(params, field)
            return ShmRegion(handle.name, handle.size, handle.offset)
    return None


class EdgeAgentServicer:
    """The five RPCs over a `ModelRegistry` (methods named as in the proto)."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        limits: SizeLimits = SizeLimits(),  # noqa: B008 - frozen value
        on_verdict: OnVerdict | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.on_verdict = on_verdict

    def DetectAnomalies(  # noqa: N802 - the proto's method name
        self, request: pb2.DetectAnomaliesRequest, context: grpc.ServicerContext
    ) -> pb2.DetectAnomaliesResponse:
        try:
            return self._detect(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a dead call
            _abort(context, "DetectAnomalies", exc)

    def _pixels(self, bitmap: pb2.Bitmap) -> tuple[NDArray[np.uint8], InputKind]:
        width, height = bitmap.width, bitmap.height
        check_size(width, height, self.limits, "bitmap")
        nbytes = width * height * 3
        kind = bitmap.WhichOneof("data")
        if kind == "byte_data":
            data = bitmap.byte_data
            if len(data) != nbytes:
                msg = (
                    f"bitmap.byte_data is {len(data)} bytes; a {width}×{height} RGB888 bitmap is "
                    f"exactly {nbytes} bytes (width × height × 3)"
                )
                raise InputError(BITMAP_SIZE_MISMATCH, msg)
            flat = np.frombuffer(data, dtype=np.uint8)  # a view of the request: no copy
            return flat.reshape(height, width, 3), "byte_data"
        if kind == "shared_memory_handle":
            handle = bitmap.shared_memory_handle
            flat = map_image(ShmRegion(handle.name, handle.size, handle.offset), nbytes)
            return flat.reshape(height, width, 3), "shared_memory"
        msg = "bitmap has neither byte_data nor shared_memory_handle"
        raise InputError(BITMAP_REQUIRED, msg)

    def _detect(self, request: pb2.DetectAnomaliesRequest) -> pb2.DetectAnomaliesResponse:
        name = _model_name(request.model_component)
        self.registry.describe(name)  # NOT_FOUND before any argument check
        if not request.HasField("bitmap"):
            raise InputError(BITMAP_REQUIRED, "bitmap is required")
        start = time.perf_counter()
        pixels, input_kind = self._pixels(request.bitmap)
        decode_ms = (time.perf_counter() - start) * 1000.0
        inspection = self.registry.detect(name, pixels, decode_ms=decode_ms)
        del pixels  # unmaps a shared memory image now rather than at the end of the call
        verdict = inspection.verdict
        result = pb2.DetectAnomalyResult(
            is_anomalous=verdict.is_anomalous,
            confidence=verdict.confidence,
            anomaly_score=verdict.score,
            anomaly_threshold=verdict.threshold,
        )
        mask_output: MaskOutput = "none"
        rgb = verdict.mask_rgb()
        if rgb is not None:
            result.anomalies.extend(
                pb2.Anomaly(
                    name=anomaly.name,
                    pixel_anomaly=pb2.PixelAnomaly(
                        total_percentage_area=anomaly.pixel_anomaly.total_percentage_area,
                        hex_color=anomaly.pixel_anomaly.color,
                    ),
                )
                for anomaly in verdict.anomalies
            )
            mask_height, mask_width = int(rgb.shape[0]), int(rgb.shape[1])
            region = _mask_region(request)
            if region is None:
                result.anomaly_mask.CopyFrom(
                    pb2.Bitmap(width=mask_width, height=mask_height, byte_data=rgb.tobytes())
                )
                mask_output = "byte_data"
            else:
                data = np.ascontiguousarray(rgb).reshape(-1).data
                write_region(region, data)
                handle = pb2.SharedMemoryHandle(
                    name=region.name, size=len(data), offset=region.offset
                )
                result.anomaly_mask.CopyFrom(
                    pb2.Bitmap(width=mask_width, height=mask_height, shared_memory_handle=handle)
                )
                mask_output = "shared_memory"
        logger.debug(
            "detect model=%s is_anomalous=%s confidence=%.3f total_ms=%.1f",
            name,
            verdict.is_anomalous,
            verdict.confidence,
            inspection.timings.total_ms,
        )
        if self.on_verdict is not None:
            height, width = inspection.image_size
            info = self.registry.describe(name)
            summary = CallSummary(
                name,
                width,
                height,
                input_kind,
                mask_output,
                inspection.timings,
                info.package_name,
                info.package_version,
            )
            try:
                self.on_verdict(name, summary, inspection)
            except Exception:  # a failing hook must not fail the client's call
                logger.exception("on_verdict hook failed for model %s", name)
        return pb2.DetectAnomaliesResponse(detect_anomaly_result=result)

    def StartModel(  # noqa: N802 - the proto's method name
        self, request: pb2.StartModelRequest, context: grpc.ServicerContext
    ) -> pb2.StartModelResponse:
        try:
            status = self.registry.start(_model_name(request.model_component))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            _abort(context, "StartModel", exc)
        return pb2.StartModelResponse(status=int(status))  # type: ignore[arg-type]

    def StopModel(  # noqa: N802 - the proto's method name
        self, request: pb2.StopModelRequest, context: grpc.ServicerContext
    ) -> pb2.StopModelResponse:
        try:
            status = self.registry.stop(_model_name(request.model_component))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            _abort(context, "StopModel", exc)
        return pb2.StopModelResponse(status=int(status))  # type: ignore[arg-type]

    def ListModels(  # noqa: N802 - the proto's method name
        self, request: pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb2.ListModelsResponse:
        try:
            models = [pb2.ModelMetadata(**_describe(info)) for info in self.registry.list()]  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            _abort(context, "ListModels", exc)
        return pb2.ListModelsResponse(models=models)

    def DescribeModel(  # noqa: N802 - the proto's method name
        self, request: pb2.DescribeModelRequest, context: grpc.ServicerContext
    ) -> pb2.DescribeModelResponse:
        try:
            info = self.registry.describe(_model_name(request.model_component))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            _abort(context, "DescribeModel", exc)
        return pb2.DescribeModelResponse(
            model_description=pb2.ModelDescription(**_describe(info))  # type: ignore[arg-type]
        )


class AgentServer:
    """The Edge Agent API on a Unix socket: `start()`, `stop(grace_s)`, `wait()`."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        socket: str = DEFAULT_AGENT_SOCKET,
        socket_mode: int = 0o660,
        limits: SizeLimits = SizeLimits(),  # noqa: B008 - frozen value
        on_verdict: OnVerdict | None = None,
        start_models: tuple[str, ...] = (),
        max_workers: int | None = None,
    ) -> None:
        configured = {info.name for info in registry.list()}
        unknown = [name for name in start_models if name not in configured]
        if unknown:
            msg = f"start models {unknown} are not configured (configured: {sorted(configured)})"
            raise ConfigError(msg)
        self.registry = registry
        self.socket_path = socket_path(socket)
        self.socket_mode = socket_mode
        self.start_models = start_models
        self.servicer = EdgeAgentServicer(registry, limits=limits, on_verdict=on_verdict)
        # Every admitted call holds a thread while it waits for its model, so the pool must
        # exceed the models' queue capacity, or full queues would wait in gRPC instead of
        # being answered RESOURCE_EXHAUSTED; +4 keeps Describe/List/Start/Stop answerable.
        capacity = registry.capacity()
        self.max_workers = max_workers or min(64, capacity + 4)
        self._server: grpc.Server | None = None
        self._inode: tuple[int, int] | None = None
        self.stopping = threading.Event()  # set when stop() begins
        self._stopped = threading.Event()

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        *,
        loader: Loader,
        limits: SizeLimits = SizeLimits(),  # noqa: B008 - frozen value
        on_verdict: OnVerdict | None = None,
    ) -> AgentServer:
        """An agent for the `agent` configuration section with the given model loader."""
        registry = ModelRegistry(
            {name: model.path for name, model in config.models.items()},
            loader=loader,
            max_pending=config.max_pending_per_model,
            arns={name: model.lookout_vision_model_arn for name, model in config.models.items()},
        )
        return cls(
            registry,
            socket=config.socket,
            socket_mode=config.socket_mode,
            limits=limits,
            on_verdict=on_verdict,
            start_models=config.start_models,
        )

    @classmethod
    def from_service_config(
        cls,
        config: ServiceConfig,
        *,
        on_verdict: OnVerdict | None = None,
        device: Device | None = None,
        threads: int | None = None,
    ) -> AgentServer:
        """The agent of a whole configuration: its `agent` section, models loaded with the
        `model` section's settings (`device`/`threads` override them) and the `limits`."""
        from lfv_edge.service.wiring import model_loader, size_limits

        agent = config.agent or AgentConfig()
        loader = model_loader(config.model, config.limits, device=device, threads=threads)
        return cls.from_config(
            agent, loader=loader, limits=size_limits(config.limits), on_verdict=on_verdict
        )

    def start(self) -> None:
        """Bind the socket (refusing a live one), serve, then start the `start_models`.

        Raises:
            SocketInUseError: another server listens on the socket path.
            TransportError: gRPC could not bind the socket.
        """
        path = self.socket_path
        claim_socket_path(path)
        server = grpc.server(
            futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="lfv-agent-rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
            maximum_concurrent_rpcs=self.max_workers * 2,  # beyond: RESOURCE_EXHAUSTED from gRPC
        )
        _add_servicer(self.servicer, server)
        # The socket is created when the port is added: a umask that yields `socket_mode`
        # means it never exists with wider permissions. The umask is process-wide, but only
        # narrowed, and only for this call.
        previous = os.umask(0o777 & ~self.socket_mode)
        try:
            bound = server.add_insecure_port(f"unix://{path}")
        except RuntimeError as exc:
            msg = f"cannot listen on {path}: {exc}"
            raise TransportError(msg) from exc
        finally:
            os.umask(previous)
        if not bound:
            msg = f"cannot listen on {path} (does its folder exist and is it writable?)"
            raise TransportError(msg)
        path.chmod(self.socket_mode)  # exactly the mode, whatever the umask removed
        info = path.lstat()
        self._inode = (info.st_dev, info.st_ino)
        server.start()
        self._server = server
        logger.info(
            "Edge Agent API on unix://%s (mode %04o) for models: %s",
            path,
            self.socket_mode,
            ", ".join(info.name for info in self.registry.list()) or "none",
        )
        for name in self.start_models:
            self.registry.start(name)

    def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace_s`), stop models, remove the socket."""
        server = self._server
        if server is None:
            return
        self._server = None
        self.stopping.set()
        server.stop(grace_s).wait()
        self.registry.close(timeout_s=grace_s)
        self._remove_socket()
        self._stopped.set()
        logger.info("Edge Agent API stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until `stop()` has finished; True if it has."""
        return self._stopped.wait(timeout_s)

    def _remove_socket(self) -> None:
        try:
            info = self.socket_path.lstat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:  # never remove a successor's socket
            try:
                self.socket_path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    logger.warning("could not remove %s: %s", self.socket_path, exc)


def verdict_publisher(transport: Transport, topic: str, *, include_mask: bool = False) -> OnVerdict:
    """An `on_verdict` hook that publishes each gRPC verdict as a result message on `topic`.

    The payload has the shape of the service's results (messages.py), with `RequestId` null,
    `ModelComponent` naming the model and `Source` "EdgeAgent". Publish failures are logged,
    never raised into the gRPC call.
    """

    def publish(model_component: str, summary: CallSummary, inspection: Inspection) -> None:
        payload = encode_verdict(
            inspection,
            ModelIdentity(summary.model_name, summary.model_version),
            head={
                "SchemaVersion": SCHEMA_VERSION,
                "RequestId": None,
                "Source": "EdgeAgent",
                "ModelComponent": model_component,
            },
            tail={"ImageSize": {"Width": summary.width, "Height": summary.height}},
            include_mask=include_mask,
        )
        try:
            transport.publish(ReplyRoute(topic, transport.name, "agent"), payload)
        except TransportError as exc:
            logger.warning("could not publish the verdict of model %s: %s", model_component, exc)

    return publish
