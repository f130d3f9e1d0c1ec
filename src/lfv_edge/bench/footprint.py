"""P4 (memory of `serve`) and P5 (cold start: process start → first reply published).

P4: RSS of a `serve` process after it came online, at steady state (after a warm-up), every
1,000 requests up to 10,000, and its peak (VmHWM). Then, in a fresh process, the peak during
a burst: 10,000 requests published as fast as the broker takes them; the service answers
what its queue cannot hold with `Busy`, by design.

P5: a persistent session holds one request while `serve` is down; the clock starts just
before the process is spawned and stops when the reply reaches the benchmark's client (so it
includes interpreter start, imports, model load, connect, the request and the reply's trip
through the broker). Interleaved with a baseline process that only starts Python and imports
numpy, OpenCV and paho, to show how much of it is unavoidable.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lfv_edge.bench.inputs import RequestKind
from lfv_edge.bench.processes import BenchClient, Mosquitto, ServeProcess, proc_status_kb
from lfv_edge.bench.throughput import WINDOW, ServedEndpoint, start_endpoint
from lfv_edge.bench.timing import Summary, paired_ratio, summarize
from lfv_edge.errors import LfvEdgeError

TARGET_RSS_MB = 300.0
TARGET_COLD_START_S = 2.0
BASELINE_IMPORTS = "import numpy, cv2, paho.mqtt.client"


def _mb(kb: int) -> float:
    return round(kb / 1024.0, 1)


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """P4."""

    package: str
    requests: int
    warmup: int
    online_kb: int
    steady_kb: int
    samples: list[tuple[int, int]]  # (requests answered, VmRSS kB)
    after_kb: int
    peak_kb: int
    burst: dict[str, object] = field(default_factory=dict)

    @property
    def growth_mb_per_1000(self) -> float:
        """Least-squares slope of RSS over requests after steady state, MB per 1,000 requests."""
        if len(self.samples) < 2:
            return 0.0
        x = np.array([n for n, _ in self.samples], dtype=np.float64)
        y = np.array([kb for _, kb in self.samples], dtype=np.float64) / 1024.0
        slope = float(np.polyfit(x, y, 1)[0])
        return round(slope * 1000.0, 3)

    def to_dict(self) -> dict[str, object]:
        rss = [kb for _, kb in self.samples]
        return {
            "package": self.package,
            "requests": self.requests,
            "warmup_requests": self.warmup,
            "rss_online_mb": _mb(self.online_kb),
            "rss_steady_mb": _mb(self.steady_kb),
            "rss_after_mb": _mb(self.after_kb),
            "growth_mb": round((self.after_kb - self.steady_kb) / 1024.0, 1),
            "growth_mb_per_1000_requests": self.growth_mb_per_1000,
            "rss_samples_mb": [[n, _mb(kb)] for n, kb in self.samples],
            "rss_sample_spread_mb": round((max(rss) - min(rss)) / 1024.0, 1) if rss else None,
            "peak_rss_mb": _mb(self.peak_kb),
            "burst": self.burst,
            "target_rss_max_mb": TARGET_RSS_MB,
            "met": max(self.after_kb, self.steady_kb) / 1024.0 <= TARGET_RSS_MB,
        }


def _drive(endpoint: ServedEndpoint, kind: RequestKind, count: int) -> None:
    """`count` requests with WINDOW in flight, as fast as the service answers."""
    ids: list[str] = []
    replies = endpoint.client.replies
    for n in range(count):
        if n >= WINDOW:
            waited = ids[n - WINDOW]

            def answered(r: str = waited) -> bool:
                return r in replies

            endpoint.client.wait(answered)
        request_id = endpoint.next_id()
        ids.append(request_id)
        endpoint.client.publish(request_id, kind.payload(request_id))
    endpoint.client.wait_replies(ids)
    errors = [replies[i].error for i in ids if replies[i].error]
    if errors:
        endpoint.serve.fail(f"answered {len(errors)} of {count} requests with {errors[0]}")


def measure_memory(
    package: Path,
    label: str,
    kind: RequestKind,
    broker: Mosquitto,
    folder: Path,
    *,
    threads: int,
    requests: int,
    warmup: int,
    burst: int,
) -> MemoryFigures:
    """P4: steady state, growth over `requests`, then a `burst` in a fresh process."""
    endpoint = start_endpoint(package, broker, "p4-steady", folder, threads=threads)
    try:
        online_kb = endpoint.serve.rss_kb()
        _drive(endpoint, kind, warmup)
        steady_kb = endpoint.serve.rss_kb()
        samples = [(0, steady_kb)]
        step = max(requests // 10, 1)
        done = 0
        while done < requests:
            count = min(step, requests - done)
            _drive(endpoint, kind, count)
            done += count
            samples.append((done, endpoint.serve.rss_kb()))
        after_kb = endpoint.serve.rss_kb()
        peak_kb = endpoint.serve.peak_rss_kb()
    finally:
        endpoint.close()
    return MemoryFigures(
        package=label,
        requests=requests,
        warmup=warmup,
        online_kb=online_kb,
        steady_kb=steady_kb,
        samples=samples,
        after_kb=after_kb,
        peak_kb=peak_kb,
        burst=measure_burst(package, kind, broker, folder, threads=threads, count=burst),
    )


def measure_burst(
    package: Path,
    kind: RequestKind,
    broker: Mosquitto,
    folder: Path,
    *,
    threads: int,
    count: int,
) -> dict[str, object]:
    """Peak RSS while `count` requests arrive at once (sampled every 10 ms, and VmHWM)."""
    endpoint = start_endpoint(package, broker, "p4-burst", folder, threads=threads)
    highest = [0]
    stop = threading.Event()
    pid = endpoint.serve.pid

    def sample() -> None:
        while not stop.wait(0.01):
            highest[0] = max(highest[0], proc_status_kb(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    try:
        before_kb = endpoint.serve.rss_kb()
        sampler.start()
        start = time.perf_counter()
        ids = []
        for _ in range(count):
            request_id = endpoint.next_id()
            ids.append(request_id)
            endpoint.client.publish(request_id, kind.payload(request_id))
        published_s = time.perf_counter() - start
        endpoint.client.wait_replies(ids)
        answered_s = time.perf_counter() - start
        stop.set()
        sampler.join()
        peak_kb = endpoint.serve.peak_rss_kb()
        after_kb = endpoint.serve.rss_kb()
    finally:
        stop.set()
        endpoint.close()
    replies = endpoint.client.replies
    busy = sum(1 for i in ids if replies[i].error == "Busy")
    other = sum(1 for i in ids if replies[i].error not in (None, "Busy"))
    return {
        "requests": count,
        "request_bytes": len(kind.payload(ids[0])) if ids else 0,
        "published_in_s": round(published_s, 2),
        "all_answered_in_s": round(answered_s, 2),
        "verdicts": count - busy - other,
        "busy": busy,
        "other_errors": other,
        "rss_before_mb": _mb(before_kb),
        "rss_sampled_max_mb": _mb(highest[0]),
        "rss_after_mb": _mb(after_kb),
        "peak_rss_mb": _mb(peak_kb),
    }


@dataclass(frozen=True, slots=True)
class ColdStartFigures:
    """P5."""

    package: str
    first_reply_s: Summary
    online_s: Summary
    baseline_s: Summary
    ratio_to_baseline: Summary

    def to_dict(self) -> dict[str, object]:
        return {
            "package": self.package,
            "first_reply_s": self.first_reply_s.to_dict(3),
            "online_s": self.online_s.to_dict(3),
            "baseline": f"python -c '{BASELINE_IMPORTS}'",
            "baseline_s": self.baseline_s.to_dict(3),
            "first_reply_to_baseline": self.ratio_to_baseline.to_dict(2),
            "target_max_s": TARGET_COLD_START_S,
            "met": self.first_reply_s.median <= TARGET_COLD_START_S,
        }


def _baseline_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", BASELINE_IMPORTS], check=True)
    return time.perf_counter() - start


def measure_cold_start(
    package: Path,
    label: str,
    kind: RequestKind,
    broker: Mosquitto,
    folder: Path,
    *,
    threads: int,
    repetitions: int,
    warmup: int,
) -> ColdStartFigures:
    """P5: `repetitions` cold starts with a request waiting, interleaved with the baseline."""
    prefix, client_id = "p5", "p5-svc"
    client = BenchClient(broker.port, prefix)
    first: list[float] = []
    online: list[float] = []
    baseline: list[float] = []
    try:
        # Create the persistent session (and its subscription) once.
        priming = ServeProcess(
            package, broker, prefix, folder, threads=threads, client_id=client_id
        )
        priming.wait_online(client)
        priming.stop()
        for rep in range(warmup + repetitions):
            request_id = f"p5-{rep}"
            with client.changed:
                client.status.clear()
            client.publish(request_id, kind.payload(request_id))
            serve = ServeProcess(
                package, broker, prefix, folder, threads=threads, client_id=client_id
            )

            def answered(r: str = request_id) -> bool:
                return r in client.replies

            try:
                client.wait(answered, 60.0)
            except LfvEdgeError:
                serve.fail("did not answer the waiting request")
            reply = client.replies[request_id]
            if reply.error is not None:
                serve.fail(f"answered the waiting request with {reply.error}")
            online_s = serve.wait_online(client)
            if serve.stop() not in (0, None):
                serve.fail("did not exit cleanly")
            base = _baseline_s()
            if rep >= warmup:
                first.append(reply.arrived - serve.started_at)
                online.append(online_s)
                baseline.append(base)
    finally:
        client.close()
    return ColdStartFigures(
        package=label,
        first_reply_s=summarize(first),
        online_s=summarize(online),
        baseline_s=summarize(baseline),
        ratio_to_baseline=paired_ratio(first, baseline),
    )
