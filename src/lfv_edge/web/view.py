"""`WebView`: the live page, /metrics and the health endpoints beside a serving process.

    WebView.for_service(http config, service)    `serve`, the component, `demo --live`
    WebView.for_agent(http config, models, …)    `lfv-edge agent` (its gRPC verdicts)
        feed (InspectionObserver) ─▶ History ◀─ WebApp ◀─ WebServer (127.0.0.1 by default)

A companion (host.py): `start()` binds the port, `stop(timeout_s)` closes it. It is built
before the service starts, so its observer sees every reply from the first one on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from lfv_edge.inspection.pipeline import Inspection
from lfv_edge.service.config import HttpConfig
from lfv_edge.service.core import Service
from lfv_edge.web.app import Access, WebApp, read_token
from lfv_edge.web.backends import AgentBackend, Backend, ServiceBackend, SourceStatus, Timeline
from lfv_edge.web.feed import AgentCall, InspectionFeed
from lfv_edge.web.history import History
from lfv_edge.web.metrics import WebMetrics
from lfv_edge.web.server import WebServer

logger = logging.getLogger(__name__)

MAX_STREAMS = 8  # live pages at once (each holds a connection and a thread)


class WebView:
    """Feed, history, metrics and HTTP server of one process."""

    def __init__(
        self, server: WebServer, feed: InspectionFeed, backend: Backend, timeline: Timeline
    ) -> None:
        self.server = server
        self.feed = feed
        self.backend = backend
        self.timeline = timeline
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @classmethod
    def _build(cls, config: HttpConfig, backend_of: Callable[[InspectionFeed], Backend]) -> WebView:
        token = read_token(config.token_file) if config.token_file is not None else None
        history = History(config.history_size, config.history_max_bytes)
        metrics = WebMetrics()
        feed = InspectionFeed(history, metrics, images=config.images)
        backend = backend_of(feed)
        timeline = Timeline()
        app = WebApp(
            backend, history, metrics, Access(token), timeline=timeline,
            dropped=lambda: feed.dropped,
            max_streams=max(1, min(MAX_STREAMS, config.max_connections // 2)),
        )  # fmt: skip
        server = WebServer(app, config.host, config.port, max_connections=config.max_connections)
        return cls(server, feed, backend, timeline)

    @classmethod
    def for_service(
        cls, config: HttpConfig, service: Service, *, sources: Sequence[SourceStatus] = ()
    ) -> WebView:
        """The view of a `Service` (observes its replies from now on).

        Raises:
            ConfigError: the token file cannot be used (names http.tokenFile).
        """
        view = cls._build(config, lambda _feed: ServiceBackend(service, sources))
        service.add_observer(view.feed)
        return view

    @classmethod
    def for_agent(
        cls,
        config: HttpConfig,
        models: Callable[[], Sequence[Mapping[str, str]]],
        serving: Callable[[], bool],
    ) -> WebView:
        """The view of a stand-alone Edge Agent; pass `on_verdict` to the agent's server."""
        return cls._build(config, lambda feed: AgentBackend(models, serving, feed))

    def on_verdict(self, model_component: str, call: AgentCall, inspection: Inspection) -> None:
        """The Edge Agent's verdict hook (views made by `for_agent`; others ignore it)."""
        if isinstance(self.backend, AgentBackend):
            self.backend.on_verdict(model_component, call, inspection)

    @property
    def url(self) -> str:
        """Where the page is."""
        return self.server.url

    def start(self) -> None:
        """Start the feed's thread and the chart's sampler, then listen.

        Raises:
            TransportError: the address cannot be bound.
        """
        self.feed.start()
        self._sampler = threading.Thread(target=self._sample, name="lfv-web-timeline", daemon=True)
        self._sampler.start()
        try:
            self.server.start()
        except BaseException:
            self._stop.set()
            self.feed.stop(1.0)
            raise
        access = "token required" if self.server.app.access.needs_token else "loopback only"
        logger.info("web view on %s (%s)", self.url, access)

    def stop(self, timeout_s: float, /) -> None:
        """Close the port and the live streams, finish the pictures in hand."""
        self._stop.set()
        self.server.stop(timeout_s)
        self.feed.stop(timeout_s)
        if self._sampler is not None:
            self._sampler.join(timeout_s)

    def _sample(self) -> None:
        while True:
            try:
                counters = self.backend.status().get("Counters")
                if isinstance(counters, Mapping):
                    self.timeline.sample(counters)
            except Exception:  # the chart must not take the view down
                logger.exception("web view: timeline sample failed")
            if self._stop.wait(self.timeline.interval_s):
                return
