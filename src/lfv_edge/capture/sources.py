"""`CaptureSources`: the configured sources as one companion of the service (host.py builds it).

    sources[] ──▶ FolderSource / CameraSource ── Intake.submit ──▶ Service ──▶ results topic
    trigger topic(s) ── transport.subscribe_topic ──▶ parse, route by `Source` ──▶ camera.trigger
    Service finish thread ──observe──▶ the source's Intake (slot freed), a folder's mover,
                                      the ImageKeeper (per `keep` policy)
    status changes, NoFrame / bad-trigger / Interrupted replies ──▶ one publisher thread

Transport callbacks parse a trigger of a few dozen bytes and enqueue it; nothing here
publishes or waits on a transport or the finish thread. `reconfigure` applies a new
configuration between messages: sources whose settings changed are restarted, the others
keep running; trigger subscriptions follow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from lfv_edge.capture.camera import CameraSource, Opener
from lfv_edge.capture.folder import FolderSource
from lfv_edge.capture.intake import Intake, capture_of
from lfv_edge.capture.keep import ImageKeeper, wanted
from lfv_edge.capture.stream import VideoStream
from lfv_edge.capture.triggers import Trigger, parse_trigger
from lfv_edge.errors import ConfigError, InputError, TransportError
from lfv_edge.service.config import (
    CameraSourceConfig,
    CaptureSource,
    KeepPolicy,
    ServiceConfig,
)
from lfv_edge.service.core import Service
from lfv_edge.service.messages import (
    BAD_REQUEST,
    encode_error,
    environment_identity,
    request_id_of,
    utc_timestamp,
)
from lfv_edge.service.ports import InspectionRecord, ReplyRoute, Transport
from lfv_edge.service.stats import RateLimitedLog

logger = logging.getLogger(__name__)

_PUBLISH_QUEUE = 256  # statuses and error replies waiting for the transport
_STOP = object()

Source = CameraSource | FolderSource


@runtime_checkable
class TopicSubscriber(Protocol):
    """A transport that can also hand us messages of other topics (triggers)."""

    def subscribe_topic(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Hand each message on `topic` to `handler` (a transport thread: enqueue only)."""
        ...

    def unsubscribe_topic(self, topic: str) -> None:
        """Stop handing `topic`'s messages to its handler."""
        ...


