"""The inspection service: transports in, a three-stage pipeline, replies out. Owns every thread.

    transport threads ──enqueue──▶ inbox (bounded, OverflowPolicy) ──▶ [prepare ×N] parse,
        decode, pre-process into a pooled tensor ──▶ (1 slot) ──▶ [model] DLR run, the model's
        only thread ──▶ [finish] post-process, encode, publish, stats

Decoding and pre-processing of the next images overlap with inference of the current one; the
slot of one between them bounds both memory and latency. One prepare worker keeps a CPU model
busy; a GPU model runs faster than one core decodes 1080p JPEGs, so `prepare_workers` run in
parallel (replies may then leave in another order than requests came: each carries its id). Every message gets exactly one
reply: a verdict, or an error with a stable code (messages.ERROR_CODES) — including the ones
refused because the queue is full (`Busy`). A failure while handling one message becomes its
error reply; no message can stop a worker.

Live changes (Greengrass configuration, model swaps) take effect between messages: settings
are an immutable snapshot read once per message, and each prepared message carries the
inspector it was prepared for, so a model swap never mixes tensors and models.

`stop()` is the SIGTERM path: stop receiving, drain what was received, publish, close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import InputError, LfvEdgeError, TransportError
from lfv_edge.inspection.pipeline import Inspection, Inspector, Prepared
from lfv_edge.service.config import OverflowPolicy
from lfv_edge.service.inbox import Inbox, SpillFolder
from lfv_edge.service.messages import (
    BUSY,
    INFERENCE_FAILED,
    INTERNAL_ERROR,
    ModelIdentity,
    Request,
    encode_error,
    encode_result,
    parse_request,
    request_id_of,
)
from lfv_edge.service.ports import (
    IncomingMessage,
    InspectionObserver,
    InspectionRecord,
    Transport,
)
from lfv_edge.service.stats import RateLimitedLog, Stats

logger = logging.getLogger(__name__)

_FINISH_QUEUE_SIZE = 10_000  # replies waiting to be published; only error replies can pile up
_FINISH_PUT_TIMEOUT_S = 60.0
_TENSORS_BESIDE_WORKERS = 2  # pooled tensors besides one per prepare worker: waiting, running


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """What the pipeline reads per message; replaced whole on a configuration change."""

    image_roots: tuple[Path, ...] = ()
    max_payload_bytes: int = 16 << 20
    include_mask: bool = True
    overflow: OverflowPolicy = OverflowPolicy.REJECT
    extra_reply_fields: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    """One message on its way through the stages."""

    message: IncomingMessage
    request: Request | None = None
    model: _LoadedModel | None = None  # the inspector (and its tensors) it was prepared for
    prepared: Prepared | None = None
    outputs: list[NDArray[np.float32]] | None = None
    run_ms: float = 0.0
    error: tuple[str, str] | None = None  # (code, message)
    request_id: str | None = None  # an error reply's (its payload and request are dropped)


class _LoadedModel:
    """An inspector and its reusable input tensors (12 MB each for a 1000×1000 model).

    Jobs hold it, not the service: after a model swap the old inspector, its DLR model and its
    tensors are freed as soon as the last job prepared for it is finished.
    """

    def __init__(self, inspector: Inspector, workers: int) -> None:
        self.inspector = inspector
        # Pre-processors keep scratch buffers: one per prepare worker (the first is the
        # inspector's own). Sharing one between workers mixed images up.
        self.preprocessors = [inspector.preprocessor] + [
            inspector.new_preprocessor() for _ in range(workers - 1)
        ]
        tensors = workers + _TENSORS_BESIDE_WORKERS
        self._free: queue.SimpleQueue[NDArray[np.float32]] = queue.SimpleQueue()
        for _ in range(tensors):
            self._free.put(inspector.preprocessor.new_tensor())

    def take(self) -> NDArray[np.float32]:
        try:
            return self._free.get_nowait()
        except queue.Empty:  # more in flight than expected (a swap); allocate, don't wait
            return self.inspector.preprocessor.new_tensor()

    def give_back(self, tensor: NDArray[np.float32]) -> None:
        self._free.put(tensor)


class Service:
    """Runs one inspector behind any number of transports."""

    def __init__(
        self,
        inspector: Inspector,
        transports: Sequence[Transport],
        *,
        settings: ServiceSettings | None = None,
        queue_size: int = 8,
        prepare_workers: int = 1,
        stats: Stats | None = None,
        stats_interval_s: float = 60.0,
        observers: Sequence[InspectionObserver] = (),
        waiting_max_bytes: int = 0,
        spill: SpillFolder | None = None,
    ) -> None:
        if prepare_workers < 1:
            msg = f"prepare_workers must be at least 1, got {prepare_workers}"
            raise ValueError(msg)
        self._prepare_workers = prepare_workers
        self._model = _LoadedModel(inspector, prepare_workers)
        self._transports = list(transports)
        self.settings = settings or ServiceSettings()
        self.stats = stats or Stats()
        self._stats_interval_s = stats_interval_s
        self._inbox = Inbox(queue_size, waiting_max_bytes=waiting_max_bytes, spill=spill)
        self.unanswered_at_stop = 0  # left to the broker's redelivery by a stop out of time
        self._ready: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._finish: queue.Queue[_Job | None] = queue.Queue(maxsize=_FINISH_QUEUE_SIZE)
        self._busy_log = RateLimitedLog()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.fatal_reason: str | None = None
        self._threads: list[threading.Thread] = []
        self._preparing = prepare_workers  # prepare workers still running (the last one ends)
        self._preparing_lock = threading.Lock()
        self._observers: list[InspectionObserver] = list(observers)
        self._reloads = 0  # model loads in progress (model_reload): readiness says not ready
        self._reloads_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, then the transports (so nothing arrives before we can take it)."""
        stages: list[tuple[str, Callable[..., None], tuple[int, ...]]] = [
            (f"lfv-prepare-{i}", self._prepare_loop, (i,)) for i in range(self._prepare_workers)
        ]
        stages += [("lfv-model", self._model_loop, ()), ("lfv-finish", self._finish_loop, ())]
        for name, target, args in stages:
            thread = threading.Thread(target=target, name=name, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._stats_loop, name="lfv-stats", daemon=True).start()
        for transport in self._transports:
            transport.start(self._on_message, self._on_fatal)
        package = self.inspector.package
        logger.info("serving model %s (%s) on %s with %d prepare worker(s)", package.name,
                    package.version, ", ".join(t.name for t in self._transports),
                    self._prepare_workers)  # fmt: skip

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop receiving, answer what can be answered within `timeout_s`, close the transports.

        Requests still waiting when a quarter of the time (at most 2 s) is left are not
        started: one the broker will deliver again (MQTT QoS ≥ 1, not yet acknowledged) is
        left to that; any other is answered `Busy`. Returns True when every worker finished
        within `timeout_s`.
        """
        if self._stopping.is_set():
            return self._stopped.wait(timeout_s)
        self._stopping.set()
        start = time.monotonic()
        deadline = start + timeout_s
        for transport in self._transports:
            try:
                transport.stop_receiving()
            except LfvEdgeError as exc:
                logger.warning("%s: unsubscribe failed: %s", transport.name, exc)
        self._inbox.close()
        last_call = deadline - min(timeout_s / 4, 2.0)  # what runs then still has to finish
        preparing = self._threads[: self._prepare_workers]
        for thread in preparing:
            thread.join(max(last_call - time.monotonic(), 0.0))
        left = self._inbox.take_all()
        for message in left:
            if message.redelivered_if_unanswered:
                self.unanswered_at_stop += 1
            else:
                self._reply_error(_Job(message), BUSY, "the service is shutting down")
        if left:
            logger.warning("stopping: %d waiting requests not started (%d left to the broker's "
                           "redelivery, %d answered Busy)", len(left), self.unanswered_at_stop,
                           len(left) - self.unanswered_at_stop)  # fmt: skip
        drained = True
        for thread in self._threads:  # prepare ×N, model, finish: each forwards the sentinel
            thread.join(max(deadline - time.monotonic(), 0.0))
            drained = drained and not thread.is_alive()
        for transport in self._transports:
            try:
                transport.close(max(deadline - time.monotonic(), 1.0))
            except LfvEdgeError as exc:
                logger.warning("%s: close failed: %s", transport.name, exc)
        # Logged before `_stopped` is set: a waiter (serve's main thread) prints its own last
        # line as soon as it is, and must not be followed by this one.
        logger.info("stopped in %.1f s; %s", time.monotonic() - start,
                    self.stats.snapshot(QueueDepth=len(self._inbox)))  # fmt: skip
        self._stopped.set()
        return drained

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until `stop()` has finished (or a fatal transport error stopped us)."""
        return self._stopped.wait(timeout_s)

    def _on_fatal(self, reason: str) -> None:
        logger.error("fatal transport error: %s", reason)
        self.fatal_reason = reason
        threading.Thread(target=self.stop, name="lfv-fatal-stop", daemon=True).start()

    # --- live changes ----------------------------------------------------------------

    @property
    def inspector(self) -> Inspector:
        """The inspector new messages are prepared with."""
        return self._model.inspector

    def replace_inspector(self, inspector: Inspector) -> None:
        """Use another inspector (new model or new threshold) from the next message on.

        Messages already prepared finish with the inspector they were prepared for; the old
        one is freed with the last of them.
        """
        if inspector is self._model.inspector:
            return
        self._model = _LoadedModel(inspector, self._prepare_workers)
        logger.info(
            "inspector replaced: model %s %s", inspector.package.name, inspector.package.version
        )

    @contextlib.contextmanager
    def model_reload(self) -> Iterator[None]:
        """Bracket loading a model that will replace the current one (any thread).

        Meanwhile `reloading_model` is True: the web view's /readyz answers not ready, so an
        orchestrator holds traffic while the new model loads (the old one keeps serving).
        """
        with self._reloads_lock:
            self._reloads += 1
        try:
            yield
        finally:
            with self._reloads_lock:
                self._reloads -= 1

    @property
    def reloading_model(self) -> bool:
        """True while a `model_reload()` bracket is open."""
        with self._reloads_lock:
            return self._reloads > 0

    @property
    def stopping(self) -> bool:
        """True once `stop()` began (or a fatal transport error stopped the service)."""
        return self._stopping.is_set()

    def add_observer(self, observer: InspectionObserver) -> None:
        """Show every reply from now on to `observer` (before `start()`, or at any time)."""
        self._observers = [*self._observers, observer]  # replaced whole: the finish thread reads it

    @property
    def transports(self) -> tuple[Transport, ...]:
        """The transports replies go out through."""
        return tuple(self._transports)

    def submit(self, message: IncomingMessage) -> None:
        """Hand the service a message from inside the process (a capture source): as a
        transport would, answered `Busy` when the queue is full and refuses it."""
        self._on_message(message)

    def update_settings(self, settings: ServiceSettings, queue_size: int | None = None) -> None:
        """Apply new settings from the next message on."""
        self.settings = settings
        if queue_size is not None:
            self._inbox.resize(queue_size)

    def queue_depth(self) -> int:
        return len(self._inbox)

    def waiting_bytes(self) -> tuple[int, int]:
        """Payload bytes of waiting requests beyond the queue: (in memory, spilled to disk)."""
        return self._inbox.memory_bytes, self._inbox.spilled_bytes

    def queue_capacity(self) -> int:
        """The request queue's size now (configuration updates may change it); requests that
        can wait may go beyond it (`waiting_bytes`)."""
        return self._inbox.size

    # --- transport threads -------------------------------------------------------------

    def _on_message(self, message: IncomingMessage) -> None:
        """Runs on a transport thread: enqueue, never block."""
        self.stats.count_received()
        if self._stopping.is_set():
            self._reply_error(_Job(message), BUSY, "the service is shutting down")
            return
        refused = self._inbox.offer(message, self.settings.overflow)
        if refused is None:
            return
        suppressed = self._busy_log.ready()
        if suppressed is not None:
            logger.warning("queue full (%d and the waiting budget): answering Busy (%s); %d more "
                           "since the last warning", self._inbox.size,
                           self.settings.overflow.value, suppressed)  # fmt: skip
        self._reply_error(_Job(refused), BUSY, f"the request queue is full ({self._inbox.size})")

    # --- workers -----------------------------------------------------------------------

    def _reply_error(self, job: _Job, code: str, message: str) -> None:
        """Queue an error reply; it keeps the RequestId, not the payload or the image.

        Error replies can pile up behind the finish stage under a flood (every Busy, every
        refused payload); holding their payloads they held nearly the whole burst
        (tools/rss_burst.py: 1.27 GiB RSS for 10,000 mixed requests of up to 1 MiB). The id
        is resolved on the calling thread, which also slows a transport's intake to the rate
        replies go out: back-pressure on the broker instead of on our memory.
        """
        job.error = (code, message)
        job.outputs = None
        if job.request is not None:
            job.request_id = job.request.request_id
        elif job.request_id is None:
            job.request_id = request_id_of(job.message.payload)
        job.request = None
        job.message = replace(job.message, payload=b"")
        try:
            # Full: wait for the finish stage instead of dropping the reply (a 20,000-message
            # burst lost 1,908 replies that way). Waiting here holds back the transport thread,
            # i.e. the broker, until replies go out again; the bound only guards a stalled stage.
            self._finish.put(job, timeout=_FINISH_PUT_TIMEOUT_S)
        except queue.Full:
            self.stats.count_error(code)
            logger.error("reply queue full: request dropped without a reply (%s)", code)

    def _prepare_loop(self, worker: int) -> None:
        while True:
            message = self._inbox.get()
            if message is None:
                self._end_prepare_worker()
                return
            job = _Job(message)
            try:
                settings = self.settings
                job.request = message.request or parse_request(
                    message.payload,
                    image_roots=settings.image_roots,
                    max_payload_bytes=settings.max_payload_bytes,
                )
                model = self._model  # read once: a swap between two reads must not mix them
                job.model = model
                tensor = model.take()
                keep = any(observer.wants_pixels for observer in self._observers)
                try:
                    job.prepared = model.inspector.prepare(
                        job.request.source,
                        out=tensor,
                        keep_pixels=keep,
                        preprocessor=model.preprocessors[worker],
                    )
                except BaseException:
                    model.give_back(tensor)  # an unreadable image must not shrink the pool
                    raise
            except InputError as exc:
                self._reply_error(job, exc.code, exc.message)
                continue
            except Exception as exc:
                logger.exception("preparing a message failed")
                self._reply_error(job, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                continue
            self._ready.put(job)

    def _end_prepare_worker(self) -> None:
        """The inbox is closed and empty: the last prepare worker to see it stops the model."""
        with self._preparing_lock:
            self._preparing -= 1
            last = self._preparing == 0
        if last:
            self._ready.put(None)

    def _model_loop(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                self._finish.put(None)
                return
            if job.model is None or job.prepared is None:  # the prepare stage sets both
                self._reply_error(job, INTERNAL_ERROR, "a message reached the model unprepared")
                continue
            try:
                job.outputs, job.run_ms = job.model.inspector.infer(job.prepared)
            except LfvEdgeError as exc:
                job.error = (INFERENCE_FAILED, str(exc))
            except Exception as exc:
                logger.exception("inference failed")
                job.error = (INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")
            finally:
                # DLR copied the input in SetDLRInput: the buffer is free again.
                job.model.give_back(job.prepared.tensor)
            self._finish.put(job)

    def _finish_loop(self) -> None:
        while True:
            job = self._finish.get()
            if job is None:
                return
            try:
                self._finish_one(job)
            except Exception:
                logger.exception("finishing a message failed")

    def _finish_one(self, job: _Job) -> None:
        request_id = job.request.request_id if job.request else job.request_id
        payload: bytes | None = None
        inspection: Inspection | None = None
        identity = ModelIdentity("", "")
        if job.model is not None:
            inspector = job.model.inspector
            package = inspector.package
            identity = ModelIdentity(package.name, package.version, inspector.model_arn)
        if (
            job.error is None
            and job.outputs is not None
            and job.model is not None
            and job.prepared is not None
            and job.request is not None
        ):
            try:
                inspection = job.model.inspector.finish(job.prepared, job.outputs, job.run_ms)
                payload = encode_result(
                    job.request,
                    inspection,
                    identity,
                    include_mask=self.settings.include_mask,
                    max_bytes=job.message.reply.max_bytes,
                    extra={**self.settings.extra_reply_fields, **job.message.reply_fields},
                )
            except LfvEdgeError as exc:
                job.error = (INFERENCE_FAILED, str(exc))
                inspection = None
            except Exception as exc:
                logger.exception("post-processing failed")
                job.error = (INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                inspection = None
        if job.error is not None:
            code, text = job.error
            if request_id is None:
                request_id = request_id_of(job.message.payload)
            payload = encode_error(request_id, code, text, extra=job.message.reply_fields)
            self.stats.count_error(code)
            logger.info("error request_id=%s code=%s: %s", request_id, code, text)
        assert payload is not None  # noqa: S101
        published = True
        try:
            self._transport_for(job.message).publish(job.message.reply, payload)
        except TransportError as exc:
            self.stats.count_publish_failure()
            logger.warning("reply request_id=%s not published: %s", request_id, exc)
            published = False
        if published and job.message.ack is not None:
            try:
                job.message.ack()
            except LfvEdgeError as exc:
                logger.warning(
                    "request_id=%s: acknowledging the request failed: %s", request_id, exc
                )
        if published:
            latency_ms = (time.perf_counter() - job.message.received_at) * 1000.0
            self.stats.record_reply(
                latency_ms,
                is_anomalous=inspection.verdict.is_anomalous if inspection else None,
                stages_ms=inspection.timings.to_dict() if inspection else None,
            )
        if self._observers:
            self._notify(job, request_id, payload, identity, inspection, published)

    def _notify(
        self,
        job: _Job,
        request_id: str | None,
        payload: bytes,
        identity: ModelIdentity,
        inspection: Inspection | None,
        published: bool,
    ) -> None:
        prepared = job.prepared
        record = InspectionRecord(
            request_id=request_id,
            payload=payload,
            model=identity,
            source=job.message.source or job.message.reply.transport,
            received_at=job.message.received_at,
            finished_at=time.time(),
            published=published,
            inspection=inspection,
            error_code=job.error[0] if job.error else None,
            pixels=prepared.pixels if prepared is not None else None,
            channel_order=prepared.order if prepared is not None else "rgb",
            reply_fields=job.message.reply_fields,
        )
        for observer in self._observers:
            try:
                observer.observe(record)
            except Exception:  # an observer's bug must not lose replies or stop the stage
                logger.exception("observer %s failed", type(observer).__name__)

    def _transport_for(self, message: IncomingMessage) -> Transport:
        for transport in self._transports:
            if transport.name == message.reply.transport:
                return transport
        raise TransportError(f"no transport named {message.reply.transport!r}")

    def _stats_loop(self) -> None:
        if self._stats_interval_s <= 0:
            return
        while not self._stopping.wait(self._stats_interval_s):
            snapshot = self.stats.snapshot(
                QueueDepth=len(self._inbox),
                Model=self.inspector.package.name,
                **self.settings.extra_reply_fields,
            )
            logger.info("stats %s", snapshot)
            payload = json.dumps(snapshot, separators=(",", ":")).encode()
            for transport in self._transports:
                try:
                    transport.publish_stats(payload)
                except TransportError as exc:
                    logger.warning("%s: stats not published: %s", transport.name, exc)
