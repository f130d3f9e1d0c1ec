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


@dataclass(frozen=True, slots=True)
class PrepFigures:
    """Preparation of one request kind: one thread, and `threads` threads at once."""

    kind: str
    single_ms: Summary  # one preparation, one thread
    per_core_per_s: float
    threads: int
    parallel_per_s: float

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "single_thread_ms": self.single_ms.to_dict(),
            "per_core_per_s": round(self.per_core_per_s, 1),
            "threads": self.threads,
            "parallel_per_s": round(self.parallel_per_s, 1),
        }


def measure_preparation(
    package: Path, kind: RequestKind, *, threads: int, count: int
) -> PrepFigures:
    """The service's preparation path for `kind`, on one thread and on `threads` threads."""
    loaded = read_model_package(package)
    choice = DeviceChoice("gpu", "benchmark: preparation only")
    payload = kind.payload("prep")
    set_opencv_threads(1)

    def inspector() -> Inspector:
        return Inspector(loaded, _NoModel(), device=choice)

    def prepare(worker: Inspector, out: NDArray[np.float32]) -> None:
        request = parse_request(payload, image_roots=(), max_payload_bytes=_MAX_PAYLOAD)
        worker.prepare(request.source, out=out)

    single = inspector()
    buffer = np.empty(loaded.stage.input_shape, np.float32)
    for _ in range(3):
        prepare(single, buffer)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        prepare(single, buffer)
        times.append((time.perf_counter() - start) * 1000.0)
    per_core = 1000.0 / statistics.median(times)

    workers = [inspector() for _ in range(threads)]
    buffers = [np.empty(loaded.stage.input_shape, np.float32) for _ in range(threads)]
    each = max(count // 2, 4)
    barrier = threading.Barrier(threads + 1)

    def loop(worker: Inspector, out: NDArray[np.float32]) -> None:
        prepare(worker, out)  # warm: this thread's first call
        barrier.wait()
        for _ in range(each):
            prepare(worker, out)

    pool = [
        threading.Thread(target=loop, args=(w, b), daemon=True)
        for w, b in zip(workers, buffers, strict=True)
    ]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    parallel = threads * each / (time.perf_counter() - start)
    return PrepFigures(kind.name, summarize(times), per_core, threads, parallel)


@dataclass(frozen=True, slots=True)
class GpuServedFigures:
    """One request kind served on the GPU."""

    per_s: Summary
    ratio_to_bare: Summary
    capacity_per_s: float  # min(bare GPU loop, preparation on all threads)
    ratio_to_capacity: float
    cpu_ms_per_request: Summary
    inprocess_per_s: Summary
    inprocess_cpu_ms_per_request: Summary

    def to_dict(self) -> dict[str, object]:
        return {
            "per_s": self.per_s.to_dict(),
            "ratio_to_bare": self.ratio_to_bare.to_dict(3),
            "capacity_per_s": round(self.capacity_per_s, 1),
            "ratio_to_capacity": round(self.ratio_to_capacity, 3),
            "serve_cpu_ms_per_request": self.cpu_ms_per_request.to_dict(1),
            "met": self.ratio_to_capacity >= TARGET_RATIO,
            "in_process": {
                "per_s": self.inprocess_per_s.to_dict(),
                "ratio_to_capacity": round(self.inprocess_per_s.median / self.capacity_per_s, 3),
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
    """Figure G: model time CPU vs GPU, preparation capacity, served vs bare on the GPU."""
    cpu = BareWorker(cpu_package, threads, image, device="cpu")
    try:
        cpu.rate(max(batch // 4, 2))
        cpu_run_ms = 1000.0 / statistics.median(cpu.rate(max(batch // 2, 4))[0] for _ in range(3))
    finally:
        cpu.close()
    cores = usable_cpus()
    preparation = {
        kind.name: measure_preparation(gpu_package, kind, threads=cores, count=prep_count)
        for kind in kinds
    }
    bare = BareWorker(gpu_package, threads, image, device="gpu")
    queue_size = max(64, 2 * window)
    args = ("--device", "gpu", "--queue-size", str(queue_size),
            "--prepare-workers", str(prepare_workers), *serve_args)  # fmt: skip
    endpoint = start_endpoint(gpu_package, broker, f"g-{label}", folder, threads=threads,
                              extra_args=args)  # fmt: skip
    try:
        for kind in kinds:
            endpoint.rate(max(batch // 2, window + 2), kind, window=window)  # warm-up
        bare.rate(max(batch, 8))
        bare_rates: list[float] = []
        served: dict[str, list[float]] = {kind.name: [] for kind in kinds}
        cpu_ms: dict[str, list[float]] = {kind.name: [] for kind in kinds}
        for _ in range(rounds):
            bare_rates.append(bare.rate(batch * 4)[0])  # many short runs: a longer batch
            for kind in kinds:
                rate, spent = endpoint.rate(batch, kind, window=window)
                served[kind.name].append(rate)
                cpu_ms[kind.name].append(spent)
    finally:
        bare.close()
        endpoint.close()
    side = loaded_side(gpu_package)
    core = InProcessService(gpu_package, "gpu", prepare_workers, queue_size, side)
    inprocess: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    inprocess_cpu: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    try:
        for kind in kinds:
            core.rate(kind.name, max(batch // 2, window + 2), window)  # warm-up
        for _ in range(rounds):
            for kind in kinds:
                rate, spent = core.rate(kind.name, batch, window)
                inprocess[kind.name].append(rate)
                inprocess_cpu[kind.name].append(spent)
    finally:
        core.close()
    bare_summary = summarize(bare_rates)
    figures: dict[str, GpuServedFigures] = {}
    for kind in kinds:
        capacity = min(bare_summary.median, preparation[kind.name].parallel_per_s)
        rates = summarize(served[kind.name])
        figures[kind.name] = GpuServedFigures(
            per_s=rates,
            ratio_to_bare=paired_ratio(served[kind.name], bare_rates),
            capacity_per_s=capacity,
            ratio_to_capacity=rates.median / capacity,
            cpu_ms_per_request=summarize(cpu_ms[kind.name]),
            inprocess_per_s=summarize(inprocess[kind.name]),
            inprocess_cpu_ms_per_request=summarize(inprocess_cpu[kind.name]),
        )
    return GpuFigures(
        label=label, cpu_run_ms=cpu_run_ms, cpu_threads=threads,
        gpu_run_ms=1000.0 / bare_summary.median,
        bare_gpu_per_s=bare_summary, preparation=preparation, served=figures, window=window,
        prepare_workers=prepare_workers, serve_args=tuple(serve_args), rounds=rounds, batch=batch,
    )  # fmt: skip
