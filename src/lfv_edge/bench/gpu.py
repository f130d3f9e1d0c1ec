"""G: serving a GPU package: the model alone on the GPU, preparation capacity, served throughput.

On a GPU the model takes a millisecond or two, so decoding, resizing and normalising the next
images becomes the bottleneck. Per builder network (both the CPU and the GPU package are
built here: the GPU one needs nvcc and a CUDA build of libdlr.so):

* model time, CPU vs GPU, same host: bare `runner.run` loops of the CPU package (TVM on all
  usable CPUs) and of the GPU package, each in its own process;
* preparation capacity per request kind: the service's own path (`parse_request` →
  `Inspector.prepare` into a reused tensor) on 1 thread (the per-core rate) and on N threads
  at once (N = usable CPUs; one inspector each, OpenCV single-threaded per call; the GIL and
  memory bandwidth are what keep N threads from N × the per-core rate);
* served: `lfv-edge serve --device gpu --prepare-workers W` through the benchmark's mosquitto
  with `window` requests in flight, interleaved round by round with the bare GPU loop;
* served in-process: the same service core behind the memory transport (no broker, no MQTT
  client), which separates what the core sustains from what moving the payloads costs.

Figure: served ÷ min(bare GPU loop, N-thread preparation capacity); target ≥ 0.9.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.bench.inputs import RequestKind
from lfv_edge.bench.processes import BareWorker, InProcessService, Mosquitto
from lfv_edge.bench.throughput import start_endpoint
from lfv_edge.bench.timing import Summary, paired_ratio, summarize
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.inspection.preprocess import set_opencv_threads
from lfv_edge.model.device import DeviceChoice
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import usable_cpus
from lfv_edge.service.messages import parse_request

TARGET_RATIO = 0.9
_MAX_PAYLOAD = 64 << 20


class _NoModel:
    """Preparation needs no model: a runner that must never be called."""

    def run(self, tensor: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        msg = "the preparation benchmark never runs the model"
        raise AssertionError(msg)


class Preparation:
    """The service's preparation path for one request kind, on one thread or on many at once."""

    def __init__(self, package: Path, kind: RequestKind, threads: int) -> None:
        loaded = read_model_package(package)
        choice = DeviceChoice("gpu", "benchmark: preparation only")
        set_opencv_threads(1)  # as in serve: one OpenCV thread per call, workers in parallel
        self.kind = kind
        self.threads = threads
        self._payload = kind.payload("prep")
        self._workers = [Inspector(loaded, _NoModel(), device=choice) for _ in range(threads)]
        self._buffers = [np.empty(loaded.stage.input_shape, np.float32) for _ in range(threads)]
        for worker, buffer in zip(self._workers, self._buffers, strict=True):
            self._prepare(worker, buffer)  # warm each inspector once

    def _prepare(self, worker: Inspector, out: NDArray[np.float32]) -> None:
        request = parse_request(self._payload, image_roots=(), max_payload_bytes=_MAX_PAYLOAD)
        worker.prepare(request.source, out=out)

    def single_ms(self, count: int) -> list[float]:
        """`count` preparations one after another on this thread, ms each."""
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self._prepare(self._workers[0], self._buffers[0])
            times.append((time.perf_counter() - start) * 1000.0)
        return times

    def parallel_per_s(self, each: int) -> float:
        """Preparations per second with every thread preparing `each` requests at once."""
        barrier = threading.Barrier(self.threads + 1)

        def loop(worker: Inspector, out: NDArray[np.float32]) -> None:
            barrier.wait()
            for _ in range(each):
                self._prepare(worker, out)

        pool = [
            threading.Thread(target=loop, args=pair, daemon=True)
            for pair in zip(self._workers, self._buffers, strict=True)
        ]
        for thread in pool:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in pool:
            thread.join()
        return self.threads * each / (time.perf_counter() - start)


@dataclass(frozen=True, slots=True)
class PrepFigures:
    """Preparation of one request kind: one thread, and `threads` threads at once."""

    kind: str
    single_ms: Summary  # one preparation, one thread
    threads: int
    parallel_per_s: Summary  # per round, interleaved with the served rounds

    @property
    def per_core_per_s(self) -> float:
        return 1000.0 / self.single_ms.median

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "single_thread_ms": self.single_ms.to_dict(),
            "per_core_per_s": round(self.per_core_per_s, 1),
            "threads": self.threads,
            "parallel_per_s": self.parallel_per_s.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class GpuServedFigures:
    """One request kind served on the GPU."""

    per_s: Summary
    ratio_to_bare: Summary
    capacity_per_s: Summary  # min(bare GPU loop, preparation on all threads), per round
    ratio_to_capacity: Summary  # per round: served / that round's capacity
    cpu_ms_per_request: Summary
    inprocess_per_s: Summary
    inprocess_ratio_to_capacity: Summary
    inprocess_cpu_ms_per_request: Summary

    def to_dict(self) -> dict[str, object]:
        return {
            "per_s": self.per_s.to_dict(),
            "ratio_to_bare": self.ratio_to_bare.to_dict(3),
            "capacity_per_s": self.capacity_per_s.to_dict(),
            "ratio_to_capacity": self.ratio_to_capacity.to_dict(3),
            "serve_cpu_ms_per_request": self.cpu_ms_per_request.to_dict(1),
            "met": self.ratio_to_capacity.median >= TARGET_RATIO,
            "in_process": {
                "per_s": self.inprocess_per_s.to_dict(),
                "ratio_to_capacity": self.inprocess_ratio_to_capacity.to_dict(3),
                "cpu_ms_per_request": self.inprocess_cpu_ms_per_request.to_dict(1),
            },
        }


