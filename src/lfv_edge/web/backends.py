"""What the web view reads from the process it runs in: a `Service`, or the Edge Agent alone.

    ServiceBackend(service, sources)   `serve`, the Greengrass component, `demo --live`
    AgentBackend(models, serving)      `lfv-edge agent` (no Service: its gRPC calls' verdicts)

Readiness (/readyz): a service is ready when it is not stopping, no model is loading
(`Service.model_reload`) and every transport is connected; the agent when its socket serves.
Model information is what `lfv-edge inspect` says about the package (report.py), computed once
per model version, plus what the running inspector uses (device, threshold).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from lfv_edge.inspection.pipeline import Inspection, Inspector
from lfv_edge.inspection.report import describe_loaded
from lfv_edge.service.core import Service
from lfv_edge.service.stats import Stats
from lfv_edge.web.feed import AgentCall, InspectionFeed
from lfv_edge.web.metrics import Gauges


@runtime_checkable
class SourceStatus(Protocol):
    """Capture sources (or anything beside the service) that can say how they are doing."""

    def statuses(self) -> Sequence[Mapping[str, object]]:
        """One JSON-ready entry per source: at least `Name` and `State` (the sources panel)."""
        ...


@runtime_checkable
class _Spooling(Protocol):
    """A transport that keeps replies while its broker is away (MqttTransport)."""

    @property
    def spool(self) -> _SpoolSize: ...


class _SpoolSize(Protocol):
    def __len__(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...


class Backend(Protocol):
    """What every page, metric and health answer is read from."""

    def gauges(self) -> Gauges:
        """Numbers for /metrics, read at scrape time."""
        ...

    def not_ready(self) -> list[str]:
        """Why /readyz should answer 503 (empty: ready)."""
        ...

    def model(self) -> dict[str, object]:
        """The model(s) in use, as `inspect` describes them."""
        ...

    def status(self) -> dict[str, object]:
        """Counters and states for the page (JSON-ready)."""
        ...


def _model_labels(inspector: Inspector) -> dict[str, str]:
    package = inspector.package
    return {
        "name": package.name,
        "version": package.version,
        "device": inspector.device.device,
        "threshold": f"{inspector.postprocessor.threshold:g}",
    }


class _Descriptions:
    """`inspect`'s description of each package version, made once (it probes the host)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, object]] = {}

    def of(self, inspector: Inspector) -> dict[str, object]:
        package = inspector.package
        with self._lock:
            cached = self._cache.get(package.version)
        if cached is None:
            cached = describe_loaded(package)
            with self._lock:
                self._cache = {package.version: cached}  # only the model in use is kept
        return {
            **cached,
            "InUse": {
                "Device": inspector.device.device,
                "DeviceReason": inspector.device.reason,
                "Threshold": inspector.postprocessor.threshold,
            },
        }


class ServiceBackend:
    """A running `Service`: its counters, queue, transports, model and readiness."""

    def __init__(self, service: Service, sources: Sequence[SourceStatus] = ()) -> None:
        self.service = service
        self.sources = list(sources)
        self._descriptions = _Descriptions()

    def not_ready(self) -> list[str]:
        service = self.service
        reasons = []
        if service.stopping:
            reasons.append("the service is stopping")
        if service.reloading_model:
            reasons.append("a new model is loading")
        reasons += [
            f"transport {t.name} is not connected" for t in service.transports if not t.connected
        ]
        return reasons

    def gauges(self) -> Gauges:
        service = self.service
        spool = {
            t.name: (len(t.spool), t.spool.size_bytes)
            for t in service.transports
            if isinstance(t, _Spooling)
        }
        return Gauges(
            received=service.stats.received,
            queue_depth=service.queue_depth(),
            queue_capacity=service.queue_capacity(),
            waiting_bytes=service.waiting_bytes(),
            spool=spool,
            connected={t.name: t.connected for t in service.transports},
            ready=not self.not_ready(),
            reloading=service.reloading_model,
            models=[_model_labels(service.inspector)],
        )

    def model(self) -> dict[str, object]:
        return self._descriptions.of(self.service.inspector)

    def status(self) -> dict[str, object]:
        service = self.service
        package = service.inspector.package
        reasons = self.not_ready()
        return {
            "Counters": service.stats.snapshot(),
            "QueueDepth": service.queue_depth(),
            "QueueCapacity": service.queue_capacity(),
            "Ready": not reasons,
            "NotReady": reasons,
            "Model": {"Name": package.name, "Version": package.version},
            "Transports": [{"Name": t.name, "Connected": t.connected} for t in service.transports],
            "Sources": [entry for source in self.sources for entry in _source_statuses(source)],
        }


