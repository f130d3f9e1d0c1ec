"""Real camera streams: an H.264 RTSP camera (GStreamer's RTSP server) and an HTTP MJPEG camera,
each killed mid-stream and started again: the source reports the loss, reconnects, and the
inspections resume. Frames are production-line images (synthetic_line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lfv_edge.bench.feeds import MjpegFeed, RtspFeed
from lfv_edge.capture import CaptureSources
from lfv_edge.capture.stream import VideoStream
from lfv_edge.errors import CaptureError
from lfv_edge.service.config import CameraSourceConfig
from tests.capture.conftest import CaptureRunFactory, results, statuses, wait_until

pytestmark = pytest.mark.capture


def _camera_survives_a_restart(capture_run: CaptureRunFactory, feed: RtspFeed | MjpegFeed) -> None:
    # given a free-running camera source on the feed
    run = capture_run(
        {
            "sources": [
                {"type": "camera", "id": "cam1", "url": feed.url, "fps": "5",
                 "readTimeoutS": "2", "reconnectMaxS": "1"}
            ]
        }
    )  # fmt: skip
    transport = run.transport

    def verdicts() -> list[dict[str, Any]]:
        return [r for r in results(transport) if "DetectAnomalyResult" in r]

    wait_until(transport, lambda _: len(verdicts()) >= 5, "5 verdicts from the camera")
    first = verdicts()
    assert all(r["Capture"]["Source"] == "cam1" for r in first), "each verdict names its source"
    assert all(r["Capture"]["Trigger"] == "fps" for r in first), "free-running"
    assert first[0]["DetectAnomalyResult"]["Source"] == {"Type": "direct"}, "LFV's shape"
    # when the camera goes away mid-stream
    feed.kill()
    wait_until(transport, lambda _: "lost" in statuses(transport, "cam1"), "status lost")
    lost_at = len(verdicts())
    # then restarting it on the same address brings the inspections back, without a restart
    feed.start()
    wait_until(
        transport,
        lambda _: statuses(transport, "cam1").count("connected") >= 2,
        "status connected again",
    )
    wait_until(transport, lambda _: len(verdicts()) >= lost_at + 5, "5 more verdicts")
    sequence = statuses(transport, "cam1")
    assert sequence[0] == "connected", sequence
    assert sequence.index("lost") < len(sequence) - 1 - sequence[::-1].index("connected"), (
        f"connected again after the loss: {sequence}"
    )
    capture = next(c for c in run.companions if isinstance(c, CaptureSources))
    counters = capture.source("cam1").status_fields()
    assert int(str(counters["Reconnects"])) >= 1, counters
    assert run.service.stats.snapshot()["Errors"] == {}, "no error replies on the way"


def test_rtsp_camera_reconnects_after_the_server_is_killed(
    capture_run: CaptureRunFactory, rtsp_feed: RtspFeed
) -> None:
    _camera_survives_a_restart(capture_run, rtsp_feed)


def test_mjpeg_camera_reconnects_after_the_server_is_killed(
    capture_run: CaptureRunFactory, mjpeg_feed: MjpegFeed
) -> None:
    _camera_survives_a_restart(capture_run, mjpeg_feed)


def test_a_camera_that_never_answers_is_retried_without_stopping_the_service(
    capture_run: CaptureRunFactory,
) -> None:
    # given a camera URL where nothing listens
    run = capture_run(
        {
            "sources": [
                {"type": "camera", "id": "gone", "url": "rtsp://127.0.0.1:9/cam", "fps": "2",
                 "openTimeoutS": "1", "reconnectMaxS": "0.5"}
            ],
            "capture": {"triggerTopic": "triggers"},
        }
    )  # fmt: skip
    # when triggers arrive
    wait_until(run.transport, lambda _: "lost" in statuses(run.transport, "gone"), "lost")
    run.transport.send("triggers", b'{"RequestId": "t-1"}')
    # then each is answered NoFrame with its RequestId, and the source keeps retrying
    wait_until(run.transport, lambda _: any(r.get("RequestId") == "t-1" for r in results(run.transport)),
               "the trigger's reply")  # fmt: skip
    reply = next(r for r in results(run.transport) if r.get("RequestId") == "t-1")
    assert reply["Error"]["Code"] == "NoFrame", reply
    assert reply["Capture"]["TriggerId"] == "t-1", reply
    capture = next(c for c in run.companions if isinstance(c, CaptureSources))
    wait_until(run.transport, lambda _: int(str(capture.source("gone").status_fields()["Reconnects"])) >= 2,
               "two reconnect attempts")  # fmt: skip


def test_opening_what_is_not_there_says_what_was_tried(tmp_path: Path) -> None:
    for url, expected in (
        ("/dev/video63", "cannot open /dev/video63"),
        (str(tmp_path / "missing.mkv"), "no video file at"),
        (
            "rtsp://operator:hunter2@127.0.0.1:9/cam",
            "cannot open rtsp://operator:***@127.0.0.1:9/cam",
        ),
    ):
        config = CameraSourceConfig(id="c", url=url, fps=1.0, open_timeout_s=1.0)
        with pytest.raises(CaptureError) as raised:
            VideoStream.open(config)
        assert expected in str(raised.value), str(raised.value)
        assert "hunter2" not in str(raised.value), "passwords never reach messages"