class _Publisher:
    """Publishes statuses and error replies from its own thread (an IPC publish waits)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._queue: queue.Queue[tuple[ReplyRoute, bytes] | object] = queue.Queue(_PUBLISH_QUEUE)
        self._thread = threading.Thread(target=self._loop, name="lfv-capture-publish", daemon=True)
        self._full_log = RateLimitedLog(30.0)
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def publish(self, route: ReplyRoute, payload: bytes) -> None:
        try:
            self._queue.put_nowait((route, payload))
        except queue.Full:
            self.dropped += 1
            if self._full_log.ready() is not None:
                logger.warning("capture: %d status/error message(s) not published (the "
                               "transport is behind)", self.dropped)  # fmt: skip

    def stop(self, timeout_s: float) -> None:
        try:
            self._queue.put(_STOP, timeout=max(timeout_s, 0.1))
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if not isinstance(item, tuple):
                return
            route, payload = item
            try:
                self._transport.publish(route, payload)
            except TransportError as exc:
                logger.warning("capture: not published on %s: %s", route.topic, exc)


class CaptureSources:
    """Every configured capture source, started after the service and stopped before it."""

    def __init__(
        self,
        config: ServiceConfig,
        service: Service,
        transport: Transport,
        *,
        environ: Mapping[str, str] = os.environ,
        open_stream: Opener = VideoStream.open,
    ) -> None:
        self._config = config
        self._service = service
        self._transport = transport
        self._identity = environment_identity(environ)
        self._open_stream = open_stream
        self._publisher = _Publisher(transport)
        self._sources: dict[str, Source] = {}  # replaced whole: observers read it
        self._topics: dict[str, tuple[str, ...]] = {}  # trigger topic → camera ids
        self._keeper: ImageKeeper | None = None
        self._route: ReplyRoute | None = None
        self._lock = threading.Lock()  # start/stop/reconfigure
        self._observing = False
        self._started = False
        # The service keeps decoded pixels for observers while this is True (the keeper needs
        # them); it follows the keeper.
        self.wants_pixels = False

    @classmethod
    def from_config(
        cls,
        config: ServiceConfig,
        service: Service,
        transport: Transport,
        environ: Mapping[str, str] = os.environ,
    ) -> CaptureSources:
        """The capture companion of a serving process (host.py)."""
        return cls(config, service, transport, environ=environ)

    # --- lifecycle ------------------------------------------------------------------------

    def statuses(self) -> list[dict[str, object]]:
        """Each source's state and counters (the web view's sources panel)."""
        entries = []
        for source in list(self._sources.values()):
            fields = source.status_fields()
            entries.append({"Name": fields.pop("Source"), "State": fields.pop("Status"), **fields})
        return entries

    def start(self) -> None:
        """Open the folders and cameras, subscribe the trigger topics.

        Raises:
            ConfigError: the transport has no results topic, or cannot take triggers.
            CaptureError: a folder cannot be used (cameras retry in the background instead).
            TransportError: a trigger subscription was refused.
        """
        with self._lock:
            self._publisher.start()
            self._started = True
            self._apply(self._config, initial=True)

    def stop(self, timeout_s: float) -> None:
        """Unsubscribe triggers, stop the sources (folders finish what is in flight), flush."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            deadline = time.monotonic() + timeout_s
            self._set_topics({})
            sources, self._sources = self._sources, {}
            self._stop_sources(list(sources.values()), deadline)
            if self._keeper is not None:
                self.wants_pixels = False
                self._keeper.stop(max(deadline - time.monotonic(), 0.5))
                self._keeper = None
            self._publisher.stop(max(deadline - time.monotonic(), 0.5))

    def reconfigure(self, config: ServiceConfig) -> None:
        """Apply a new configuration: changed sources restart, unchanged ones keep running.

        Raises:
            ConfigError, CaptureError, TransportError: as `start`; what failed is logged and
                the rest applied.
        """
        with self._lock:
            if not self._started:
                self._config = config
                return
            self._apply(config, initial=False)

    def _apply(self, config: ServiceConfig, *, initial: bool) -> None:
        old = self._config
        route = self._transport.results_route() if config.sources else None
        if config.sources and route is None:
            msg = f"sources: the {self._transport.name} transport has no results topic for verdicts"
            raise ConfigError(msg, key="sources")
        restart_all = route != self._route or config.capture.keep != old.capture.keep
        self._route = route
        keep_source = [s for s in config.sources if s.keep is not KeepPolicy.NONE]
        if restart_all or initial:
            if self._keeper is not None:
                self._keeper.stop(5.0)
                self._keeper = None
            if keep_source and config.capture.keep.dir is not None:
                keeper = ImageKeeper(config.capture.keep)
                keeper.start()
                self._keeper = keeper
            self.wants_pixels = self._keeper is not None
        wanted_ids = {s.id: s for s in config.sources}
        running = dict(self._sources)
        stopping = [
            source
            for source_id, source in running.items()
            if restart_all or wanted_ids.get(source_id) != source.config
        ]
        for source in stopping:
            del running[source.config.id]
        self._sources = running
        self._stop_sources(stopping, time.monotonic() + 10.0)
        self._config = config
        if not self._observing and config.sources:
            self._service.add_observer(self)
            self._observing = True
        assert route is not None or not config.sources  # noqa: S101 - checked above
        for source_config in config.sources:
            if source_config.id in running or route is None:
                continue
            source = self._build(source_config, route)
            source.start()
            running[source_config.id] = source
            self._sources = dict(running)
            if isinstance(source, FolderSource):  # cameras report their own changes
                self._status(source.status_fields())
        topics: dict[str, list[str]] = {}
        for source_config in config.sources:
            if isinstance(source_config, CameraSourceConfig):
                topic = config.trigger_topic_of(source_config)
                if topic is not None:
                    topics.setdefault(topic, []).append(source_config.id)
        self._set_topics({topic: tuple(ids) for topic, ids in topics.items()})
        if not initial:
            logger.info("capture: %d source(s) running, %d restarted", len(running), len(stopping))

    def _build(self, config: CaptureSource, route: ReplyRoute) -> Source:
        intake = Intake(config.id, self._service, route, max_in_flight=config.max_in_flight)
        if isinstance(config, CameraSourceConfig):
            return CameraSource(
                config, intake, on_status=self._status, on_error=self._error_reply,
                open_stream=self._open_stream,
            )  # fmt: skip
        return FolderSource(config, intake, on_error=self._error_reply)

    def _stop_sources(self, sources: list[Source], deadline: float) -> None:
        for source in sources:
            source.stop(max(deadline - time.monotonic(), 0.5))
            self._status(source.status_fields())

    def _set_topics(self, wanted_topics: dict[str, tuple[str, ...]]) -> None:
        transport = self._transport
        old = self._topics
        self._topics = wanted_topics  # read by the transport threads
        if not wanted_topics and not old:
            return
        if not isinstance(transport, TopicSubscriber):
            msg = f"capture.triggerTopic: the {transport.name} transport cannot take triggers"
            raise ConfigError(msg, key="capture.triggerTopic")
        for topic in old:
            if topic not in wanted_topics:
                transport.unsubscribe_topic(topic)
        for topic in wanted_topics:
            if topic not in old:

                def handler(payload: bytes, topic: str = topic) -> None:
                    self._on_trigger(topic, payload)

                transport.subscribe_topic(topic, handler)

    # --- triggers (transport threads) -----------------------------------------------------

    def _on_trigger(self, topic: str, payload: bytes) -> None:
        received_at, received_mono = time.perf_counter(), time.monotonic()
        cameras = self._topics.get(topic, ())
        capture: dict[str, object] = {"Type": "camera", "Trigger": "topic", "Topic": topic}
        try:
            request_id, source_id, metadata = parse_trigger(payload)
        except InputError as exc:
            self._error_reply(request_id_of(payload), exc.code, exc.message, capture)
            return
        capture["TriggerId"] = request_id
        if source_id is None:
            if len(cameras) != 1:
                self._error_reply(request_id, BAD_REQUEST,
                                  f"Source is required on {topic}: one of {', '.join(cameras)}",
                                  capture)  # fmt: skip
                return
            source_id = cameras[0]
        source = self._sources.get(source_id)
        if source_id not in cameras or not isinstance(source, CameraSource):
            capture["Source"] = source_id
            self._error_reply(request_id, BAD_REQUEST,
                              f"no camera source {source_id!r} takes triggers on {topic}",
                              capture)  # fmt: skip
            return
        source.trigger(Trigger(request_id, source_id, metadata, received_at, received_mono, topic))

    # --- the service's observer (finish thread) -------------------------------------------

    def observe(self, record: InspectionRecord) -> None:
        """Free the source's slot, let a folder move its file, keep the image per policy."""
        capture = capture_of(record)
        if capture is None:
            return
        source = self._sources.get(str(capture.get("Source")))
        if source is None or record.source != source.config.id:
            return
        sequence = capture.get("Sequence")
        if not isinstance(sequence, int) or not source.intake.finish(sequence):
            return
        if isinstance(source, FolderSource):
            source.finished(record, sequence)
        keeper = self._keeper
        if keeper is not None and wanted(source.config.keep, record):
            keeper.offer(record, source.config.id)

    # --- statuses and error replies ---------------------------------------------------------

    def _status(self, fields: dict[str, object]) -> None:
        logger.info("capture status %s", fields)
        topic = self._config.capture.status_topic
        route = self._route
        if topic is None or route is None:
            return
        body = {**fields, "Timestamp": utc_timestamp(), **self._identity}
        status_route = dataclasses.replace(route, topic=topic, correlation_data=None)
        self._publisher.publish(status_route, json.dumps(body, separators=(",", ":")).encode())

    def _error_reply(
        self, request_id: str | None, code: str, message: str, capture: dict[str, object]
    ) -> None:
        logger.info("capture error request_id=%s code=%s: %s", request_id, code, message)
        route = self._route
        if route is None:
            return
        payload = encode_error(request_id, code, message, extra={"Capture": capture})
        self._publisher.publish(route, payload)

    # --- for tests and the bench -------------------------------------------------------------

    def source(self, source_id: str) -> Source:
        """The running source with this id."""
        return self._sources[source_id]

    @property
    def keeper(self) -> ImageKeeper | None:
        """The kept-image store, when a source keeps images."""
        return self._keeper
