"""From a configuration to running objects: the one place every entry point builds them.

`serve`, the Greengrass component, `agent`, `demo`, `infer` and the benchmarks call these
instead of each turning a configuration into an inspector, limits, settings and a thread
policy of their own:

    ModelConfig + LimitsConfig ─load_inspector─▶ Inspector (package read and checked, device
        chosen, threads set, DLR loaded; optionally probed in a child process first)
    ServiceConfig ─service_settings─▶ ServiceSettings ─build_service─▶ Service (+ transports)

Process-wide concerns (log handlers, signals, the exit without destructors) are in process.py,
which stays light enough for `lfv-edge --help`.

Threads: a serving process overlaps decoding with inference, so TVM gets one CPU less than
the process may use and OpenCV the rest (`serving_threads`); a one-shot `infer` gives TVM all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from lfv_edge.inspection.imaging import SizeLimits
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.inspection.preprocess import set_opencv_threads
from lfv_edge.model.archive import default_cache_dir
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import usable_cpus
from lfv_edge.service.config import Device, LimitsConfig, ModelConfig, ServiceConfig
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.service.inbox import SpillFolder
from lfv_edge.service.messages import environment_identity
from lfv_edge.service.ports import Transport

logger = logging.getLogger(__name__)


def size_limits(limits: LimitsConfig) -> SizeLimits:
    """The image size limits of a `limits` section."""
    return SizeLimits(
        min_side=limits.min_image_side,
        max_side=limits.max_image_side,
        max_encoded_bytes=limits.max_payload_bytes,
    )


def serving_tvm_threads(configured: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """The TVM worker count `serving_threads` would choose, without changing anything."""
    from_env = environ.get("TVM_NUM_THREADS", "")
    tvm = configured or (int(from_env) if from_env.isdigit() and int(from_env) > 0 else None)
    return tvm or max(1, usable_cpus() - 1)


def serving_threads(configured: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """TVM workers for a long-running service, and OpenCV given the CPUs TVM does not use.

    A service overlaps decoding and pre-processing of the next image with inference of the
    current one, so TVM gets one CPU less than the machine has unless told otherwise
    (`configured`, else `$TVM_NUM_THREADS`). Measured on 2 shared cores with the 1000×1000
    bench model and 1080p JPEGs (docs/performance.md): a second TVM thread did not make the
    model faster, cost ~10 ms more CPU per request and raised the median latency by a third;
    OpenCV's default (every CPU) adds a thread that preempts the model (served/bare
    0.61/0.71/0.61 with one OpenCV thread against 0.61/0.68/0.53 with two). OpenCV's own
    `$OPENCV_FOR_THREADS_NUM` wins, as TVM's variable does.
    """
    tvm = serving_tvm_threads(configured, environ)
    if "OPENCV_FOR_THREADS_NUM" not in environ:
        set_opencv_threads(max(1, usable_cpus() - tvm))
    return tvm


def load_inspector(
    model: ModelConfig,
    limits: LimitsConfig = LimitsConfig(),  # noqa: B008 - frozen value
    *,
    serving: bool = True,
    environ: Mapping[str, str] = os.environ,
) -> Inspector:
    """Read and check the package, choose the device and load the model.

    `serving`: the thread policy of a long-running service (else TVM takes every CPU).

    Raises:
        ModelPackageError: the package cannot be used (DeviceError: not on that device).
    """
    package = read_model_package(model.path)
    threads = serving_threads(model.threads, environ) if serving else model.threads
    if model.runtime == "onnx":
        from lfv_edge.model.onnx_runner import load_onnx_runner

        runner, choice = load_onnx_runner(
            package, device=model.device, threads=threads, model=model.onnx_model
        )
        inspector = Inspector(
            package,
            runner,
            device=choice,
            colors=model.colors,
            threshold=model.threshold_override,
            limits=size_limits(limits),
        )
    else:
        inspector = Inspector.load(
            package,
            device=model.device,
            threads=threads,
            colors=model.colors,
            threshold=model.threshold_override,
            limits=size_limits(limits),
            probe=model.probe,
        )
    inspector.model_arn = model.lookout_vision_model_arn
    logger.info("model %s %s loaded from %s", package.name, package.version, model.path)
    return inspector


def model_loader(
    settings: ModelConfig | None,
    limits: LimitsConfig = LimitsConfig(),  # noqa: B008 - frozen value
    *,
    device: Device | None = None,
    threads: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Callable[[Path], Inspector]:
    """Package path → loaded inspector, for processes that load models by name (the agent).

    Each model gets the `model` section's settings (device, threads, colours, probe; the
    path comes per model); `device` and `threads` override them (command-line flags).
    """
    base = settings or ModelConfig(path=Path())
    if device is not None:
        base = replace(base, device=device)
    if threads is not None:
        base = replace(base, threads=threads)

    def load(path: Path) -> Inspector:
        return load_inspector(replace(base, path=path), limits, environ=environ)

    return load


def retune_inspector(current: Inspector, model: ModelConfig, limits: LimitsConfig) -> Inspector:
    """The same loaded model with another threshold, colours or limits (instant: no load)."""
    inspector = Inspector(
        current.package,
        current.runner,
        device=current.device,
        colors=model.colors,
        threshold=model.threshold_override,
        limits=size_limits(limits),
    )
    inspector.model_arn = model.lookout_vision_model_arn
    return inspector


def service_settings(
    config: ServiceConfig, environ: Mapping[str, str] = os.environ
) -> ServiceSettings:
    """What the pipeline reads per message, from a configuration."""
    return ServiceSettings(
        image_roots=config.image_roots,
        max_payload_bytes=config.limits.max_payload_bytes,
        include_mask=config.results.include_mask,
        overflow=config.queue.overflow,
        extra_reply_fields=dict(environment_identity(environ)),
    )


def build_service(
    config: ServiceConfig,
    inspector: Inspector,
    transports: Sequence[Transport],
    environ: Mapping[str, str] = os.environ,
) -> Service:
    """The service core for `inspector` behind `transports`, sized by the configuration."""
    spill = None
    if config.queue.spill_max_bytes > 0:
        root = config.queue.spill_dir or default_cache_dir(environ) / "waiting"
        spill = SpillFolder(root, config.queue.spill_max_bytes)
    return Service(
        inspector,
        transports,
        settings=service_settings(config, environ),
        queue_size=config.queue.size,
        prepare_workers=config.queue.prepare_workers,
        stats_interval_s=config.stats_interval_s,
        waiting_max_bytes=config.queue.waiting_max_bytes,
        spill=spill,
    )
