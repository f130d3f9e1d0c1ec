"""P2 (served/bare throughput through mosquitto) and P3 (added latency at half the maximum rate).

P2, per package, in one run: a bare `runner.run` loop in its own process (the model alone,
same TVM thread count) and `lfv-edge serve` answering requests published through the
benchmark's mosquitto, interleaved round by round (bare, served kind 1, served kind 2, …).
The served rate is the steady-state reply rate with `WINDOW` requests in flight (pipeline
fill excluded). Ratio = served / bare per round, median over rounds. With `web` (bench
--web), a second serve with the web view on and a page watching it (event stream,
thumbnails, /metrics every 5 s) answers the first kind in every round too.

P3, per request kind: the maximum served rate is measured again just before, then a fresh
`serve` (so its stats window holds only these requests) receives requests paced at half of
it; the figure is the service's own `AddedLatencyMs` (received → reply published, minus the
model's run time), p50/p99.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.bench.inputs import RequestKind
from lfv_edge.bench.processes import (
    BareWorker,
    BenchClient,
    Mosquitto,
    PageClient,
    ServeProcess,
    cpu_seconds,
    free_port,
)
from lfv_edge.bench.timing import Summary, paired_ratio, percentiles, summarize
from lfv_edge.errors import LfvEdgeError

WINDOW = 4  # requests in flight: keeps decode and the model busy, below the queue (8)
TARGET_RATIO = 0.95
TARGET_ADDED_P99_MS = 10.0


class ServedEndpoint:
    """A running `serve` and the client that drives it."""

    def __init__(self, serve: ServeProcess, client: BenchClient) -> None:
        self.serve = serve
        self.client = client
        self._ids = itertools.count(1)
        self.online_s = serve.wait_online(client)

    def next_id(self) -> str:
        return f"{self.serve.prefix}-{next(self._ids)}"

    def rate(self, count: int, kind: RequestKind, window: int = WINDOW) -> tuple[float, float]:
        """Steady-state replies per second with `window` in flight; CPU ms of serve per request."""
        cpu = self.serve.cpu_s()
        ids: list[str] = []

        def send() -> None:
            request_id = self.next_id()
            ids.append(request_id)
            self.client.publish(request_id, kind.payload(request_id))

        for _ in range(min(window, count)):
            send()
        replies = self.client.replies
        while len(ids) < count:
            answered = len(ids) - window + 1

            def enough(n: int = answered) -> bool:
                return sum(i in replies for i in ids) >= n

            self.client.wait(enough)
            send()
        self.client.wait_replies(ids)
        errors = [replies[i].error for i in ids if replies[i].error is not None]
        if errors:
            self.serve.fail(f"answered {len(errors)} of {len(ids)} {kind.name} with {errors[0]}")
        cpu_ms = (self.serve.cpu_s() - cpu) * 1000.0 / len(ids)
        times = sorted(replies[i].arrived for i in ids)
        # The first replies include filling the pipeline; keep at least two thirds of them.
        skip = min(window, max(len(times) // 3, 1))
        return (len(times) - skip - 1) / (times[-1] - times[skip]), cpu_ms

    def paced(self, count: int, rate_per_s: float, kind: RequestKind) -> list[float]:
        """Publish `count` requests at `rate_per_s`; client-side (reply − publish − run) in ms."""
        sent: dict[str, float] = {}
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            request_id = self.next_id()
            sent[request_id] = self.client.publish(request_id, kind.payload(request_id))
        self.client.wait_replies(list(sent))
        replies = self.client.replies
        return [
            (replies[i].arrived - t) * 1000.0 - (replies[i].run_ms or 0.0) for i, t in sent.items()
        ]

    def final_stats(self, answered: int) -> dict[str, object]:
        """The first stats snapshot that counts `answered` replies."""
        stats = self.client.stats

        def complete() -> bool:
            return bool(stats) and stats[-1].get("Answered") == answered

        self.client.wait(complete, 30.0)
        return stats[-1]

    def close(self) -> None:
        code = self.serve.stop()
        self.client.close()
        if code not in (0, None):
            msg = f"lfv-edge serve exited with {code}"
            raise LfvEdgeError(msg)


def start_endpoint(
    package: Path,
    broker: Mosquitto,
    prefix: str,
    folder: Path,
    *,
    threads: int,
    stats_interval_s: float = 0.0,
    extra_args: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
) -> ServedEndpoint:
    """A `serve` process on `broker` and a client for it, online."""
    client = BenchClient(broker.port, prefix)
    serve = ServeProcess(
        package, broker, prefix, folder, threads=threads, stats_interval_s=stats_interval_s,
        extra_args=extra_args, environment=environment,
    )  # fmt: skip
    return ServedEndpoint(serve, client)


@dataclass(frozen=True, slots=True)
class ServedFigures:
    """One request kind's P2 figures."""

    per_s: Summary
    ratio: Summary  # served / bare, per round
    cpu_ms_per_request: Summary

    def to_dict(self) -> dict[str, object]:
        return {
            "per_s": self.per_s.to_dict(),
            "ratio_to_bare": self.ratio.to_dict(3),
            "serve_cpu_ms_per_request": self.cpu_ms_per_request.to_dict(1),
            "met": self.ratio.median >= TARGET_RATIO,
        }