@dataclass(frozen=True, slots=True)
class GpuFigures:
    """Figure G for one network."""

    label: str
    cpu_run_ms: float
    cpu_threads: int
    gpu_run_ms: float
    bare_gpu_per_s: Summary
    preparation: dict[str, PrepFigures]
    served: dict[str, GpuServedFigures]
    window: int
    prepare_workers: int
    serve_args: tuple[str, ...]
    rounds: int
    batch: int

    def to_dict(self) -> dict[str, object]:
        return {
            "package": self.label,
            "model_run_ms": {
                "cpu": round(self.cpu_run_ms, 3),
                "cpu_tvm_threads": self.cpu_threads,
                "gpu": round(self.gpu_run_ms, 3),
                "cpu_over_gpu": round(self.cpu_run_ms / self.gpu_run_ms, 1),
            },
            "bare_gpu_per_s": self.bare_gpu_per_s.to_dict(),
            "preparation": {k: v.to_dict() for k, v in self.preparation.items()},
            "served": {k: v.to_dict() for k, v in self.served.items()},
            "window": self.window,
            "prepare_workers": self.prepare_workers,
            "serve_args": list(self.serve_args),
            "rounds": self.rounds,
            "requests_per_round": self.batch,
            "target_ratio_min": TARGET_RATIO,
        }


def loaded_side(package: Path) -> int:
    """The model input's width (the model-size frames of the in-process service)."""
    return int(read_model_package(package).stage.input_shape[3])


def measure_gpu(
    label: str,
    cpu_package: Path,
    gpu_package: Path,
    kinds: Sequence[RequestKind],
    broker: Mosquitto,
    folder: Path,
    image: Path,
    *,
    threads: int,
    rounds: int,
    batch: int,
    window: int,
    prep_count: int,
    prepare_workers: int,
    serve_args: Sequence[str] = (),
) -> GpuFigures:
    """Figure G: model time CPU vs GPU, then round by round: the bare GPU loop, preparation
    on all cores, served through MQTT and served in-process, per request kind."""
    cpu = BareWorker(cpu_package, threads, image, device="cpu")
    try:
        cpu.rate(max(batch // 4, 2))
        cpu_run_ms = 1000.0 / statistics.median(cpu.rate(max(batch // 2, 4))[0] for _ in range(3))
    finally:
        cpu.close()
    cores = usable_cpus()
    preparations = {kind.name: Preparation(gpu_package, kind, cores) for kind in kinds}
    single = {name: prep.single_ms(prep_count) for name, prep in preparations.items()}
    each = max(batch // cores, 2)
    names = [kind.name for kind in kinds]
    bare_rates: list[float] = []
    series: dict[str, dict[str, list[float]]] = {
        what: {name: [] for name in names}
        for what in ("prep", "served", "cpu", "inproc", "inproc_cpu")
    }
    queue_size = max(64, 2 * window)
    args = ("--device", "gpu", "--queue-size", str(queue_size),
            "--prepare-workers", str(prepare_workers), *serve_args)  # fmt: skip
    bare = BareWorker(gpu_package, threads, image, device="gpu")
    endpoint = start_endpoint(gpu_package, broker, f"g-{label}", folder, threads=threads,
                              extra_args=args)  # fmt: skip
    core = InProcessService(
        gpu_package, "gpu", prepare_workers, queue_size, loaded_side(gpu_package)
    )
    try:
        bare.rate(max(batch, 8))  # warm-up
        for kind in kinds:
            endpoint.rate(max(batch // 2, window + 2), kind, window=window)
            core.rate(kind.name, max(batch // 2, window + 2), window)
        for _ in range(rounds):
            bare_rates.append(bare.rate(batch * 4)[0])  # many short runs: a longer batch
            for kind in kinds:
                series["prep"][kind.name].append(preparations[kind.name].parallel_per_s(each))
                rate, spent = endpoint.rate(batch, kind, window=window)
                series["served"][kind.name].append(rate)
                series["cpu"][kind.name].append(spent)
                rate, spent = core.rate(kind.name, batch, window)
                series["inproc"][kind.name].append(rate)
                series["inproc_cpu"][kind.name].append(spent)
    finally:
        bare.close()
        endpoint.close()
        core.close()
    preparation = {
        name: PrepFigures(name, summarize(single[name]), cores, summarize(series["prep"][name]))
        for name in names
    }
    figures: dict[str, GpuServedFigures] = {}
    for name in names:
        capacity = [min(b, p) for b, p in zip(bare_rates, series["prep"][name], strict=True)]
        figures[name] = GpuServedFigures(
            per_s=summarize(series["served"][name]),
            ratio_to_bare=paired_ratio(series["served"][name], bare_rates),
            capacity_per_s=summarize(capacity),
            ratio_to_capacity=paired_ratio(series["served"][name], capacity),
            cpu_ms_per_request=summarize(series["cpu"][name]),
            inprocess_per_s=summarize(series["inproc"][name]),
            inprocess_ratio_to_capacity=paired_ratio(series["inproc"][name], capacity),
            inprocess_cpu_ms_per_request=summarize(series["inproc_cpu"][name]),
        )
    bare_summary = summarize(bare_rates)
    return GpuFigures(
        label=label, cpu_run_ms=cpu_run_ms, cpu_threads=threads,
        gpu_run_ms=1000.0 / bare_summary.median,
        bare_gpu_per_s=bare_summary, preparation=preparation, served=figures, window=window,
        prepare_workers=prepare_workers, serve_args=tuple(serve_args), rounds=rounds, batch=batch,
    )  # fmt: skip
