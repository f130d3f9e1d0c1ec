"""Capture in the Greengrass component: a camera triggered over local pub/sub, sources changed by
a deployment while the component runs, status on its topic, every call within accessControl."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lfv_edge.demo.synthetic_line import generate_dataset
from lfv_edge.inspection.imaging import encode_png
from tests.greengrass.conftest import StartComponent, reply
from tests.imagefiles import solid_rgb

LOCAL_RESULTS = "lfv/results"
STATUS = "lfv/capture/status"


def _video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), 10, (160, 120))
    for sample in generate_dataset(10, seed=4, split="test", size=(120, 160)):
        writer.write(np.ascontiguousarray(sample.image_rgb[:, :, ::-1]))
    writer.release()
    return path


def test_ipc_triggers_and_live_source_changes(
    start_component: StartComponent, tmp_path: Path
) -> None:
    camera = {"type": "camera", "id": "cam1", "url": str(_video(tmp_path / "line.mkv")),
              "loop": "true"}  # fmt: skip
    with start_component({"sources": [camera]}) as component:
        nucleus = component.nucleus
        # given the camera is up (the recipe's default trigger and status topics)
        nucleus.wait_for_subscription("local", "lfv/triggers", timeout_s=10)
        status = reply(nucleus.wait_for_local_publish(STATUS, timeout_s=10).binary_message)
        assert (status["Source"], status["Status"]) == ("cam1", "connected"), status
        # when a PLC adapter component triggers over local pub/sub (a JSON message)
        nucleus.publish_local("lfv/triggers", {"RequestId": "plc-0001", "Source": "cam1"})
        # then the verdict answers it on the local results topic
        verdict = reply(nucleus.wait_for_local_publish(LOCAL_RESULTS, timeout_s=10).binary_message)
        assert verdict["RequestId"] == "plc-0001", verdict
        assert "DetectAnomalyResult" in verdict, verdict
        assert verdict["Capture"]["TriggerId"] == "plc-0001", verdict["Capture"]
        assert verdict["Capture"]["FrameAgeMs"] < 1000, "a live frame (10 fps file)"
        # when a deployment adds a hot folder (the list is replaced whole)
        inbox = tmp_path / "in"
        folder = {"type": "folder", "id": "in", "path": str(inbox), "pollS": "0.05"}
        nucleus.update_configuration({"sources": [camera, folder]})
        nucleus.wait_for_local_publish(STATUS, timeout_s=15)  # the folder's "watching"
        (inbox / "part.png").write_bytes(encode_png(solid_rgb(64, 64, (200, 90, 60))))
        # then its file is inspected by the running process, and the camera still answers
        from_folder = reply(
            nucleus.wait_for_local_publish(LOCAL_RESULTS, timeout_s=10).binary_message
        )
        assert from_folder["Capture"]["File"] == "part.png", from_folder
        nucleus.publish_local("lfv/triggers", b'{"RequestId": "plc-0002"}')
        again = reply(nucleus.wait_for_local_publish(LOCAL_RESULTS, timeout_s=10).binary_message)
        assert again["RequestId"] == "plc-0002", "Source may be left out: one camera listens"
        assert nucleus.states == ["RUNNING"], "never restarted"
        assert nucleus.denied == [], "the recipe's accessControl covers triggers and status"
        assert component.alive(), component.logs()
        # and removing the sources stops them and drops the trigger subscription
        nucleus.update_configuration({"sources": []})
        nucleus.wait_for_unsubscribe("local", "lfv/triggers", timeout_s=15)
