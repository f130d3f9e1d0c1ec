"""Per-call overhead of DetectAnomalies over the agent's Unix socket vs `Inspector.inspect` in-process.

    .venv/bin/python tools/agent_overhead.py [--reps 30] [--json results.json]

Builds two small packages with our model builder (a 64×64 classifier and a 64×64 segmenter,
the real libdlr.so), starts `lfv-edge agent` as a separate process (as a plant's agent runs),
and for each case — image 64×64 or 1000×1000, pixels sent as `byte_data` or through POSIX
shared memory, classifier or segmenter — times, interleaved in the same run and alternating
which goes first:

* direct: `Inspector.inspect(RawFrame(rgb))` on the same package in this process;
* gRPC: one `DetectAnomalies` call from this process (the segmenter's mask comes back as
  `byte_data`, or is written into the client's segment when the image came through shared
  memory). Writing the image into shared memory is the camera's job and is not timed.

Reports medians over `--reps` (≥ 20) and the median of the paired differences (the overhead).
Not a unit test: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lfv_edge.model import cpu_runtime
from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent import edge_agent_pb2_grpc as pb2_grpc
from lfv_edge.agent.shm import segment_path
from lfv_edge.modelbuild.compile import compile_kernels
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package
from lfv_edge.model.package import read_model_package
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.runner import configure_threads

SIZES = (64, 1000)
INPUTS = ("byte_data", "shared_memory")
MODELS = {"cls": PackageSpec(), "seg": PackageSpec(segmentation_head=True)}
# Large enough for a 1000×1000 mask in the reply (the default client limit is 4 MiB).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


@dataclass
class Case:
    model: str
    size: int
    input: str
    image: np.ndarray
    request: pb2.DetectAnomaliesRequest
    direct_ms: list[float]
    grpc_ms: list[float]


def _image(size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    image = rng.integers(60, 180, (size, size, 3), dtype=np.uint8)
    image[: size // 4, : size // 4] = (250, 10, 10)  # a red defect: the segmenter finds it
    return image


def _segment(nbytes: int, folder: list[str]) -> str:
    name = f"/lfv-overhead-{uuid.uuid4().hex[:8]}"
    fd = os.open(segment_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, nbytes)
    os.close(fd)
    folder.append(name)
    return name


def _request(model: str, image: np.ndarray, kind: str, segments: list[str]) -> Any:  # noqa: ANN401
    height, width = image.shape[:2]
    if kind == "byte_data":
        bitmap = pb2.Bitmap(width=width, height=height, byte_data=image.tobytes())
        return pb2.DetectAnomaliesRequest(model_component=model, bitmap=bitmap)
    name = _segment(image.nbytes * 2, segments)  # the image, then room for the mask
    fd = os.open(segment_path(name), os.O_RDWR)
    os.pwrite(fd, image.tobytes(), 0)
    os.close(fd)
    handle = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=0)
    mask = pb2.SharedMemoryHandle(name=name, size=image.nbytes, offset=image.nbytes)
    return pb2.DetectAnomaliesRequest(
        model_component=model,
        bitmap=pb2.Bitmap(width=width, height=height, shared_memory_handle=handle),
        anomaly_mask_params=pb2.AnomalyMaskParams(shared_memory_handle=mask),
    )


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000.0


def _wait_running(stub: Any, names: list[str], timeout_s: float = 120.0) -> None:  # noqa: ANN401
    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            status = stub.DescribeModel(
                pb2.DescribeModelRequest(model_component=name), wait_for_ready=True, timeout=30
            ).model_description
            if status.status == pb2.RUNNING:
                break
            if status.status == pb2.FAILED or time.monotonic() > deadline:
                msg = f"{name}: {pb2.ModelStatus.Name(status.status)} {status.status_message}"
                raise RuntimeError(msg)
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed calls per case (≥ 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case first")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args()
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        sys.exit("the CPU DLR runtime is not installed: run scripts/setup")
    threads = configure_threads(None)
    scratch = Path(tempfile.mkdtemp(prefix="lfvo-"))
    segments: list[str] = []
    kernels = compile_kernels(cache_dir=scratch / "kernels")
    packages = {
        name: build_lfv_package(scratch / name, spec, libdlr=runtime.library, kernels=kernels)
        for name, spec in MODELS.items()
    }
    inspectors = {
        name: Inspector.load(read_model_package(path), device="cpu")
        for name, path in packages.items()
    }
    sock = scratch / "agent.sock"
    command = [sys.executable, "-m", "lfv_edge", "agent", "--socket", str(sock), "--device", "cpu"]
    for name, path in packages.items():
        command += ["--model", f"{name}={path}", "--start", name]
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"unix://{sock}", options=CHANNEL_OPTIONS) as channel:
            stub_class: Callable[[grpc.Channel], Any] = pb2_grpc.EdgeAgentStub
            stub = stub_class(channel)
            _wait_running(stub, list(packages))
            cases = [
                Case(m, s, k, image, _request(m, image, k, segments), [], [])
                for m in MODELS
                for s in SIZES
                for k in INPUTS
                for image in [_image(s)]
            ]
            for case in cases:  # warm both paths (first-call allocations, TVM thread pool)
                for _ in range(args.warmup):
                    inspectors[case.model].inspect(RawFrame(case.image, "rgb"))
                    stub.DetectAnomalies(case.request)
            for rep in range(args.reps):
                for case in cases:
                    inspector = inspectors[case.model]
                    frame = RawFrame(case.image, "rgb")

                    def direct(inspector: Inspector = inspector, frame: RawFrame = frame) -> None:
                        inspector.inspect(frame)

                    def remote(request: Any = case.request) -> None:  # noqa: ANN401
                        stub.DetectAnomalies(request)

                    if rep % 2:
                        case.grpc_ms.append(_timed(remote))
                        case.direct_ms.append(_timed(direct))
                    else:
                        case.direct_ms.append(_timed(direct))
                        case.grpc_ms.append(_timed(remote))
    finally:
        agent.terminate()
        agent.wait(timeout=60)
        for name in segments:
            segment_path(name).unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"DetectAnomalies over unix socket vs Inspector.inspect, {args.reps} reps each, "
        f"TVM threads {threads}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"grpcio {grpc.__version__}"
    )
    print(
        "| model | image | input | direct ms (median) | gRPC ms (median) | overhead ms (median of pairs) | p90 overhead ms |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for case in cases:
        pairs = [g - d for g, d in zip(case.grpc_ms, case.direct_ms, strict=True)]
        p90 = statistics.quantiles(pairs, n=10)[-1]
        row = {
            "model": case.model,
            "image": f"{case.size}x{case.size}",
            "input": case.input,
            "direct_ms": statistics.median(case.direct_ms),
            "grpc_ms": statistics.median(case.grpc_ms),
            "overhead_ms": statistics.median(pairs),
            "overhead_p90_ms": p90,
        }
        rows.append({**row, "direct_raw": case.direct_ms, "grpc_raw": case.grpc_ms})
        print(
            f"| {row['model']} | {row['image']} | {row['input']} | {row['direct_ms']:.2f} | "
            f"{row['grpc_ms']:.2f} | {row['overhead_ms']:.2f} | {p90:.2f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