def _source_statuses(source: SourceStatus) -> Sequence[Mapping[str, object]]:
    try:
        return source.statuses()
    except Exception as exc:  # noqa: BLE001 - a broken source must not break the page
        return [{"Name": type(source).__name__, "State": "unknown", "Error": str(exc)}]


class AgentBackend:
    """`lfv-edge agent`: the Edge Agent's models and the verdicts of its calls.

    `models()` lists the configured models (name, status, package name and version);
    `serving()` is False before the socket listens and once it stops.
    """

    def __init__(
        self,
        models: Callable[[], Sequence[Mapping[str, str]]],
        serving: Callable[[], bool],
        feed: InspectionFeed,
    ) -> None:
        self._models = models
        self._serving = serving
        self._feed = feed
        self.stats = Stats()

    def on_verdict(self, model_component: str, call: AgentCall, inspection: Inspection) -> None:
        """The agent's `on_verdict` hook (gRPC thread): count, then hand to the feed."""
        self.stats.count_received()
        self.stats.record_reply(
            inspection.timings.total_ms,
            is_anomalous=inspection.verdict.is_anomalous,
            stages_ms=inspection.timings.to_dict(),
        )
        self._feed.observe_agent_call(model_component, call, inspection)

    def not_ready(self) -> list[str]:
        return [] if self._serving() else ["the Edge Agent socket is not serving"]

    def gauges(self) -> Gauges:
        return Gauges(
            received=self.stats.received,
            ready=self._serving(),
            models=[
                {"name": m.get("Name", ""), "version": m.get("Version", ""),
                 "component": m.get("Component", ""), "status": m.get("Status", "")}
                for m in self._models()
            ],
        )  # fmt: skip

    def model(self) -> dict[str, object]:
        return {"Models": [dict(m) for m in self._models()]}

    def status(self) -> dict[str, object]:
        reasons = self.not_ready()
        return {
            "Counters": self.stats.snapshot(),
            "Ready": not reasons,
            "NotReady": reasons,
            "Model": {"Name": "Edge Agent", "Version": f"{len(self._models())} model(s)"},
            "Transports": [{"Name": "edge-agent", "Connected": self._serving()}],
            "Sources": [],
        }


class Timeline:
    """Counters every `interval_s` for the last `size` samples: the page's chart on load."""

    def __init__(self, interval_s: float = 5.0, size: int = 360) -> None:
        self.interval_s = interval_s
        self._size = size
        self._lock = threading.Lock()
        self._samples: list[tuple[float, int, int, int]] = []

    def sample(self, counters: Mapping[str, object]) -> None:
        """Keep (time, answered, anomalous, errors) of a `Stats.snapshot()`."""
        errors = counters.get("Errors")
        point = (
            round(time.time(), 3),
            _int(counters.get("Answered")),
            _int(counters.get("Anomalous")),
            sum(_int(v) for v in errors.values()) if isinstance(errors, dict) else 0,
        )
        with self._lock:
            self._samples = [*self._samples[-(self._size - 1) :], point]

    def samples(self) -> list[tuple[float, int, int, int]]:
        """Oldest first."""
        with self._lock:
            return list(self._samples)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
