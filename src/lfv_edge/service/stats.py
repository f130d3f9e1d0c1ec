"""Service counters and latencies behind one lock; `snapshot()` is what the stats topic carries.

Latency percentiles come from a window of the last 2,048 replies (enough for a stable p99,
small enough to follow load changes); stage times are EWMAs with Frigate's weighting
(avg = 0.9 · avg + 0.1 · sample).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping

import numpy as np

_WINDOW = 2048


def _ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous * 0.9 + sample * 0.1


class Stats:
    """Counters of one service process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.received = 0
        self.answered = 0
        self.anomalous = 0
        self.normal = 0
        self.publish_failures = 0
        self.errors: Counter[str] = Counter()
        self._latency_ms: deque[float] = deque(maxlen=_WINDOW)
        self._added_ms: deque[float] = deque(maxlen=_WINDOW)
        self._stages: dict[str, float] = {}

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count_error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def count_publish_failure(self) -> None:
        with self._lock:
            self.publish_failures += 1

    def record_reply(
        self,
        latency_ms: float,
        *,
        is_anomalous: bool | None = None,
        stages_ms: Mapping[str, float] | None = None,
    ) -> None:
        """One reply published; `is_anomalous` is None for error replies."""
        with self._lock:
            self.answered += 1
            self._latency_ms.append(latency_ms)
            if is_anomalous is True:
                self.anomalous += 1
            elif is_anomalous is False:
                self.normal += 1
            if stages_ms:
                for stage, value in stages_ms.items():
                    self._stages[stage] = _ewma(self._stages.get(stage), value)
                run = stages_ms.get("run")
                if run is not None:
                    self._added_ms.append(max(latency_ms - run, 0.0))

    def snapshot(self, **extra: object) -> dict[str, object]:
        """A JSON-ready copy of every counter, with latency percentiles in ms."""
        with self._lock:
            latency = np.array(self._latency_ms, dtype=np.float64)
            added = np.array(self._added_ms, dtype=np.float64)
            body: dict[str, object] = {
                "UptimeS": round(time.time() - self.started_at, 1),
                "Received": self.received,
                "Answered": self.answered,
                "Anomalous": self.anomalous,
                "Normal": self.normal,
                "Errors": dict(self.errors),
                "PublishFailures": self.publish_failures,
                "LatencyMs": _percentiles(latency),
                "AddedLatencyMs": _percentiles(added),
                "StageMsEwma": {k: round(v, 2) for k, v in self._stages.items()},
            }
        body.update(extra)
        return body


def _percentiles(samples: np.ndarray) -> dict[str, float] | None:
    if samples.size == 0:
        return None
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(samples.max()), 2), "count": int(samples.size)}  # fmt: skip


class RateLimitedLog:
    """Lets a repeated warning through at most once per `interval_s`, counting the rest."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def ready(self) -> int | None:
        """None to stay quiet; else how many occurrences were suppressed since the last one."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval_s:
                self._suppressed += 1
                return None
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed
