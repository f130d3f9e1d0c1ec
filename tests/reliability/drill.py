"""Outage drills against a real `lfv-edge serve` process and a real mosquitto (127.0.0.1 only).

Used by tests/reliability/test_outages.py (short, CI-sized) and tools/outage_drill.py (figures).

A camera (a paho client with a persistent session) publishes requests at a steady rate from
its own thread and keeps publishing through the outage: while the broker is down paho queues
them (QoS 1) and sends them after it reconnects. A dashboard (persistent session, QoS 1)
collects the replies. Each drill counts requests sent, distinct RequestIds answered and
duplicate replies (at-least-once delivery: a duplicate carries the same RequestId).

    broker_outage   mid-stream, right after a burst of slow requests filled the service's
                    pipeline: mosquitto stops (SIGTERM, it saves its persistence) for `down_s`,
                    then starts again on the same port. Replies finished meanwhile go to the
                    service's on-disk spool and are published after the reconnect.
    service_kill    mid-stream, with slow requests in the pipeline: SIGKILL to `serve`, then
                    the same command again (same client id, same spool folder).
    kill_while_down both: the broker stops, replies are spooled on disk, `serve` is killed,
                    restarted while the broker is still down, then the broker comes back.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.mqtt.conftest import Broker, free_port

WAIT_S = 60.0  # bound on any one wait (a drained backlog, a restart)
SPOOLED = re.compile(r"mqtt connected .* spooled=(\d+)")


def _png(side: int, rgb: tuple[int, int, int]) -> bytes:
    image = np.empty((side, side, 3), np.uint8)
    image[:] = rgb[::-1]
    ok, data = cv2.imencode(".png", image)
    assert ok, "PNG encoding works"
    return data.tobytes()


def _slow_jpeg() -> bytes:
    # 2400×2400: decoding and resizing it takes tens of ms, so requests pile up in the service.
    y, x = np.mgrid[0:2400, 0:2400]
    bgr = np.stack([np.full_like(x, 90), (y * 255 // 2400), (x * 255 // 2400)], axis=-1)
    ok, data = cv2.imencode(".jpg", bgr.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok, "JPEG encoding works"
    return data.tobytes()


def request(request_id: str, image: bytes) -> bytes:
    body = {"RequestId": request_id, "Body": base64.b64encode(image).decode()}
    return json.dumps(body).encode()


class Client:
    """A paho MQTT 5 client with a persistent session that reconnects by itself."""

    def __init__(self, port: int, name: str, subscriptions: tuple[str, ...] = ()) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.max_queued_messages_set(0)  # keep every request published while offline
        self.port = port
        self.subscriptions = subscriptions
        self.connected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason: ReasonCode, properties: object) -> None:  # fmt: skip
        if reason.is_failure:
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()

    def _on_disconnect(self, *args: object) -> None:
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self.changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self.changed.notify_all()

    def connect(self) -> Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, 30, clean_start=False, properties=properties)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), f"{self.client._client_id!r} connected"
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ServeProcess:
    """`python -m lfv_edge serve`, stderr into a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT_S)
        self._stderr.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT_S)
        finally:
            self._stderr.close()

    def spooled_at_reconnects(self) -> list[int]:
        """The `spooled=N` of each (re)connect this process logged."""
        return [int(m.group(1)) for m in SPOOLED.finditer(self.log.read_text())]


class Camera:
    """Publishes requests at a steady rate from its own thread, through any outage."""

    def __init__(self, client: Client, topic: str, rate_hz: float, image: bytes) -> None:
        self.client = client
        self.topic = topic
        self.interval_s = 1.0 / rate_hz
        self.image = image
        self.sent: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self, request_id: str, image: bytes) -> None:
        with self._lock:  # one sequence of ids, whichever thread publishes
            self.sent.append(request_id)
            # QoS 1 while disconnected: paho queues it and sends it after the reconnect.
            self.client.client.publish(self.topic, request(request_id, image), qos=1)

    def _run(self) -> None:
        next_at = time.monotonic()
        number = 0
        while not self._stop.is_set():
            self.publish(f"s{number:05d}", self.image)
            number += 1
            next_at += self.interval_s
            self._stop.wait(max(next_at - time.monotonic(), 0.0))  # steady rate, not a poll

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


