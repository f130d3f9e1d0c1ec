"""C1–C4: capture at the line, measured with `lfv-edge serve --config` and a 1080p camera.

The camera is an HTTP MJPEG feed of production-line frames (synthetic_line, 1920×1080, JPEG
q92, 30 fps) in its own process: serving pre-encoded frames costs it next to nothing, so the
measured process is alone with the model, as on a line where the encoder is in the camera.

* C1 trigger → verdict: triggers published over MQTT one at a time (each after the previous
  verdict and a random pause within one frame interval, so triggers fall at every phase of
  the frame clock); the client's time from publishing the trigger to receiving the verdict,
  p50/p99 — MQTT both ways, the freshest frame, pre-processing 1080p → the model's input,
  the model, the reply (with its mask).
* C2 frame age at inspection: `Capture.FrameAgeMs` of the same verdicts (time from the frame
  leaving the decoder to its hand-over to the pipeline).
* C3 free-running: the source at `fps` 30 for a window; verdicts per second against the bare
  model loop (`runner.run` alone on a prepared tensor, same TVM threads, its own process),
  in rounds (bare, then a fresh `serve` window), the ratio taken per round and its median
  reported; the source's own `Dropped` count.
* C4 a capture thread's CPU at 30 fps: bench/capture_probe.py reads the camera and nothing
  else for a window; CPU seconds over wall seconds (100 % = one core). For the MJPEG feed and,
  where GStreamer's RTSP server is installed, the same frames as H.264 over RTSP.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfv_edge.bench.feeds import MjpegFeed, RtspFeed, rtsp_available, write_line_frames
from lfv_edge.bench.inputs import FULL_HD
from lfv_edge.bench.processes import BareWorker, BenchClient, Mosquitto, ServeProcess
from lfv_edge.bench.timing import percentiles
from lfv_edge.errors import LfvEdgeError

CAMERA_FPS = 30


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """How much to measure (`quick()`: a smoke test)."""

    triggers: int = 200
    warmup_triggers: int = 10
    free_running_s: float = 10.0
    free_running_rounds: int = 3
    bare_runs: int = 200
    probe_s: float = 15.0
    frames: int = 8  # distinct 1080p frames the camera loops over

    @classmethod
    def quick(cls) -> CaptureOptions:
        return cls(triggers=8, warmup_triggers=2, free_running_s=3.0, free_running_rounds=1,
                   bare_runs=10, probe_s=2.0, frames=2)  # fmt: skip


@dataclass
class CaptureFigures:
    """C1–C4 as measured."""

    package: str
    camera: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # C1
    stage_ms: dict[str, float] = field(default_factory=dict)  # C1: the service's own medians
    frame_age_ms: dict[str, float] = field(default_factory=dict)  # C2
    free_running: dict[str, Any] = field(default_factory=dict)  # C3
    capture_cpu: list[dict[str, Any]] = field(default_factory=list)  # C4

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "camera": self.camera,
            "c1_trigger_to_verdict_ms": self.latency_ms,
            "c1_service_stage_ms_median": self.stage_ms,
            "c2_frame_age_ms": self.frame_age_ms,
            "c3_free_running": self.free_running,
            "c4_capture_cpu": self.capture_cpu,
        }


def measure_capture(
    package: Path,
    label: str,
    broker: Mosquitto,
    work: Path,
    *,
    threads: int,
    figures: tuple[str, ...],
    options: CaptureOptions,
    progress: Callable[[str], None] = lambda _: None,
) -> CaptureFigures:
    """Run the selected capture figures (c1–c4) with a 1080p MJPEG camera."""
    frames = write_line_frames(work / "frames-1080p", options.frames, FULL_HD)
    feed = MjpegFeed(frames.folder, CAMERA_FPS)
    result = CaptureFigures(
        label, f"HTTP MJPEG {FULL_HD[1]}×{FULL_HD[0]} q92 at {CAMERA_FPS} fps (synthetic_line)"
    )
    try:
        if {"c1", "c2"} & set(figures):
            progress("C1/C2 trigger → verdict, frame age")
            _triggered(package, broker, work, feed.url, threads, options, result)
        if "c3" in figures:
            progress("C3 free-running vs the bare model loop")
            image = frames.folder / "frame00000.jpg"  # the bare loop's (prepared once)
            _free_running(package, broker, work, feed.url, image, threads, options, result)
        if "c4" in figures:
            progress("C4 capture thread CPU at 30 fps")
            result.capture_cpu.append(_probe("HTTP MJPEG 1080p30", feed.url, options.probe_s))
            missing = rtsp_available()
            if missing is None:
                rtsp = RtspFeed(frames.folder, CAMERA_FPS)
                try:
                    result.capture_cpu.append(
                        _probe("RTSP H.264 1080p30", rtsp.url, options.probe_s)
                    )
                finally:
                    rtsp.stop()
            else:
                result.capture_cpu.append({"camera": "RTSP H.264 1080p30", "skipped": missing})
    finally:
        feed.stop()
    return result


def _serve(
    package: Path, broker: Mosquitto, work: Path, prefix: str, threads: int,
    source: dict[str, object],
) -> tuple[ServeProcess, BenchClient]:  # fmt: skip
    config = work / f"{prefix}.json"
    config.write_text(
        json.dumps(
            {
                "sources": [source],
                "capture": {"triggerTopic": f"{prefix}/trigger", "statusTopic": f"{prefix}/cam"},
                "queue": {"size": 8},
            }
        )
    )
    client = BenchClient(broker.port, prefix, keep_bodies=True)
    client.subscribe_other(f"{prefix}/cam")
    serve = ServeProcess(
        package, broker, prefix, work, threads=threads, extra_args=["--config", str(config)]
    )
    serve.wait_online(client)

    def connected() -> bool:
        return any(body.get("Status") == "connected" for _, body in client.other[f"{prefix}/cam"])

    try:
        client.wait(connected, 60.0)
    except LfvEdgeError:
        serve.fail("never connected to the camera")
    return serve, client


def _triggered(
    package: Path, broker: Mosquitto, work: Path, url: str, threads: int,
    options: CaptureOptions, result: CaptureFigures,
) -> None:  # fmt: skip
    prefix = "c1"
    serve, client = _serve(package, broker, work, prefix, threads,
                           {"type": "camera", "id": "cam1", "url": url})  # fmt: skip
    rng = random.Random(1)  # noqa: S311 - a benchmark's phase jitter, not security
    latencies: list[float] = []
    ages: list[float] = []
    stages: dict[str, list[float]] = {}
    try:
        for n in range(options.warmup_triggers + options.triggers):
            time.sleep(rng.uniform(0.0, 1.0 / CAMERA_FPS))
            request_id = f"t{n}"
            sent = client.publish_to(
                f"{prefix}/trigger", json.dumps({"RequestId": request_id}).encode()
            )
            client.wait(lambda i=request_id: i in client.replies, 60.0)  # type: ignore[misc]
            reply, body = client.replies[request_id], client.bodies[request_id]
            if reply.error is not None:
                serve.fail(f"answered trigger {request_id} with {reply.error}")
            if n < options.warmup_triggers:
                continue
            latencies.append((reply.arrived - sent) * 1000.0)
            capture = body.get("Capture")
            if isinstance(capture, dict):
                ages.append(float(capture["FrameAgeMs"]))
            timings = body.get("TimingsMs")
            if isinstance(timings, dict):
                for stage, value in timings.items():
                    stages.setdefault(stage, []).append(float(value))
    finally:
        serve.stop()
        client.close()
    result.latency_ms = {**percentiles(latencies), "count": len(latencies)}
    result.frame_age_ms = {**percentiles(ages), "max": round(max(ages, default=0.0), 2),
                           "frame_interval": round(1000.0 / CAMERA_FPS, 2)}  # fmt: skip
    result.stage_ms = {stage: round(statistics.median(v), 2) for stage, v in stages.items()}


def _free_running(
    package: Path, broker: Mosquitto, work: Path, url: str, image: Path, threads: int,
    options: CaptureOptions, result: CaptureFigures,
) -> None:  # fmt: skip
    """Rounds of (bare model loop, a fresh `serve` free-running for a window): the ratio is
    taken per round, so both sides of it saw the same background load."""
    bare = BareWorker(package, threads, image)
    rounds: list[dict[str, Any]] = []
    try:
        for round_number in range(options.free_running_rounds):
            bare_rate, _ = bare.rate(options.bare_runs)
            window = _free_running_window(
                package, broker, work, url, threads, options, f"c3r{round_number}"
            )
            window["bare_model_per_s"] = round(bare_rate, 2)
            window["ratio_to_bare"] = round(window["inspections_per_s"] / bare_rate, 3)
            rounds.append(window)
    finally:
        bare.close()

    def median(name: str) -> float:
        return round(statistics.median(float(r[name]) for r in rounds), 3)

    result.free_running = {
        "fps_asked": CAMERA_FPS,
        "ratio_to_bare": median("ratio_to_bare"),
        "inspections_per_s": median("inspections_per_s"),
        "bare_model_per_s": median("bare_model_per_s"),
        "dropped_total": sum(int(r["dropped"] or 0) for r in rounds),
        "errors": sum(int(r["errors"]) for r in rounds),
        "serve_cpu_cores": median("serve_cpu_cores"),
        "rounds": rounds,
    }


def _free_running_window(
    package: Path, broker: Mosquitto, work: Path, url: str, threads: int,
    options: CaptureOptions, prefix: str,
) -> dict[str, Any]:  # fmt: skip
    serve, client = _serve(package, broker, work, prefix, threads,
                           {"type": "camera", "id": "cam1", "url": url,
                            "fps": CAMERA_FPS})  # fmt: skip
    try:
        time.sleep(2.0)  # past the pipeline's start
        start, cpu = time.perf_counter(), serve.cpu_s()
        time.sleep(options.free_running_s)
        with client.changed:
            window = [r for r in client.replies.values() if r.arrived >= start]
        elapsed = time.perf_counter() - start
        used = serve.cpu_s() - cpu
    finally:
        serve.stop()
    statuses = [body for _, body in client.other[f"{prefix}/cam"]]
    client.close()
    final = next((s for s in reversed(statuses) if s.get("Status") == "stopped"), {})
    return {
        "inspections_per_s": round(len(window) / elapsed, 2),
        "window_s": round(elapsed, 1),
        "errors": sum(r.error is not None for r in window),
        "dropped": final.get("Dropped"),
        "inspected": final.get("Inspected"),
        "frames_read": final.get("FramesRead"),
        "serve_cpu_cores": round(used / elapsed, 2),
    }


def _probe(camera: str, url: str, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "lfv_edge.bench.capture_probe", url, str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=seconds + 120)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        msg = f"the capture probe failed on {camera}: {done.stderr[-2000:]}"
        raise LfvEdgeError(msg)
    probe = json.loads(lines[-1])
    wall, cpu, frames = probe["wall_s"], probe["cpu_s"], probe["frames"]
    return {
        "camera": camera,
        "frames_per_s": round(frames / wall, 2),
        "cpu_percent_of_one_core": round(100.0 * cpu / wall, 1),
        "cpu_ms_per_frame": round(1000.0 * cpu / max(frames, 1), 2),
        "size": probe["size"],
        "window_s": round(wall, 1),
    }
