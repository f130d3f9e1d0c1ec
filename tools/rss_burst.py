"""Bursts: what a `lfv-edge serve` process answers, and its RSS, while thousands of requests arrive.

    .venv/bin/python tools/rss_burst.py --payload camera --messages 1000    # a camera's burst
    .venv/bin/python tools/rss_burst.py --payload camera --messages 10000
    .venv/bin/python tools/rss_burst.py                     # 10,000 mixed, valid and invalid

A real mosquitto (Debian's, its own defaults unless --unlimited-broker-queue) and a real
`lfv-edge serve` at its default settings (queue 8, Receive Maximum 64, waiting requests held up
to 512 MiB in memory, then spilled to disk) on 127.0.0.1, with the demo package. One publisher
sends the burst at QoS 1 as fast as the broker takes it: `camera` is 640×480 JPEG requests
(a camera at the line); `mixed` adds invalid requests of every kind (broken JSON, bad base64,
decompression-bomb headers, oversized payloads, deep nesting, garbage) and 1280×720 images.
Prints the replies by kind (verdict or error code), the serve process's RSS before the burst,
its peak (VmHWM) and after, the most spilled to disk, and whether every message was answered.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import cv2  # noqa: TID251 - a measuring tool, not part of the package
import numpy as np
import paho.mqtt.client as paho  # noqa: TID251 - the tool's own MQTT client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: TID251

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.mqtt.conftest.Broker

from tests.mqtt.conftest import Broker, free_port

from lfv_edge.demo.embedded import embedded_package
from lfv_edge.model import cpu_runtime

MAX_PAYLOAD = 1 << 20
WAIT_S = 1800.0


def _encode(ext: str, height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 3)
    ok, data = cv2.imencode(ext, image)
    if not ok:
        raise RuntimeError(ext)
    return data.tobytes()


def _kinds() -> list[tuple[str, bytes | None]]:
    """(kind, image or raw payload); the request JSON is built per message around it."""
    small = _encode(".png", 64, 64, 1)
    large = _encode(".jpg", 720, 1280, 2)
    bomb = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0"
    return [
        ("small", small), ("small", small), ("small", small), ("small", small),
        ("large", large), ("large", large),
        ("broken-json", None), ("bad-base64", None), ("bomb", bomb), ("oversized", None),
        ("deep", None), ("garbage", None),
    ]  # fmt: skip


def _camera_kinds() -> list[tuple[str, bytes | None]]:
    return [("camera", _encode(".jpg", 480, 640, seed)) for seed in range(8)]


def _payload(kind: str, data: bytes | None, request_id: str) -> bytes:
    if kind in {"small", "large", "bomb", "camera"}:
        if data is None:
            raise ValueError(kind)
        return json.dumps(
            {"RequestId": request_id, "Body": base64.b64encode(data).decode()}
        ).encode()
    if kind == "broken-json":
        return b'{"RequestId": "' + request_id.encode() + b'", "Body": '
    if kind == "bad-base64":
        return json.dumps({"RequestId": request_id, "Body": "!!not base64!!"}).encode()
    if kind == "oversized":
        filler = "A" * (MAX_PAYLOAD + 4096)
        return json.dumps({"RequestId": request_id, "Body": filler}).encode()
    if kind == "deep":
        return (
            b'{"RequestId": "'
            + request_id.encode()
            + b'", "Metadata": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}"
        )
    return os.urandom(64)  # garbage: no RequestId, answered with RequestId null


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    msg = f"{field} not in /proc/{pid}/status"
    raise RuntimeError(msg)


class Dashboard:
    """Counts replies by kind (verdict or error code)."""

    def __init__(self, port: int, topic: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rss-dash-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.kinds: Counter[str] = Counter()
        self.count = 0
        self.changed = threading.Condition()
        self.ready = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(30):
            raise RuntimeError("the dashboard did not subscribe")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        body = json.loads(message.payload)
        kind = body["Error"]["Code"] if "Error" in body else "verdict"
        with self.changed:
            self.kinds[kind] += 1
            self.count += 1
            self.changed.notify_all()

    def wait(self, count: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count >= count, timeout_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--payload", choices=("camera", "mixed"), default="mixed")
    parser.add_argument("--queue-size", type=int, help="serve's queue.size (default: its own)")
    parser.add_argument("--model", type=Path, help="package (default: the demo package)")
    parser.add_argument(
        "--unlimited-broker-queue",
        action="store_true",
        help="mosquitto with max_queued_messages 0 (its default, 1,000, drops the excess)",
    )
    args = parser.parse_args()
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        print("no CPU libdlr.so: run scripts/setup", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lfv-rss-burst-") as scratch:
        root = Path(scratch)
        package = args.model or embedded_package()
        (root / "broker").mkdir()
        extra = "max_queued_messages 0\n" if args.unlimited_broker_queue else ""
        broker = Broker(root / "broker", free_port(), extra + "set_tcp_nodelay true\n")
        broker.start()
        topic = f"rss/{uuid.uuid4().hex[:6]}"
        log = (root / "serve.log").open("w")
        serve = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", "serve", "--model", str(package),
             "--broker", broker.url, "--requests-topic", f"{topic}/requests",
             "--results-topic", f"{topic}/results", "--status-topic", f"{topic}/status",
             "--client-id", f"rss-serve-{uuid.uuid4().hex[:6]}", "--max-payload-bytes",
             str(MAX_PAYLOAD), "--stats-interval", "0", "--log-level", "WARNING",
             *(["--queue-size", str(args.queue_size)] if args.queue_size else [])],
            stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "LFV_EDGE_CACHE_DIR": str(root / "cache")},
        )  # fmt: skip
        try:
            return _burst(args, broker, topic, serve, root / "cache" / "waiting")
        finally:
            if serve.poll() is None:
                serve.terminate()
                serve.wait(60)
            log.close()
            broker.stop(kill=True)


def _spilled_bytes(folder: Path) -> int:
    total = 0
    for path in folder.glob("run-*/*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # taken back meanwhile
            continue
    return total


def _burst(
    args: argparse.Namespace,
    broker: Broker,
    topic: str,
    serve: subprocess.Popen[bytes],
    spill: Path,
) -> int:
    dashboard = Dashboard(broker.port, f"{topic}/results")
    online = threading.Event()
    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    watcher.on_connect = lambda c, *a: c.subscribe(f"{topic}/status", qos=1)
    watcher.on_message = lambda c, u, m: online.set() if b'"online"' in m.payload else None
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    if not online.wait(120):
        raise RuntimeError("serve did not come online")
    publisher = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"rss-camera-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    publisher.max_inflight_messages_set(1000)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    sock = publisher.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    kinds = _camera_kinds() if args.payload == "camera" else _kinds()
    # warm up: the model's first runs, thread pools, reply encoders
    for i in range(20):
        publisher.publish(f"{topic}/requests", _payload("small", kinds[0][1], f"warm-{i}"), qos=1)
    if not dashboard.wait(20, 120):
        raise RuntimeError("the warm-up requests were not answered")
    before = _rss_kib(serve.pid, "VmRSS")
    samples: list[int] = []
    spilled: list[int] = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append(_rss_kib(serve.pid, "VmRSS"))
            spilled.append(_spilled_bytes(spill))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for number in range(args.messages):
        kind, data = kinds[number % len(kinds)]
        sent[kind] += 1
        publisher.publish(f"{topic}/requests", _payload(kind, data, f"m{number}"), qos=1)
    published_s = time.monotonic() - started
    answered = dashboard.wait(20 + args.messages, WAIT_S)
    answered_s = time.monotonic() - started
    done.set()
    sampler.join()
    settle = threading.Event()
    settle.wait(2.0)  # let the allocator return what it will
    after = _rss_kib(serve.pid, "VmRSS")
    peak = _rss_kib(serve.pid, "VmHWM")
    publisher.loop_stop()
    watcher.loop_stop()
    dashboard.client.loop_stop()
    mib = 1024.0
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"messages {args.messages} sent in {published_s:.1f} s: {dict(sent)}")
    print(
        f"replies {dashboard.count - 20} of {args.messages} in {answered_s:.1f} s: {dict(dashboard.kinds)}"
    )
    print(
        f"serve RSS: before {before / mib:.1f} MiB, peak {peak / mib:.1f} MiB (VmHWM; "
        f"sampled max {max(samples, default=0) / mib:.1f}), after {after / mib:.1f} MiB"
    )
    print(f"most spilled to disk at once: {max(spilled) / (1 << 20):.1f} MiB")
    print("every message answered" if answered else "NOT every message was answered")
    return 0 if answered else 1


if __name__ == "__main__":
    raise SystemExit(main())