@dataclass(frozen=True, slots=True)
class WebFigures:
    """P2 with the web view on and a page watching, against the same serve without it."""

    kind: str
    per_s: Summary
    ratio_to_bare: Summary
    ratio_to_plain: Summary  # served with the web view ÷ served without, per round
    cpu_ms_per_request: Summary
    events: int  # inspections the page was told about
    thumbnails: int  # thumbnails the page fetched
    scrapes: int  # /metrics scrapes

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "per_s": self.per_s.to_dict(),
            "ratio_to_bare": self.ratio_to_bare.to_dict(3),
            "ratio_to_served_without_web": self.ratio_to_plain.to_dict(3),
            "serve_cpu_ms_per_request": self.cpu_ms_per_request.to_dict(1),
            "page_events": self.events,
            "page_thumbnails": self.thumbnails,
            "metrics_scrapes": self.scrapes,
        }


@dataclass(frozen=True, slots=True)
class ThroughputFigures:
    """P2 for one package."""

    label: str
    package: str
    threads: int
    rounds: int
    batch: int
    bare_run_ms: float
    bare_per_s: Summary
    bare_cpu_ms_per_run: Summary
    broker_cpu_ms_per_request: float
    served: dict[str, ServedFigures]
    web: WebFigures | None = None

    def to_dict(self) -> dict[str, object]:
        web = {"web": self.web.to_dict()} if self.web is not None else {}
        return {
            **web,
            "package": self.label,
            "package_detail": self.package,
            "tvm_threads": self.threads,
            "rounds": self.rounds,
            "requests_per_round": self.batch,
            "window": WINDOW,
            "model_run_ms_at_start": round(self.bare_run_ms, 2),
            "bare_per_s": self.bare_per_s.to_dict(),
            "bare_cpu_ms_per_run": self.bare_cpu_ms_per_run.to_dict(1),
            "broker_cpu_ms_per_request": round(self.broker_cpu_ms_per_request, 2),
            "served": {kind: figures.to_dict() for kind, figures in self.served.items()},
            "target_ratio_min": TARGET_RATIO,
        }


