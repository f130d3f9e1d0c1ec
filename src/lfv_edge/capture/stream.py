"""Opening and reading cameras, streams and video files with OpenCV's `VideoCapture`.

The one module of the capture package that imports cv2 (a boundary library). What it opens:

    /dev/videoN              V4L2 (CAP_V4L2), one-frame driver buffer, optional width/height
    rtsp://, http:// (MJPEG) FFmpeg (CAP_FFMPEG) with open and read timeouts, one decode thread
    a path or file://        FFmpeg, for replays and tests; its frame rate paces `realtime` replay

OpenCV 5's wheels here have FFmpeg and V4L2 but no GStreamer, so no pipeline strings. FFmpeg
options (`rtsp_transport;tcp`, …) reach the demuxer only through the environment variable
OPENCV_FFMPEG_CAPTURE_OPTIONS, read when a capture opens: it is set and restored around each
open under a lock. Nothing here has threads; camera.py's reader owns one `VideoStream` at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import CaptureError
from lfv_edge.service.config import CameraSourceConfig

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_OPEN_LOCK = threading.Lock()  # the environment variable is process-wide


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame, never written to after it is published (inspections read it)."""

    pixels: NDArray[np.uint8]  # H×W×3, BGR (OpenCV's order)
    index: int  # frames read since the source started (a file: its position in the file)
    captured_at: float  # time.time() when decoding finished
    captured_mono: float  # time.monotonic() at the same moment (ages are measured with it)


def redact(url: str) -> str:
    """The URL without its password, for logs and status messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def file_path(url: str) -> Path:
    """The path of a `file` URL or a plain path."""
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme.lower() == "file" else Path(url)


class VideoStream:
    """One open capture: `read()` until it returns None (lost, or a file's end)."""

    def __init__(self, capture: cv2.VideoCapture, *, fps: float, frame_count: int) -> None:
        self._capture = capture
        self.fps = fps  # the stream's nominal rate (0 when it does not say)
        self.frame_count = frame_count  # a file's frame count (0 for live sources)

    @classmethod
    def open(cls, config: CameraSourceConfig) -> VideoStream:
        """Open the source `config.url` names, bounded by `config.open_timeout_s`.

        Raises:
            CaptureError: it cannot be opened (says what was tried, password redacted).
        """
        kind = config.kind
        if kind == "device":
            capture = cv2.VideoCapture(config.url, cv2.CAP_V4L2)
            if capture.isOpened():
                # The driver's queue, not FFmpeg's: one buffer, so a read returns a fresh frame.
                capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
                if config.width is not None and config.height is not None:
                    capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
                    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        else:
            target = config.url if kind == "stream" else str(file_path(config.url))
            if kind == "file" and not Path(target).is_file():
                msg = f"{config.id}: no video file at {target}"
                raise CaptureError(msg)
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(config.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(config.read_timeout_s * 1000),
                # One decoding thread: FFmpeg's frame threads each hold a frame back (a 2-thread
                # H.264 decoder hands out frames one interval late) and compete with the model.
                cv2.CAP_PROP_N_THREADS, 1,
            ]  # fmt: skip
            capture = _open_ffmpeg(target, params, config.ffmpeg_options)
        if not capture.isOpened():
            capture.release()
            msg = f"{config.id}: cannot open {redact(config.url)}"
            raise CaptureError(msg)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "file" else 0
        return cls(capture, fps=fps if 0 < fps < 1000 else 0.0, frame_count=max(frames, 0))

    def read(self) -> NDArray[np.uint8] | None:
        """The next frame (BGR, a new array each time), or None when the source ended or failed."""
        ok, pixels = self._capture.read()
        if not ok or pixels is None or pixels.size == 0:
            return None
        if pixels.ndim == 2:  # a grey camera
            pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
        return np.asarray(pixels, dtype=np.uint8)

    def rewind(self) -> bool:
        """Back to a file's first frame (for `loop`); False when the file cannot seek."""
        return bool(self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        """Close the camera, stream or file."""
        self._capture.release()


def _open_ffmpeg(target: str, params: Sequence[int], options: str | None) -> cv2.VideoCapture:
    with _OPEN_LOCK:
        before = os.environ.get(_FFMPEG_OPTIONS_ENV)
        try:
            if options:  # else the process's own setting, if any, applies
                os.environ[_FFMPEG_OPTIONS_ENV] = options
            return cv2.VideoCapture(target, cv2.CAP_FFMPEG, list(params))
        finally:
            if before is None:
                os.environ.pop(_FFMPEG_OPTIONS_ENV, None)
            else:
                os.environ[_FFMPEG_OPTIONS_ENV] = before
