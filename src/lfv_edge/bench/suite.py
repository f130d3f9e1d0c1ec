"""The benchmark suite: which figures, in which order, with which packages; the JSON report.

Packages: P2/P3 use builder packages with a 1000×1000 input (docs/performance.md: "a 1000×1000
input whose model takes tens of milliseconds"): the "reference" network (conv 3×3 3→8 at full
resolution; memory-bound like a real LFV backbone's first layers, ~45 ms on one core) is the
headline, the lighter "bench" network (~20 ms, cheaper than decoding and pre-processing a
1080p JPEG) shows where a small model leaves the service CPU-bound. P4/P5 use the committed
demo package when this source tree has it, else a builder segmentation package (256×256,
mask + score heads, the demo package's shape), and say which. G (only when asked for, on a
machine with an NVIDIA GPU, nvcc and a CUDA build of libdlr.so) builds the CPU and GPU
packages of `gpu_networks` and measures them (gpu.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfv_edge.bench import footprint, gpu, preprocessing, throughput
from lfv_edge.bench.capture import CaptureOptions, measure_capture
from lfv_edge.bench.inputs import (
    FULL_HD,
    RequestKind,
    build_package,
    demo_package,
    encode_jpeg,
    frame_request,
    jpeg_request,
    photo_rgb,
    source_tree,
)
from lfv_edge.bench.machine import describe_machine, load_average
from lfv_edge.bench.processes import Mosquitto
from lfv_edge.errors import LfvEdgeError
from lfv_edge.model.runner import usable_cpus
from lfv_edge.modelbuild.package import NetworkChoice

logger = logging.getLogger(__name__)

FIGURES = ("p1", "p2", "p3", "p4", "p5", "c1", "c2", "c3", "c4")
CAPTURE_FIGURES = ("c1", "c2", "c3", "c4")
OPTIONAL_FIGURES = ("gpu",)  # run only when named: needs a GPU


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run and how long; `quick()` is the smoke-test size."""

    figures: tuple[str, ...] = FIGURES
    threads: int = 1
    p1_repetitions: int = 30
    p1_warmup: int = 3
    p2_networks: tuple[NetworkChoice, ...] = ("reference", "bench")
    p2_rounds: int = 20
    p2_batch: int = 24
    p2_all_kinds: bool = True  # model-size kinds too (first network only)
    p2_web: bool = False  # also serve with the web view on and a page watching (bench --web)
    p3_kinds: tuple[str, ...] = ("jpeg1080", "jpeg1000", "frame1000")
    p3_requests: int = 200
    p3_probe_rounds: int = 3
    p4_requests: int = 10_000
    p4_warmup: int = 200
    p4_burst: int = 10_000
    p5_repetitions: int = 20
    p5_warmup: int = 1
    capture: CaptureOptions = field(default_factory=CaptureOptions)  # C1–C4
    model: Path | None = None  # P4/P5 and C1–C4 package; default: the demo package or a builder one
    keep: Path | None = None  # keep the work folder (packages, logs) here
    gpu_libdlr: Path | None = None  # G: the CUDA build of libdlr.so for the GPU packages
    gpu_networks: tuple[NetworkChoice, ...] = ("reference",)
    gpu_size: int = 1000
    gpu_rounds: int = 8
    gpu_batch: int = 64
    gpu_window: int = 16
    gpu_prep_count: int = 40
    gpu_prepare_workers: int | None = None  # serve's --prepare-workers; default: usable CPUs − 1
    serve_args: tuple[str, ...] = ()  # extra `lfv-edge serve` arguments for G

    @classmethod
    def quick(cls, threads: int, **changes: Any) -> BenchOptions:  # noqa: ANN401 - dataclass fields
        """A few seconds per figure: proves the suite runs, measures nothing reliably."""
        values: dict[str, Any] = {
            "threads": threads,
            "p1_repetitions": 3,
            "p1_warmup": 1,
            "p2_networks": ("bench",),
            "p2_rounds": 2,
            "p2_batch": 8,
            "p2_all_kinds": False,
            "p3_kinds": ("frame1000",),
            "p3_requests": 4,
            "p3_probe_rounds": 1,
            "p4_requests": 20,
            "p4_warmup": 4,
            "p4_burst": 40,
            "p5_repetitions": 1,
            "p5_warmup": 0,
            "gpu_rounds": 1,
            "gpu_batch": 12,
            "gpu_window": 6,
            "gpu_prep_count": 6,
            "capture": CaptureOptions.quick(),
        }
        values.update(changes)
        return cls(**values)


