"""Camera feeds for the capture benchmarks and tests: production-line frames as a camera sends them.

    write_line_frames(folder, n, size)  synthetic_line images as frame00000.jpg, … (+ which are defects)
    MjpegFeed(frames, fps)              `python -m lfv_edge.bench.feeds mjpeg …`: an HTTP MJPEG
                                        camera (multipart/x-mixed-replace, as cheap IP cameras)
    RtspFeed(frames, fps)               bench/rtsp_feed.py under the distribution's Python with
                                        GStreamer's RTSP server: an H.264 RTSP camera

Each feed is its own process on 127.0.0.1 (a free port), started as a camera would be, so a
test can kill it mid-stream ("the camera went away") and start it again on the same port.
Frames loop forever at the given rate. Not used by the service.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from lfv_edge.bench.processes import terminate
from lfv_edge.errors import LfvEdgeError

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi and GStreamer live
RTSP_FEED = Path(__file__).with_name("rtsp_feed.py")
_START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class LineFrames:
    """Frames written by `write_line_frames`."""

    folder: Path
    count: int
    defects: tuple[int, ...]  # indices of frames that show a defect
    size: tuple[int, int]  # (height, width)


def write_line_frames(
    folder: Path, count: int, size: tuple[int, int], *, seed: int = 7, quality: int = 92
) -> LineFrames:
    """`count` production-line images (half with defects, as `plan_dataset` balances them)."""
    import cv2  # noqa: TID251 - a benchmark's test pattern, not the service

    from lfv_edge.demo.synthetic_line import generate_dataset

    folder.mkdir(parents=True, exist_ok=True)
    defects: list[int] = []
    for index, sample in enumerate(generate_dataset(count, seed=seed, split="test", size=size)):
        bgr = np.ascontiguousarray(sample.image_rgb[:, :, ::-1])
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            msg = "JPEG encoding failed"
            raise LfvEdgeError(msg)
        (folder / f"frame{index:05d}.jpg").write_bytes(bytes(data))
        if sample.is_anomalous:
            defects.append(index)
    return LineFrames(folder, count, tuple(defects), size)


def rtsp_available() -> str | None:
    """None when the RTSP feed can run here, else what is missing."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import GstRtspServer; gi.require_version('Gst', '1.0'); "
         "from gi.repository import Gst; Gst.init(None); "
         "import sys; sys.exit(0 if Gst.ElementFactory.find('x264enc') and "
         "Gst.ElementFactory.find('jpegdec') else 3)"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed (apt-get install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly gstreamer1.0-rtsp)"
        )
    return None


class _Feed:
    """A feed process: start, kill (the camera went away), start again on the same port."""

    def __init__(self, command: list[str], url: str) -> None:
        self._command = command
        self.url = url
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        ready: list[str] = []
        reader = threading.Thread(
            target=lambda: ready.append(self.process.stdout.readline() if self.process and
                                        self.process.stdout else ""),
            daemon=True,
        )  # fmt: skip
        reader.start()
        reader.join(_START_TIMEOUT_S)
        if not ready or ready[0].strip() != "ready":
            error = ""
            if self.process.poll() is not None and self.process.stderr is not None:
                error = self.process.stderr.read()[-2000:]
            self.kill()
            msg = f"the camera feed did not start: {' '.join(self._command)}\n{error}"
            raise LfvEdgeError(msg)

    def kill(self) -> None:
        """SIGKILL: the camera disappears mid-stream, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.close_pipes()

    def stop(self) -> None:
        """Stop the feed for good."""
        if self.process is not None:
            terminate(self.process)
        self.close_pipes()

    def close_pipes(self) -> None:
        if self.process is not None:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101 - started in __init__
        return self.process.pid


class MjpegFeed(_Feed):
    """An HTTP MJPEG camera on 127.0.0.1: http://127.0.0.1:PORT/cam."""

    def __init__(self, frames: Path, fps: float, port: int | None = None) -> None:
        port = port or free_port()
        command = [sys.executable, "-m", "lfv_edge.bench.feeds", "mjpeg", str(port), str(frames),
                   str(fps)]  # fmt: skip
        super().__init__(command, f"http://127.0.0.1:{port}/cam")


class RtspFeed(_Feed):
    """An H.264 RTSP camera on 127.0.0.1 (GStreamer): rtsp://127.0.0.1:PORT/cam."""

    def __init__(self, frames: Path, fps: int, port: int | None = None) -> None:
        missing = rtsp_available()
        if missing is not None:
            raise LfvEdgeError(missing)
        port = port or free_port()
        python = shutil.which(SYSTEM_PYTHON) or SYSTEM_PYTHON
        command = [python, str(RTSP_FEED), str(port), str(frames), str(fps)]
        super().__init__(command, f"rtsp://127.0.0.1:{port}/cam")


# --- the MJPEG server process -------------------------------------------------------------------


def _serve_mjpeg(port: int, folder: Path, fps: float) -> None:
    frames = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]
    if not frames:
        print(f"no *.jpg frames in {folder}", file=sys.stderr)
        sys.exit(2)
    period = 1.0 / fps
    start = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/cam":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            # Every client sees the same frame at the same moment, as with a real camera.
            index = int((time.monotonic() - start) / period)
            try:
                while True:
                    due = start + index * period
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    data = frames[index % len(frames)]
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n"
                    )  # fmt: skip
                    self.wfile.flush()
                    index = max(index + 1, int((time.monotonic() - start) / period))
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


def main(argv: list[str]) -> int:
    """`python -m lfv_edge.bench.feeds mjpeg PORT FRAMES_DIR FPS`."""
    if len(argv) != 5 or argv[1] != "mjpeg":
        print("usage: python -m lfv_edge.bench.feeds mjpeg PORT FRAMES_DIR FPS", file=sys.stderr)
        return 2
    _serve_mjpeg(int(argv[2]), Path(argv[3]), float(argv[4]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
