"""Triggers over MQTT: `lfv-edge serve --camera URL --trigger-topic T` against a real mosquitto
and a real MJPEG camera; 200 triggers → 200 verdicts carrying the trigger ids, each on a frame
at most one frame interval old. Also the trigger message's rules (pure)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from lfv_edge.bench.feeds import LineFrames, MjpegFeed
from lfv_edge.capture.triggers import parse_trigger
from lfv_edge.errors import InputError
from lfv_edge.transports.memory import MemoryTransport
from tests.capture.conftest import CaptureRunFactory, results, wait_until
from tests.mqtt.conftest import Broker

pytestmark = pytest.mark.capture

TRIGGERS = 200
FEED_FPS = 20  # one frame every 50 ms
TRIGGER_RATE = 15.0  # a part every 67 ms: below the demo model's ~20 inspections a second


class _Line:
    """The line controller: publishes triggers, collects the verdicts (paho, MQTT 5)."""

    def __init__(self, broker: Broker, results_topic: str) -> None:
        self.replies: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.sent_at: dict[str, float] = {}
        self.latency_ms: dict[str, float] = {}
        self._changed = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe(results_topic, qos=1)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: Any) -> None:
        now = time.perf_counter()
        body = json.loads(message.payload)
        with self._changed:
            request_id = body.get("RequestId")
            if request_id in self.sent_at:
                self.latency_ms[request_id] = (now - self.sent_at[request_id]) * 1000.0
            self.replies[str(request_id)] = body
            self._changed.notify_all()

    def trigger(self, topic: str, request_id: str) -> None:
        with self._changed:
            self.sent_at[request_id] = time.perf_counter()
        payload = json.dumps({"RequestId": request_id, "Source": "cam1"})
        self._client.publish(topic, payload, qos=0)

    def wait(self, predicate: Any, what: str, timeout_s: float = 60.0) -> None:
        with self._changed:
            assert self._changed.wait_for(predicate, timeout_s), what

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_200_triggers_over_mqtt_get_200_verdicts_on_fresh_frames(
    broker: Broker, demo_model: Path, line_frames: LineFrames, tmp_path: Path
) -> None:
    # given serve with one camera (an MJPEG stream at 20 fps) taking triggers over MQTT
    topic = f"lfvtest/triggers/{os.getpid()}"
    feed = MjpegFeed(line_frames.folder, FEED_FPS)
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "lfv_edge", "serve", "--model", str(demo_model),
               "--broker", broker.url, "--requests-topic", f"{topic}/requests",
               "--results-topic", f"{topic}/results", "--client-id", f"trig-{os.getpid()}",
               "--camera", feed.url, "--trigger-topic", f"{topic}/trigger",
               "--queue-size", "32"]  # fmt: skip
    line = _Line(broker, f"{topic}/results")
    with log.open("ab") as output:
        serve = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        # the camera is up once a trigger gets a verdict (not NoFrame)
        deadline = time.monotonic() + 60
        probe = 0
        while True:
            assert serve.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"no verdict for a probe:\n{log.read_text()[-3000:]}"
            )
            probe += 1
            probe_id = f"probe-{probe}"
            line.trigger(f"{topic}/trigger", probe_id)
            with line._changed:
                line._changed.wait_for(lambda: probe_id in line.replies, 2.0)  # noqa: B023
            if "DetectAnomalyResult" in line.replies.get(probe_id, {}):
                break
        # when the line sends 200 triggers, one per part
        ids = [f"part-{n:04d}" for n in range(TRIGGERS)]
        # Parts do not arrive in step with the camera: at exactly 15 Hz against 20 fps every
        # third trigger would land on the same frame phase, so each run would sample only three
        # frame ages (p50 anywhere from 17 to 33 ms by chance). A seeded jitter of up to one
        # frame interval spreads triggers over every phase, which the age bounds below assume.
        jitter = random.Random(20).uniform
        start = time.perf_counter()
        for n, request_id in enumerate(ids):
            due = start + n / TRIGGER_RATE + jitter(0.0, 1.0 / FEED_FPS)
            while (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)  # the line's pace, not a synchronisation
            line.trigger(f"{topic}/trigger", request_id)
        line.wait(lambda: all(i in line.replies for i in ids), "a reply to every trigger")
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
        line.close()
        feed.stop()
    assert code == 0, log.read_text()[-3000:]
    # then 200 verdicts, each carrying its trigger's id, on a frame about one interval old
    replies = [line.replies[i] for i in ids]
    errors = [r["Error"] for r in replies if "Error" in r]
    assert errors == [], f"every trigger got a verdict: {errors[:3]}"
    for request_id, reply in zip(ids, replies, strict=True):
        capture = reply["Capture"]
        assert capture["TriggerId"] == request_id, capture
        assert capture["Source"] == "cam1", capture
        assert capture["Trigger"] == "topic", capture
    ages = sorted(float(r["Capture"]["FrameAgeMs"]) for r in replies)
    interval_ms = 1000.0 / FEED_FPS
    p50, p95, worst = ages[len(ages) // 2], ages[int(len(ages) * 0.95)], ages[-1]
    shown = f"frame age p50 {p50:.1f}, p95 {p95:.1f}, max {worst:.1f} ms"
    # A trigger takes the newest decoded frame, so its age is uniform over one frame interval
    # (median ≈ half of it); a buffered backlog would make every frame older than that.
    assert p50 <= 0.65 * interval_ms, f"freshest frames: {shown}"
    # Uniform ages put p95 at 0.95 of an interval before the trigger's own trip through the
    # broker (a few ms); one buffered frame would put it past 1.9 intervals.
    assert p95 <= 1.2 * interval_ms, f"≈ one frame interval ({interval_ms:.0f} ms): {shown}"
    # The camera is a Python process on a shared 2-core machine: its frames themselves arrive
    # up to ~35 ms late at times (inter-frame gaps p99 66 ms, max 84 ms at 20 fps measured with
    # no model running), and a late frame ages while nothing newer exists.
    assert worst <= 2 * interval_ms, f"no stale frame: {shown}"
    latencies = sorted(line.latency_ms[i] for i in ids)
    print(f"{shown}; trigger → verdict p50 {latencies[len(latencies) // 2]:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)]:.1f} ms")  # fmt: skip


def test_a_next_frame_trigger_waits_for_a_frame_decoded_after_it(
    capture_run: CaptureRunFactory, mjpeg_feed: MjpegFeed
) -> None:
    # given a camera whose triggers take the next frame, on the memory transport
    source = {"type": "camera", "id": "cam1", "url": mjpeg_feed.url, "triggerFrame": "next"}
    run = capture_run({"sources": [source], "capture": {"triggerTopic": "trig"}})

    def connected(_: object) -> bool:
        return any(r.get("Status") == "connected" for r in results(run.transport, "status"))

    wait_until(run.transport, connected, "connected")
    # when 10 triggers arrive (one bare, without Source: one camera listens on the topic)
    for n in range(10):
        body = b"" if n == 0 else json.dumps({"RequestId": f"n-{n}", "Metadata": {"n": n}}).encode()
        assert run.transport.send("trig", body), "subscribed"
        wait_until(run.transport, _count_at_least(run.transport, n + 1), f"reply {n}")
    # then every verdict's frame was decoded after its trigger: younger than the wait for it
    replies = results(run.transport)
    assert all("DetectAnomalyResult" in r for r in replies), replies[:2]
    assert replies[0]["RequestId"].startswith("cam1:"), "a bare trigger gets the source's own id"
    assert [r["Metadata"]["n"] for r in replies[1:]] == list(range(1, 10)), "Metadata is echoed"
    ages = [float(r["Capture"]["FrameAgeMs"]) for r in replies]
    assert max(ages) < 1000.0 / 20, f"a next frame is at most a few ms old when handed over: {ages}"


def _count_at_least(transport: MemoryTransport, count: int) -> Callable[[object], bool]:
    return lambda _: len(results(transport)) >= count


def test_bad_triggers_are_answered_with_codes(
    capture_run: CaptureRunFactory, mjpeg_feed: MjpegFeed
) -> None:
    cameras = [{"type": "camera", "id": name, "url": mjpeg_feed.url} for name in ("a", "b")]
    run = capture_run({"sources": cameras, "capture": {"triggerTopic": "trig"}})
    cases = {
        b"not json": None,
        b'{"RequestId": "r1", "Source": "nope"}': "r1",
        b'{"RequestId": "r2"}': "r2",  # two cameras listen: Source is required
        b'{"RequestId": "r3", "Sauce": "a"}': "r3",
    }
    for payload in cases:
        run.transport.send("trig", payload)
    wait_until(run.transport, lambda _: len(results(run.transport)) >= len(cases), "4 replies")
    replies = results(run.transport)
    assert sorted(str(r["RequestId"]) for r in replies) == sorted(str(i) for i in cases.values())
    assert {r["Error"]["Code"] for r in replies} == {"BadRequest"}, replies


def test_parse_trigger_rules() -> None:
    assert parse_trigger(b"") == (None, None, None), "a bare signal is a trigger"
    assert parse_trigger(b'{"RequestId": "x", "Source": "cam1"}') == ("x", "cam1", None)
    for bad in (b"[]", b'{"RequestId": 7}', b'{"Source": ""}', b'{"Metadata": 1}',
                b"{" * 10_000, b'{"RequestId": "' + b"x" * 300 + b'"}'):  # fmt: skip
        with pytest.raises(InputError) as raised:
            parse_trigger(bad)
        assert raised.value.code == "BadRequest", bad[:40]
