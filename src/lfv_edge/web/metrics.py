"""Prometheus metrics of a serving process, in a registry of its own (never the global one).

Counted as replies happen (`count_reply`, on the service's finish thread: a few counter and
histogram updates, microseconds each): replies by result, errors by code, anomaly labels
found, publish failures, stage and request durations. Read when scraped (`Gauges`, from the
backend): requests received, queue depth and capacity, spool size, transport connection,
readiness, model information, the history's size. Plus prometheus_client's process, platform
and garbage-collector collectors. Every name is listed in `METRIC_NAMES` (docs/web.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from lfv_edge.inspection.pipeline import Timings

STAGES = ("decode", "preprocess", "run", "postprocess", "total")
RESULTS = ("anomalous", "normal", "error")
# Seconds: 0.5 ms … 10 s. A stage is 1–50 ms on a CPU model; a request waiting behind a full
# queue takes seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

METRIC_NAMES = (
    "lfv_edge_requests_received_total",
    "lfv_edge_replies_total",
    "lfv_edge_errors_total",
    "lfv_edge_anomaly_labels_total",
    "lfv_edge_publish_failures_total",
    "lfv_edge_stage_duration_seconds",
    "lfv_edge_request_duration_seconds",
    "lfv_edge_queue_depth",
    "lfv_edge_queue_capacity",
    "lfv_edge_queue_waiting_bytes",
    "lfv_edge_spool_replies",
    "lfv_edge_spool_bytes",
    "lfv_edge_transport_connected",
    "lfv_edge_ready",
    "lfv_edge_model_reloading",
    "lfv_edge_model_info",
    "lfv_edge_web_history_entries",
    "lfv_edge_web_history_bytes",
    "lfv_edge_web_dropped_total",
    "lfv_edge_web_streams",
)


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the backend reports at scrape time."""

    received: int
    queue_depth: int | None = None
    queue_capacity: int | None = None
    waiting_bytes: tuple[int, int] | None = None  # beyond the queue: (in memory, on disk)
    spool: Mapping[str, tuple[int, int]] | None = None  # transport → (replies, bytes)
    connected: Mapping[str, bool] | None = None  # transport → up
    ready: bool = True
    reloading: bool = False
    models: Sequence[Mapping[str, str]] = ()  # labels of lfv_edge_model_info (name, version, …)


@dataclass(frozen=True, slots=True)
class WebGauges:
    """The web view's own numbers."""

    history_entries: int
    history_bytes: int
    dropped: int
    streams: int


