"""Interleaved repetitions (A B C, A B C, …) and robust summaries of what they measured.

Interleaving puts every case under the same background load within each repetition, so the
ratio of two cases is stable even when the machine's speed drifts; each repetition's ratio
is taken first and the median of those ratios reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread of one case's samples."""

    median: float
    p10: float
    p90: float
    count: int

    def to_dict(self, digits: int = 2) -> dict[str, float | int]:
        return {
            "median": round(self.median, digits),
            "p10": round(self.p10, digits),
            "p90": round(self.p90, digits),
            "count": self.count,
        }


def summarize(samples: Sequence[float]) -> Summary:
    """Median, 10th and 90th percentile (NaN for no samples)."""
    if not samples:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    p10, p90 = np.percentile(np.asarray(samples, dtype=np.float64), [10, 90])
    return Summary(statistics.median(samples), float(p10), float(p90), len(samples))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Summary:
    """The median (and spread) of per-repetition ratios `numerator[i] / denominator[i]`."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]
    return summarize(ratios)


def interleaved_ms(
    cases: Mapping[str, Callable[[], object]], *, repetitions: int, warmup: int
) -> dict[str, list[float]]:
    """Run every case once per repetition, in turn; milliseconds per call, warm-up dropped.

    The starting case rotates from one repetition to the next, so no case always runs
    right after the same other one (cache and frequency effects).
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + repetitions):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            call = cases[name]
            start = time.perf_counter()
            call()
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if rep >= warmup:
                samples[name].append(elapsed_ms)
    return samples


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """`{"p50": …, "p90": …, "p99": …}` rounded to 0.01 (empty for no values)."""
    if not values:
        return {}
    found = np.percentile(np.asarray(values, dtype=np.float64), list(points))
    return {f"p{p}": round(float(v), 2) for p, v in zip(points, found, strict=True)}