@dataclass
class DrillResult:
    """The figures of one drill."""

    scenario: str
    sent: int
    answered: int  # distinct RequestIds that got a reply
    replies: int
    duplicates: int  # replies beyond the first per RequestId
    missing: list[str]
    codes: Counter[str]  # "verdict" or the error code, per reply
    spooled: list[int]  # spooled=N logged by serve at each (re)connect, per process
    inconsistent: list[str] = field(default_factory=list)  # duplicates that disagree
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.scenario:<16} sent {self.sent:>5}  answered {self.answered:>5}  "
            f"missing {len(self.missing):>3}  duplicates {self.duplicates:>3}  "
            f"spooled at reconnect {self.spooled}  replies by kind {dict(self.codes)}  "
            f"({self.seconds:.1f} s)"
        )


class Drill:
    """One broker, one serve process (restartable), a camera and a dashboard."""

    def __init__(
        self,
        folder: Path,
        package: Path,
        *,
        rate_hz: float = 20.0,
        burst: int = 16,
        queue_size: int = 64,
    ) -> None:
        self.folder = folder
        self.package = package
        self.rate_hz = rate_hz
        self.burst = burst
        self.queue_size = queue_size
        (folder / "broker").mkdir(parents=True, exist_ok=True)
        self.broker = Broker(folder / "broker", free_port())
        self.topic = f"drill/{uuid.uuid4().hex[:8]}"
        self.client_id = f"drill-serve-{uuid.uuid4().hex[:8]}"
        self.spool = folder / "spool"
        self.processes: list[ServeProcess] = []
        self.fast_image = _png(64, (200, 60, 60))
        self.slow_image = _slow_jpeg()

    # --- parts -------------------------------------------------------------------------

    def start_serve(self, *, wait_online: bool = True) -> ServeProcess:
        args = [
            "--model", str(self.package), "--broker", self.broker.url,
            "--client-id", self.client_id, "--qos", "1",
            "--requests-topic", f"{self.topic}/requests", "--results-topic", f"{self.topic}/results",
            "--status-topic", f"{self.topic}/status", "--spool-dir", str(self.spool),
            "--queue-size", str(self.queue_size), "--stats-interval", "0", "--log-level", "INFO",
        ]  # fmt: skip
        process = ServeProcess(args, self.folder / f"serve{len(self.processes)}.log")
        self.processes.append(process)
        if wait_online:
            self.wait_online(len(self.processes))
        return process

    def wait_online(self, count: int) -> None:
        """Until the dashboard saw `count` online statuses (one per serve start)."""

        def online() -> int:
            return sum(
                1
                for topic, payload in self.dashboard.messages
                if topic == f"{self.topic}/status" and json.loads(payload)["Status"] == "online"
            )

        with self.dashboard.changed:
            ok = self.dashboard.changed.wait_for(lambda: online() >= count, WAIT_S)
        assert ok, f"serve came online ({online()} of {count}):\n{self._logs()}"

    def replies(self) -> list[dict[str, object]]:
        with self.dashboard.changed:
            raw = [p for t, p in self.dashboard.messages if t == f"{self.topic}/results"]
        return [json.loads(payload) for payload in raw]

    def wait_answered(self, ids: list[str], timeout_s: float = WAIT_S) -> bool:
        wanted = set(ids)

        def done() -> bool:
            answered = {
                json.loads(p)["RequestId"]
                for t, p in self.dashboard.messages
                if t == f"{self.topic}/results"
            }
            return wanted <= answered

        with self.dashboard.changed:
            return self.dashboard.changed.wait_for(done, timeout_s)

    def burst_and_wait_first(self) -> list[str]:
        """Publish `burst` slow requests; return once the first one is answered."""
        ids = [f"b{len(self.camera.sent):05d}-{i}" for i in range(self.burst)]
        for request_id in ids:
            self.camera.publish(request_id, self.slow_image)
        assert self.wait_answered(ids[:1]), f"the burst is being served:\n{self._logs()}"
        return ids

    def _logs(self) -> str:
        return "\n".join(p.log.read_text()[-3000:] for p in self.processes)

    # --- drills ------------------------------------------------------------------------

    def __enter__(self) -> Drill:
        self.broker.start()
        self.dashboard = Client(
            self.broker.port, "dashboard", (f"{self.topic}/results", f"{self.topic}/status")
        ).connect()
        self.start_serve()
        self.camera = Camera(
            Client(self.broker.port, "camera").connect(),
            f"{self.topic}/requests",
            self.rate_hz,
            self.fast_image,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.camera.stop()
        self.camera.client.close()
        self.dashboard.close()
        for process in self.processes:
            if process.process.poll() is None:
                process.kill()
        self.broker.stop(kill=True)

    def finish(self, scenario: str, started: float) -> DrillResult:
        """Stop the camera, wait for every answer (bounded), stop serve, count."""
        self.camera.stop()
        sent = list(self.camera.sent)
        self.wait_answered(sent)
        code = self.processes[-1].terminate()
        assert code == 0, f"the last serve drained and exited 0, got {code}:\n{self._logs()}"
        replies = self.replies()
        by_id: dict[str, list[dict[str, object]]] = {}
        for reply in replies:
            by_id.setdefault(str(reply["RequestId"]), []).append(reply)
        codes: Counter[str] = Counter()
        inconsistent = []
        for request_id, group in by_id.items():
            kinds = {_kind(r) for r in group}
            if len(kinds) > 1:
                inconsistent.append(request_id)
            codes.update(_kind(r) for r in group)
        answered = [i for i in sent if i in by_id]
        return DrillResult(
            scenario=scenario,
            sent=len(sent),
            answered=len(answered),
            replies=sum(len(by_id[i]) for i in answered),
            duplicates=sum(len(by_id[i]) - 1 for i in answered),
            missing=[i for i in sent if i not in by_id],
            codes=codes,
            # the first process's first connect is the start; every later one is a reconnect
            spooled=[
                n
                for index, process in enumerate(self.processes)
                for n in process.spooled_at_reconnects()[0 if index else 1 :]
            ],
            inconsistent=inconsistent,
            seconds=time.monotonic() - started,
        )


def _kind(reply: dict[str, object]) -> str:
    error = reply.get("Error")
    if isinstance(error, dict):
        return str(error.get("Code"))
    result = reply.get("DetectAnomalyResult")
    assert isinstance(result, dict), f"a verdict or an error: {reply}"
    return "verdict"


def broker_outage(
    folder: Path,
    package: Path,
    *,
    before_s: float,
    down_s: float,
    after_s: float,
    rate_hz: float,
    queue_size: int,
) -> DrillResult:
    """Stop mosquitto for `down_s` mid-stream (the camera keeps publishing), then restart it."""
    with Drill(folder, package, rate_hz=rate_hz, queue_size=queue_size) as drill:
        started = time.monotonic()
        pause = threading.Event()  # never set: waits below are durations of the scenario
        drill.camera.start()
        pause.wait(before_s)
        drill.burst_and_wait_first()
        drill.broker.stop()
        pause.wait(down_s)
        drill.broker.start()
        pause.wait(after_s)
        return drill.finish("broker-outage", started)


def service_kill(
    folder: Path, package: Path, *, before_s: float, after_s: float, rate_hz: float, queue_size: int
) -> DrillResult:
    """SIGKILL `serve` mid-stream with slow requests in its pipeline, then start it again."""
    with Drill(folder, package, rate_hz=rate_hz, queue_size=queue_size) as drill:
        started = time.monotonic()
        pause = threading.Event()
        drill.camera.start()
        pause.wait(before_s)
        drill.burst_and_wait_first()
        drill.processes[-1].kill()
        drill.start_serve()
        pause.wait(after_s)
        return drill.finish("service-kill", started)


def kill_while_down(
    folder: Path,
    package: Path,
    *,
    before_s: float,
    down_s: float,
    after_s: float,
    rate_hz: float,
    queue_size: int,
) -> DrillResult:
    """Broker down, replies spooled on disk, `serve` SIGKILLed and restarted, broker back."""
    with Drill(folder, package, rate_hz=rate_hz, queue_size=queue_size) as drill:
        started = time.monotonic()
        pause = threading.Event()
        drill.camera.start()
        pause.wait(before_s)
        burst = drill.burst_and_wait_first()
        drill.broker.stop()
        spooled = _wait_for_files(drill.spool, "*.reply", min(len(burst) // 4, 3))
        drill.processes[-1].kill()
        drill.start_serve(wait_online=False)  # it retries the broker in the background
        pause.wait(max(down_s - spooled, 0.0))
        drill.broker.start()
        drill.wait_online(2)
        pause.wait(after_s)
        return drill.finish("kill-while-down", started)


def _wait_for_files(folder: Path, pattern: str, count: int) -> float:
    """Seconds until `folder` holds `count` files matching `pattern` (a file system has no
    notification we can wait on portably; checked every 50 ms, bounded)."""
    started = time.monotonic()
    tick = threading.Event()
    while len(list(folder.glob(pattern))) < count:
        assert time.monotonic() - started < WAIT_S, f"{count} spooled replies in {folder}"
        tick.wait(0.05)
    return time.monotonic() - started
