"""Capture at the line: hot folders, cameras and triggers produce inspections in the process.

    folder.py   a hot folder: new files inspected once, moved to done/ or failed/ + sidecar
    camera.py   a camera, stream or video file: reader thread (freshest frame, reconnect),
                worker (triggers, free-running fps, interval)
    stream.py   OpenCV VideoCapture (V4L2, FFmpeg: RTSP, HTTP MJPEG, files); the only cv2 user
    triggers.py the trigger message
    intake.py   a source's door into the service (`Service.submit`), in-flight accounting
    keep.py     kept images (original, overlay, JSON) within a byte, age and free-disk budget
    sources.py  `CaptureSources`: the configured sources as one companion of the service

The sources come from the `sources` list and the `capture` section of the configuration
(service/config.py) for `serve` and the Greengrass component alike; host.py builds them.
Verdicts go to the results topic in LFV's shape with a `Capture` object beside
`DetectAnomalyResult`. docs/capture.md is the user's guide.
"""

from __future__ import annotations

from lfv_edge.capture.sources import CaptureSources, TopicSubscriber

__all__ = ["CaptureSources", "TopicSubscriber"]
