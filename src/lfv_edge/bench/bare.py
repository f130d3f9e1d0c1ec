"""The bare model loop of P2 and G, in its own process.

    python -m lfv_edge.bench.bare PACKAGE THREADS IMAGE [DEVICE]

Loads the package with `THREADS` TVM workers on DEVICE (cpu, the default, or gpu), prepares
IMAGE once, then answers each count read on stdin with the wall and CPU seconds that many
`runner.run` calls took.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from lfv_edge.inspection.pipeline import EncodedImage
from lfv_edge.model.device import Device
from lfv_edge.service.config import ModelConfig
from lfv_edge.service.wiring import load_inspector


def main(argv: list[str]) -> int:
    package, threads, image = Path(argv[0]), int(argv[1]), Path(argv[2])
    device: Device = "gpu" if argv[3:4] == ["gpu"] else "cpu"
    # The serving thread policy with the bench's TVM thread count, as `serve` runs it.
    inspector = load_inspector(ModelConfig(path=package, device=device, threads=threads))
    tensor = inspector.prepare(EncodedImage(image.read_bytes())).tensor
    warmup = []
    for _ in range(5):
        start = time.perf_counter()
        inspector.runner.run(tensor)
        warmup.append((time.perf_counter() - start) * 1000.0)
    print("ready", round(statistics.median(warmup[1:]), 3), flush=True)
    for line in sys.stdin:
        count = int(line)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            inspector.runner.run(tensor)
        print(time.perf_counter() - start, time.process_time() - cpu, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