def _kinds(work: Path) -> tuple[RequestKind, RequestKind, RequestKind, Path]:
    full = encode_jpeg(photo_rgb(FULL_HD))
    image = work / "frame-1080p.jpg"
    image.write_bytes(full)
    model_size = photo_rgb((1000, 1000), seed=12)
    return (
        jpeg_request("jpeg1080", "1920×1080 JPEG q90 Body", full),
        jpeg_request("jpeg1000", "1000×1000 JPEG q90 Body (model size)", encode_jpeg(model_size)),
        frame_request("frame1000", "1000×1000 rgb8 Frame (model size)", model_size),
        image,
    )


def run_bench(
    options: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the selected figures; returns the JSON-ready report."""
    machine = describe_machine()
    report: dict[str, Any] = {
        "machine": machine.to_dict(),
        "options": {
            "figures": list(options.figures),
            "tvm_threads": options.threads,
            "p1_repetitions": options.p1_repetitions,
            "p2_networks": list(options.p2_networks),
            "p2_rounds": options.p2_rounds,
            "p2_batch": options.p2_batch,
            "p2_web": options.p2_web,
            "p3_requests": options.p3_requests,
            "p4_requests": options.p4_requests,
            "p4_burst": options.p4_burst,
            "p5_repetitions": options.p5_repetitions,
            "gpu_networks": list(options.gpu_networks),
            "gpu_rounds": options.gpu_rounds,
            "gpu_batch": options.gpu_batch,
            "gpu_window": options.gpu_window,
            "serve_args": list(options.serve_args),
            "gpu_prepare_workers": options.gpu_prepare_workers,
            "c1_triggers": options.capture.triggers,
            "c3_window_s": options.capture.free_running_s,
        },
    }
    work = Path(tempfile.mkdtemp(prefix="lfv-edge-bench-"))
    broker: Mosquitto | None = None
    try:
        if "p1" in options.figures:
            progress("P1 pre-processing")
            report["p1"] = preprocessing.measure_preprocessing(
                repetitions=options.p1_repetitions, warmup=options.p1_warmup
            ).to_dict()
        needs_broker = {"p2", "p3", "p4", "p5", "gpu", *CAPTURE_FIGURES} & set(options.figures)
        if needs_broker:
            broker = Mosquitto(work)
            jpeg1080, jpeg1000, frame1000, image = _kinds(work)
            _broker_figures(
                options, report, work, broker, image, (jpeg1080, jpeg1000, frame1000), progress
            )
            if "gpu" in options.figures:
                report["gpu"] = _gpu_figures(options, work, broker, image, jpeg1080, progress)
            if "p3" in options.figures:
                primary = build_package(work, options.p2_networks[0], 1000)
                report["p3"] = []
                every = {kind.name: kind for kind in (jpeg1080, jpeg1000, frame1000)}
                for kind in (every[name] for name in options.p3_kinds):
                    progress(f"P3 added latency, {kind.name}")
                    report["p3"].append(
                        throughput.measure_latency(
                            primary, kind, broker, work, threads=options.threads,
                            requests=options.p3_requests, probe_batch=options.p2_batch,
                            probe_rounds=options.p3_probe_rounds,
                        ).to_dict()
                    )  # fmt: skip
            if {"p4", "p5"} & set(options.figures):
                package, label = _footprint_package(options, work)
                if "p4" in options.figures:
                    progress(f"P4 memory ({label})")
                    report["p4"] = footprint.measure_memory(
                        package, label, jpeg1080, broker, work, threads=options.threads,
                        requests=options.p4_requests, warmup=options.p4_warmup,
                        burst=options.p4_burst,
                    ).to_dict()  # fmt: skip
                if "p5" in options.figures:
                    progress(f"P5 cold start ({label})")
                    report["p5"] = footprint.measure_cold_start(
                        package, label, jpeg1080, broker, work, threads=options.threads,
                        repetitions=options.p5_repetitions, warmup=options.p5_warmup,
                    ).to_dict()  # fmt: skip
            capture = tuple(f for f in CAPTURE_FIGURES if f in options.figures)
            if capture:
                package, label = _footprint_package(options, work)
                report["capture"] = measure_capture(
                    package, label, broker, work, threads=options.threads, figures=capture,
                    options=options.capture, progress=progress,
                ).to_dict()  # fmt: skip
    finally:
        if broker is not None:
            broker.stop()
        if options.keep is not None:
            shutil.copytree(work, options.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_at_end"] = [round(v, 2) for v in load_average()]
    return report


def _broker_figures(
    options: BenchOptions,
    report: dict[str, Any],
    work: Path,
    broker: Mosquitto,
    image: Path,
    kinds: Sequence[RequestKind],
    progress: Callable[[str], None],
) -> None:
    """P2 for each network (all request kinds for the first, the 1080p JPEG for the others)."""
    if "p2" not in options.figures:
        return
    report["p2"] = []
    for n, network in enumerate(options.p2_networks):
        package = build_package(work, network, 1000)
        measured = kinds if (n == 0 and options.p2_all_kinds) else kinds[:1]
        progress(f"P2 throughput, {network} network: {', '.join(k.name for k in measured)}")
        figures = throughput.measure_throughput(
            network, package, f"builder '{network}' network, 1000×1000 input", measured,
            broker, work, image, threads=options.threads, rounds=options.p2_rounds,
            batch=options.p2_batch, web=options.p2_web and n == 0,
        )  # fmt: skip
        report["p2"].append(figures.to_dict())


def _gpu_figures(
    options: BenchOptions,
    work: Path,
    broker: Mosquitto,
    image: Path,
    jpeg1080: RequestKind,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """G for each of `gpu_networks`: 1080p JPEGs, raw 1080p frames, raw model-size frames."""
    if options.gpu_libdlr is None:
        msg = "figure gpu needs a CUDA build of libdlr.so (--gpu-libdlr or $LFV_EDGE_GPU_LIBDLR)"
        raise LfvEdgeError(msg)
    side = options.gpu_size
    kinds = (
        jpeg1080,
        frame_request("frame1080", "1920×1080 rgb8 Frame", photo_rgb(FULL_HD)),
        frame_request(f"frame{side}", f"{side}×{side} rgb8 Frame (model size)",
                      photo_rgb((side, side), seed=12)),
    )  # fmt: skip
    figures = []
    for network in options.gpu_networks:
        progress(f"G GPU serving, {network} network: building the CPU and GPU packages")
        cpu_package = build_package(work, network, side)
        gpu_package = build_package(work, network, side, target="cuda", libdlr=options.gpu_libdlr)
        progress(f"G GPU serving, {network} network: {', '.join(k.name for k in kinds)}")
        figures.append(
            gpu.measure_gpu(
                f"builder '{network}' network, {side}×{side} input", cpu_package, gpu_package,
                kinds, broker, work, image, threads=options.threads, rounds=options.gpu_rounds,
                batch=options.gpu_batch, window=options.gpu_window,
                prep_count=options.gpu_prep_count, serve_args=options.serve_args,
                prepare_workers=options.gpu_prepare_workers or max(1, usable_cpus() - 1),
            ).to_dict()
        )  # fmt: skip
    return figures


def _footprint_package(options: BenchOptions, work: Path) -> tuple[Path, str]:
    if options.model is not None:
        return options.model, str(options.model)
    demo = demo_package(source_tree())
    if demo is not None:
        return demo, "demo package (com.lfvedge.DemoModel 1.0.0)"
    return (
        build_package(work, "bench", 256, mask=True),
        "builder segmentation package 256×256 (no demo package in this tree)",
    )


def write_report(report: dict[str, Any], path: Path) -> None:
    """The report as indented JSON."""
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
