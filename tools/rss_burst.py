"""Memory under a burst: RSS of a `lfv-edge serve` process while 10,000 requests arrive at once.

    .venv/bin/python tools/rss_burst.py                    # 10,000 messages, serve's defaults
    .venv/bin/python tools/rss_burst.py --messages 20000 --queue-size 64

A real mosquitto and a real `lfv-edge serve` (its default queue of 8, overflow `reject`,
--max-payload-bytes 1 MiB) on 127.0.0.1. One publisher sends the burst as fast as the broker
takes it: mixed valid and invalid requests (small and 1280×720 images, broken JSON, bad base64,
decompression-bomb headers, oversized payloads, deep nesting, bare garbage), far faster than
the model serves, so most are answered Busy. Prints the serve process's RSS before the burst,
its peak (the kernel's VmHWM), and after every reply arrived; the replies by kind; and
whether every message was answered.
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

from lfv_edge.model import cpu_runtime
from lfv_edge.modelbuild.compile import compile_kernels
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package

MAX_PAYLOAD = 1 << 20
WAIT_S = 600.0


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


def _payload(kind: str, data: bytes | None, request_id: str) -> bytes:
    if kind in {"small", "large", "bomb"}:
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
    parser.add_argument("--queue-size", type=int, default=8)
    args = parser.parse_args()
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        print("no CPU libdlr.so: run scripts/setup", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lfv-rss-burst-") as scratch:
        root = Path(scratch)
        package = root / "package"
        build_lfv_package(
            package,
            PackageSpec(image_width=224, image_height=224, segmentation_head=True),
            libdlr=runtime.library,
            kernels=compile_kernels(cache_dir=root / "kernels"),
        )
        (root / "broker").mkdir()
        # No per-client queue limit (mosquitto's default of 1,000 would drop the burst there).
        broker = Broker(
            root / "broker", free_port(), "max_queued_messages 0\nset_tcp_nodelay true\n"
        )
        broker.start()
        topic = f"rss/{uuid.uuid4().hex[:6]}"
        log = (root / "serve.log").open("w")
        serve = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", "serve", "--model", str(package),
             "--broker", broker.url, "--requests-topic", f"{topic}/requests",
             "--results-topic", f"{topic}/results", "--status-topic", f"{topic}/status",
             "--client-id", f"rss-serve-{uuid.uuid4().hex[:6]}", "--queue-size", str(args.queue_size),
             "--max-payload-bytes", str(MAX_PAYLOAD), "--stats-interval", "0", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            return _burst(args, broker, topic, serve)
        finally:
            if serve.poll() is None:
                serve.terminate()
                serve.wait(60)
            log.close()
            broker.stop(kill=True)


def _burst(
    args: argparse.Namespace, broker: Broker, topic: str, serve: subprocess.Popen[bytes]
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
    kinds = _kinds()
    # warm up: the model's first runs, thread pools, reply encoders
    for i in range(20):
        publisher.publish(f"{topic}/requests", _payload("small", kinds[0][1], f"warm-{i}"), qos=1)
    if not dashboard.wait(20, 120):
        raise RuntimeError("the warm-up requests were not answered")
    before = _rss_kib(serve.pid, "VmRSS")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(_rss_kib(serve.pid, "VmRSS"))

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
    print("every message answered" if answered else "NOT every message was answered")
    return 0 if answered else 1


if __name__ == "__main__":
    raise SystemExit(main())