def measure_throughput(
    label: str,
    package: Path,
    detail: str,
    kinds: Sequence[RequestKind],
    broker: Mosquitto,
    folder: Path,
    image: Path,
    *,
    threads: int,
    rounds: int,
    batch: int,
    web: bool = False,
) -> ThroughputFigures:
    """P2: bare loop and served kinds, interleaved round by round.

    `web`: a second serve with `--http` and a page watching it (PageClient) runs the first
    kind in every round too, right after the plain one: the web view's overhead.
    """
    bare = BareWorker(package, threads, image)
    endpoint = start_endpoint(package, broker, f"p2-{label}", folder, threads=threads)
    watched: ServedEndpoint | None = None
    page: PageClient | None = None
    try:
        if web:
            port = free_port()
            watched = start_endpoint(
                package, broker, f"p2-{label}-web", folder, threads=threads,
                extra_args=("--http", f"127.0.0.1:{port}"),
            )  # fmt: skip
            page = PageClient(port)
        for kind in kinds:
            endpoint.rate(max(batch // 2, WINDOW + 2), kind)  # warm-up
        if watched is not None:
            watched.rate(max(batch // 2, WINDOW + 2), kinds[0])
        bare.rate(max(batch // 2, 1))
        bare_rates: list[float] = []
        bare_cpu: list[float] = []
        served_rates: dict[str, list[float]] = {kind.name: [] for kind in kinds}
        served_cpu: dict[str, list[float]] = {kind.name: [] for kind in kinds}
        web_rates: list[float] = []
        web_cpu: list[float] = []
        broker_cpu = cpu_seconds(broker.process.pid)
        for _ in range(rounds):
            rate, cpu = bare.rate(batch)
            bare_rates.append(rate)
            bare_cpu.append(cpu)
            for kind in kinds:
                rate, cpu = endpoint.rate(batch, kind)
                served_rates[kind.name].append(rate)
                served_cpu[kind.name].append(cpu)
            if watched is not None:
                rate, cpu = watched.rate(batch, kinds[0])
                web_rates.append(rate)
                web_cpu.append(cpu)
        requests = rounds * batch * (max(len(kinds), 1) + (1 if watched is not None else 0))
        broker_ms = (cpu_seconds(broker.process.pid) - broker_cpu) * 1000.0 / requests
    finally:
        bare.close()
        endpoint.close()
        if page is not None:
            page.close()
        if watched is not None:
            watched.close()
    web_figures = None
    if watched is not None and page is not None:
        first = kinds[0].name
        web_figures = WebFigures(
            kind=first,
            per_s=summarize(web_rates),
            ratio_to_bare=paired_ratio(web_rates, bare_rates),
            ratio_to_plain=paired_ratio(web_rates, served_rates[first]),
            cpu_ms_per_request=summarize(web_cpu),
            events=page.events,
            thumbnails=page.thumbnails,
            scrapes=page.scrapes,
        )
    return ThroughputFigures(
        web=web_figures,
        label=label,
        package=detail,
        threads=threads,
        rounds=rounds,
        batch=batch,
        bare_run_ms=bare.run_ms,
        bare_per_s=summarize(bare_rates),
        bare_cpu_ms_per_run=summarize(bare_cpu),
        broker_cpu_ms_per_request=broker_ms,
        served={
            kind.name: ServedFigures(
                per_s=summarize(served_rates[kind.name]),
                ratio=paired_ratio(served_rates[kind.name], bare_rates),
                cpu_ms_per_request=summarize(served_cpu[kind.name]),
            )
            for kind in kinds
        },
    )


@dataclass(frozen=True, slots=True)
class LatencyFigures:
    """P3 for one request kind."""

    kind: RequestKind
    rate_per_s: float
    requests: int
    stats: dict[str, object]
    client_added_ms: list[float]

    @property
    def added_p99_ms(self) -> float:
        added = self.stats.get("AddedLatencyMs")
        return float(added["p99"]) if isinstance(added, dict) else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.name,
            "input": self.kind.description,
            "rate_per_s": round(self.rate_per_s, 2),
            "requests": self.requests,
            "service_added_ms": self.stats.get("AddedLatencyMs"),
            "service_latency_ms": self.stats.get("LatencyMs"),
            "stage_ms_ewma": self.stats.get("StageMsEwma"),
            "client_added_ms": percentiles(self.client_added_ms),
            "target_p99_max_ms": TARGET_ADDED_P99_MS,
            "met": self.added_p99_ms <= TARGET_ADDED_P99_MS,
        }


def measure_latency(
    package: Path,
    kind: RequestKind,
    broker: Mosquitto,
    folder: Path,
    *,
    threads: int,
    requests: int,
    probe_batch: int,
    probe_rounds: int = 3,
) -> LatencyFigures:
    """P3: the maximum rate measured just before, then a fresh serve paced at half of it.

    Measuring the maximum right before (rather than taking P2's) keeps the pace at half of
    what the machine allows now: on a shared machine the background load moves in minutes,
    and a pace above the current maximum would measure a growing queue instead.
    """
    probe = start_endpoint(package, broker, f"p3-{kind.name}-max", folder, threads=threads)
    try:
        probe.rate(max(probe_batch // 2, WINDOW + 2), kind)  # warm-up
        batch = max(probe_batch, 4 * WINDOW)  # enough replies for a steady-state rate
        maximum = statistics.median(probe.rate(batch, kind)[0] for _ in range(probe_rounds))
    finally:
        probe.close()
    rate_per_s = maximum / 2
    endpoint = start_endpoint(
        package, broker, f"p3-{kind.name}", folder, threads=threads, stats_interval_s=1.0
    )
    try:
        endpoint.paced(3, rate_per_s, kind)
        client_ms = endpoint.paced(requests, rate_per_s, kind)
        stats = endpoint.final_stats(requests + 3)
    finally:
        endpoint.close()
    return LatencyFigures(kind, rate_per_s, requests, stats, client_ms)
