"""An RTSP camera for tests and benchmarks: JPEG frames from a folder, looped, served as H.264.

Runs under the distribution's Python with GStreamer's RTSP server (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,ugly}, gstreamer1.0-rtsp), not in
lfv-edge's virtual environment: it imports nothing of lfv_edge.

    /usr/bin/python3 rtsp_feed.py PORT FRAMES_DIR FPS [--bitrate KBPS]
        → rtsp://127.0.0.1:PORT/cam; prints "ready" once it listens

The frames (frame00000.jpg, …, all the same size) are pushed at FPS into an `appsrc`, decoded,
encoded with x264 (zero-latency tuning, a key frame every second) and payloaded as RTP: what
an IP camera sends. Killing the process is a camera that went away.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a baseline or progressive JPEG's SOF marker."""
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            index += 1
            continue
        marker = data[index + 1]
        length = int.from_bytes(data[index + 2 : index + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            return width, height
        index += 2 + length
    msg = "no SOF marker: not a JPEG"
    raise ValueError(msg)


class Feed:
    """Pushes the frames into every media's appsrc at the frame rate."""

    def __init__(self, frames: list[bytes], fps: int) -> None:
        self.frames = frames
        self.fps = fps
        self.index = 0
        self.sources: list[Any] = []

    def attach(self, factory: Any, media: Any) -> None:  # noqa: ANN401 - GObject types
        source = media.get_element().get_child_by_name("src")
        self.sources.append(source)

    def tick(self) -> bool:
        data = self.frames[self.index % len(self.frames)]
        self.index += 1
        for source in list(self.sources):
            buffer = Gst.Buffer.new_wrapped(data)
            if source.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
                self.sources.remove(source)  # that media is gone (no client left)
        return True


def main(argv: list[str]) -> int:
    """Serve until killed."""
    port, folder, fps = argv[1], Path(argv[2]), int(argv[3])
    bitrate = int(argv[argv.index("--bitrate") + 1]) if "--bitrate" in argv else 4000
    frames = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]
    if not frames:
        print(f"no *.jpg frames in {folder}", file=sys.stderr)
        return 2
    width, height = _jpeg_size(frames[0])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_shared(True)
    factory.set_launch(
        f"( appsrc name=src is-live=true do-timestamp=true format=time "
        f"caps=image/jpeg,width={width},height={height},framerate={fps}/1 "
        f"! jpegdec ! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={bitrate} key-int-max={fps} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    feed = Feed(frames, fps)
    factory.connect("media-configure", feed.attach)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    GLib.timeout_add(max(1, round(1000 / fps)), feed.tick)
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