class _ScrapeTime(Collector):
    """Families read from the backend and the web view when /metrics is scraped."""

    def __init__(self, backend: Callable[[], Gauges], web: Callable[[], WebGauges]) -> None:
        self._backend = backend
        self._web = web

    def describe(self) -> Iterable[Metric]:
        return []  # read live: nothing to describe before the first scrape

    def collect(self) -> Iterator[Metric]:
        gauges = self._backend()
        yield CounterMetricFamily(
            "lfv_edge_requests_received",
            "Requests received (answered or not yet)",
            value=gauges.received,
        )
        if gauges.queue_depth is not None:
            yield GaugeMetricFamily(
                "lfv_edge_queue_depth", "Requests waiting for the model", value=gauges.queue_depth
            )
        if gauges.queue_capacity is not None:
            yield GaugeMetricFamily(
                "lfv_edge_queue_capacity", "Size of the request queue", value=gauges.queue_capacity
            )
        if gauges.waiting_bytes is not None:
            waiting = GaugeMetricFamily(
                "lfv_edge_queue_waiting_bytes",
                "Payload bytes of requests waiting beyond the queue, in memory or spilled to disk",
                labels=["where"],
            )
            waiting.add_metric(["memory"], gauges.waiting_bytes[0])
            waiting.add_metric(["disk"], gauges.waiting_bytes[1])
            yield waiting
        if gauges.spool is not None:
            replies = GaugeMetricFamily(
                "lfv_edge_spool_replies", "Replies waiting for the broker", labels=["transport"]
            )
            size = GaugeMetricFamily(
                "lfv_edge_spool_bytes",
                "Bytes of replies waiting for the broker",
                labels=["transport"],
            )
            for name, (count, nbytes) in gauges.spool.items():
                replies.add_metric([name], count)
                size.add_metric([name], nbytes)
            yield replies
            yield size
        if gauges.connected is not None:
            connected = GaugeMetricFamily(
                "lfv_edge_transport_connected", "1 while the transport is connected",
                labels=["transport"],
            )  # fmt: skip
            for name, up in gauges.connected.items():
                connected.add_metric([name], 1.0 if up else 0.0)
            yield connected
        yield GaugeMetricFamily("lfv_edge_ready", "1 when /readyz answers 200", value=gauges.ready)
        yield GaugeMetricFamily(
            "lfv_edge_model_reloading", "1 while a new model loads", value=gauges.reloading
        )
        if gauges.models:
            names = sorted({label for model in gauges.models for label in model})
            info = GaugeMetricFamily(
                "lfv_edge_model_info", "The model(s) in use (value 1)", labels=names
            )
            for model in gauges.models:
                info.add_metric([model.get(label, "") for label in names], 1.0)
            yield info
        web = self._web()
        yield GaugeMetricFamily(
            "lfv_edge_web_history_entries", "Inspections kept for the page",
            value=web.history_entries,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lfv_edge_web_history_bytes", "Bytes of the kept inspections (bounded)",
            value=web.history_bytes,
        )  # fmt: skip
        yield CounterMetricFamily(
            "lfv_edge_web_dropped", "Replies not shown on the page (its backlog was full)",
            value=web.dropped,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lfv_edge_web_streams", "Pages connected to the live stream", value=web.streams
        )


class WebMetrics:
    """The registry and the instruments replies are counted into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        registry = self.registry
        self.replies = Counter(
            "lfv_edge_replies", "Replies published, by result", ["result"], registry=registry
        )
        self.errors = Counter(
            "lfv_edge_errors", "Error replies, by error code", ["code"], registry=registry
        )
        self.labels = Counter(
            "lfv_edge_anomaly_labels",
            "Anomalous verdicts whose mask has pixels of this label",
            ["label"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "lfv_edge_publish_failures", "Replies a transport refused", registry=registry
        )
        self.stage_seconds = Histogram(
            "lfv_edge_stage_duration_seconds",
            "Time of each inspection stage",
            ["stage"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "lfv_edge_request_duration_seconds",
            "Received to reply published, queueing included",
            buckets=BUCKETS,
            registry=registry,
        )
        for result in RESULTS:  # present at 0 from the start: rate() needs a first sample
            self.replies.labels(result)
        self._stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}

    def watch(self, backend: Callable[[], Gauges], web: Callable[[], WebGauges]) -> None:
        """Read these when scraped."""
        self.registry.register(_ScrapeTime(backend, web))

    def count_reply(
        self,
        *,
        result: str,
        error_code: str | None,
        labels: Iterable[str],
        timings: Timings | None,
        latency_s: float | None,
        published: bool,
    ) -> None:
        """One reply (on the finish thread: only counter and histogram updates)."""
        self.replies.labels(result).inc()
        if error_code is not None:
            self.errors.labels(error_code).inc()
        for label in labels:
            self.labels.labels(label).inc()
        if not published:
            self.publish_failures.inc()
        if timings is not None:
            stages = self._stages
            stages["decode"].observe(timings.decode_ms / 1000.0)
            stages["preprocess"].observe(timings.preprocess_ms / 1000.0)
            stages["run"].observe(timings.run_ms / 1000.0)
            stages["postprocess"].observe(timings.postprocess_ms / 1000.0)
            stages["total"].observe(timings.total_ms / 1000.0)
        if latency_s is not None:
            self.request_seconds.observe(latency_s)
