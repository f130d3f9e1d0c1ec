"""C4's capture-only process: `python -m lfv_edge.bench.capture_probe URL SECONDS`.

Opens the camera as a capture source does (capture/stream.py: FFmpeg, one decoding thread)
and reads frames in one thread for SECONDS, nothing else; prints one JSON line with the
frames read and the process's CPU seconds over that time (the reader thread and whatever
FFmpeg runs for it), so a capture thread's cost is measured without a model beside it.
"""

from __future__ import annotations

import json
import sys
import time

from lfv_edge.capture.stream import VideoStream
from lfv_edge.service.config import CameraSourceConfig


def main(argv: list[str]) -> int:
    url, seconds = argv[0], float(argv[1])
    stream = VideoStream.open(CameraSourceConfig(id="probe", url=url, fps=1.0))
    warm_until = time.perf_counter() + 2.0  # past FFmpeg's probing and any backlog at connect
    while time.perf_counter() < warm_until and stream.read() is not None:
        pass
    frames, size = 0, (0, 0)
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        pixels = stream.read()
        if pixels is None:
            break
        frames += 1
        size = (int(pixels.shape[1]), int(pixels.shape[0]))
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    stream.release()
    print(json.dumps({"frames": frames, "wall_s": wall, "cpu_s": used, "size": size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
