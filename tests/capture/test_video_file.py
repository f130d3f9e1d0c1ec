"""A recorded video replayed as a camera: the verdicts on its defect frames are the demo package's
verdicts on the same frames; anomalous frames are kept (original, overlay, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.demo.synthetic_line import generate_dataset
from lfv_edge.inspection.pipeline import RawFrame
from lfv_edge.service.config import ModelConfig
from lfv_edge.service.wiring import load_inspector
from tests.capture.conftest import CaptureRunFactory, results, wait_until

FRAMES = 24
SIZE = (240, 320)  # (height, width): small frames, the verdict does not need 1080p


def _write_video(path: Path) -> tuple[list[NDArray[np.uint8]], list[bool]]:
    """FFV1 (lossless) at 10 fps: the decoded frames are exactly the generated images."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 10, SIZE[::-1])
    assert writer.isOpened(), "OpenCV's FFmpeg writes FFV1"
    frames, defects = [], []
    for sample in generate_dataset(FRAMES, seed=11, split="test", size=SIZE):
        bgr = np.ascontiguousarray(sample.image_rgb[:, :, ::-1])
        writer.write(bgr)
        frames.append(bgr)
        defects.append(sample.is_anomalous)
    writer.release()
    return frames, defects


def test_replayed_video_verdicts_match_the_demo_package_on_the_same_frames(
    capture_run: CaptureRunFactory, demo_model: Path, tmp_path: Path
) -> None:
    # given a video of production-line frames, half of them with defects
    video = tmp_path / "line.mkv"
    frames, defects = _write_video(video)
    assert sum(defects) == FRAMES // 2, "plan_dataset balances normal and defect frames"
    # when it is replayed frame by frame as a camera source that keeps anomalous images
    kept = tmp_path / "kept"
    run = capture_run(
        {
            "sources": [{"type": "camera", "id": "line", "url": str(video),
                         "replay": "every_frame", "keep": "anomalous"}],
            "capture": {"keep": {"dir": str(kept)}},
        }
    )  # fmt: skip
    wait_until(run.transport, lambda _: len(results(run.transport)) >= FRAMES, "a verdict a frame")
    replies = {r["Capture"]["FrameIndex"]: r for r in results(run.transport)}
    assert sorted(replies) == list(range(FRAMES)), "every frame once, none twice"
    # then each verdict is the demo package's own verdict on that frame
    inspector = load_inspector(ModelConfig(path=demo_model))
    flagged = 0
    for index, frame in enumerate(frames):
        expected = inspector.inspect(RawFrame(frame, "bgr")).verdict
        got = replies[index]["DetectAnomalyResult"]
        assert got["IsAnomalous"] is expected.is_anomalous, f"frame {index}"
        assert got["Confidence"] == pytest.approx(expected.confidence, abs=1e-6), f"frame {index}"
        assert replies[index]["Capture"]["Trigger"] == "replay", replies[index]["Capture"]
        flagged += defects[index] and expected.is_anomalous
    assert flagged >= FRAMES // 4, f"the demo model finds most defect frames ({flagged} of 12)"
    # and the anomalous ones are kept, three files each
    anomalous = sorted(i for i, r in replies.items() if r["DetectAnomalyResult"]["IsAnomalous"])
    wait_until(run.transport, lambda _: len(list(kept.rglob("*.json"))) >= len(anomalous),
               "the kept files")  # fmt: skip
    sidecars = sorted(kept.rglob("*.json"))
    assert len(sidecars) == len(anomalous), "only anomalous frames are kept"
    for sidecar in sidecars:
        reply = json.loads(sidecar.read_text())
        assert reply["DetectAnomalyResult"]["IsAnomalous"] is True, sidecar
        original = cv2.imread(str(sidecar.with_name(sidecar.name.replace(".json", ".png"))))
        assert original is not None, "the original is kept"
        index = reply["Capture"]["FrameIndex"]
        assert np.array_equal(original, frames[index]), "… losslessly"
        overlay = cv2.imread(str(sidecar.with_name(sidecar.name.replace(".json", ".overlay.png"))))
        assert overlay is not None, "an overlay picture"
        assert overlay.shape[1] == SIZE[1], "as wide as the frame"


def test_realtime_replay_paces_at_the_file_frame_rate_and_loops(
    capture_run: CaptureRunFactory, tmp_path: Path
) -> None:
    # given a 10 fps video replayed in real time, looped, free-running at 4 inspections a second
    video = tmp_path / "line.mkv"
    _write_video(video)
    source = {"type": "camera", "id": "loop", "url": str(video), "fps": "4", "loop": True}
    run = capture_run({"sources": [source]})
    # when it runs past the end of the 2.4 s file
    wait_until(run.transport, lambda _: any(
        r["Capture"]["FrameIndex"] >= FRAMES + 4 for r in results(run.transport)
    ), "frames of the second pass")  # fmt: skip
    # then frames were read at the file's rate: each verdict's frame is about 2.5 frames apart
    indices = [r["Capture"]["FrameIndex"] for r in results(run.transport)]
    steps = np.diff(indices)
    assert np.all(steps > 0), f"fresh frames only: {indices}"
    assert 1.5 <= float(np.median(steps)) <= 4.0, f"10 fps read, 4 fps inspected: {indices}"
