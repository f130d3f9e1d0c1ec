"""`lfv-edge bench`: the performance figures of docs/performance.md, measured side by side.

Owns the benchmark suite: P1 pre-processing (ours vs the straightforward float64 reference
and vs the unavoidable floor), P2 throughput through a local mosquitto (`lfv-edge serve` vs a
bare `model.run` loop), P3 added latency at half the maximum rate, P4 memory of `serve`
(steady state, after 10,000 requests, a 10,000-message burst) and P5 cold start (process
start → first reply published). Every time is a ratio of things measured in the same run,
interleaved (A B A B …), with medians over repetitions after a warm-up, because the machines
are shared and absolute times drift.

    suite.py          options, the order of the figures, the JSON report
    preprocessing.py  P1 (in this process)
    throughput.py     P2 and P3
    footprint.py      P4 and P5
    processes.py      mosquitto, `lfv-edge serve`, the bare model worker, the MQTT client
    inputs.py         the photo-like JPEG, model-size frames, request payloads, packages
    timing.py         interleaved repetitions and their summaries
    machine.py        cores, CPU model, load average
    report.py         the printed table

Not imported by the service: a benchmark, nothing here runs in production. It starts its own
broker and service processes; it asserts no timing (targets are reported, not enforced).
"""

from __future__ import annotations

from lfv_edge.bench.suite import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
