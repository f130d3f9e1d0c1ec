"""The service core without MQTT, in its own process: served rate through the memory transport.

    python -m lfv_edge.bench.inprocess PACKAGE DEVICE PREPARE_WORKERS QUEUE_SIZE

Loads the package as `serve` does (wiring: the serving thread policy), starts the service core
with `PREPARE_WORKERS` behind a `MemoryTransport`, prints `ready`, then answers each line
`KIND COUNT WINDOW` read on stdin (KIND one of `request_kinds()`) with the steady-state reply
rate and the process's CPU ms per request, `WINDOW` requests in flight. Against the MQTT figure
this separates what the service core sustains from what the broker transport costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lfv_edge.bench.inputs import (
    FULL_HD,
    RequestKind,
    encode_jpeg,
    frame_request,
    jpeg_request,
    photo_rgb,
)
from lfv_edge.service.config import ModelConfig, OverflowPolicy
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.service.wiring import load_inspector
from lfv_edge.transports.memory import MemoryTransport


def request_kinds(side: int) -> dict[str, RequestKind]:
    """The request kinds of figure GPU, built as the MQTT side builds them."""
    return {
        kind.name: kind
        for kind in (
            jpeg_request("jpeg1080", "1920×1080 JPEG q90 Body", encode_jpeg(photo_rgb(FULL_HD))),
            frame_request("frame1080", "1920×1080 rgb8 Frame", photo_rgb(FULL_HD)),
            frame_request(
                f"frame{side}", "model-size rgb8 Frame", photo_rgb((side, side), seed=12)
            ),
        )
    }


def main(argv: list[str]) -> int:
    package, device = Path(argv[0]), argv[1]
    workers, queue_size = int(argv[2]), int(argv[3])
    side = int(argv[4]) if len(argv) > 4 else 1000
    inspector = load_inspector(
        ModelConfig(path=package, device="gpu" if device == "gpu" else "cpu")
    )
    transport = MemoryTransport(stats_topic=None)
    service = Service(
        inspector, [transport], prepare_workers=workers, queue_size=queue_size, stats_interval_s=0.0,
        settings=ServiceSettings(max_payload_bytes=64 << 20, overflow=OverflowPolicy.REJECT),
    )  # fmt: skip
    service.start()
    kinds = request_kinds(side)
    print("ready", flush=True)
    for line in sys.stdin:
        name, count_text, window_text = line.split()
        count, window = int(count_text), int(window_text)
        # One payload per kind, built before the clock starts: building 4–8 MB requests here
        # would take the GIL from the service's own threads (the MQTT client does it elsewhere).
        payload = kinds[name].payload(name)
        base = len(transport.published)
        times: list[float] = []
        cpu = time.process_time()
        for n in range(count):
            if n >= window:
                transport.wait_for(base + n - window + 1, timeout_s=300.0)
                times.append(time.perf_counter())
            transport.deliver(payload)
        transport.wait_for(base + count, timeout_s=300.0)
        times.append(time.perf_counter())
        errors = sum(b'"Error"' in p.payload for p in transport.published[base:])
        cpu_ms = (time.process_time() - cpu) * 1000.0 / count
        skip = max(len(times) // 3, 1)  # pipeline fill, as the MQTT figure drops it
        rate = (len(times) - skip - 1) / (times[-1] - times[skip])
        print(rate, cpu_ms, errors, flush=True)
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
