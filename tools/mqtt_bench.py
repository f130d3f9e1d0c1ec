"""Benchmark P2/P3 (docs/performance.md): `lfv-edge serve` through mosquitto vs a bare model loop.

Builds the bench package (1000×1000 input, `network="bench"`), starts a private mosquitto, and
for each TVM thread count measures in the same run, interleaved (bare, served, bare, served …):

* bare: `runner.run` in a loop on one prepared tensor, in its own process with the same
  thread count (what the model alone can do);
* served: 1080p JPEG `Body` requests published to `lfv-edge serve` with a window of requests
  in flight, replies counted (steady-state rate, pipeline fill and drain excluded).

Then, at half the served rate, the reply latency from the service's stats (received →
published) and as the client sees it (publish → reply). Prints a summary and writes JSON.

    .venv/bin/python tools/mqtt_bench.py --rounds 20 --threads 1,2 --out bench-mqtt.json

Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2  # noqa: TID251 - a benchmark tool, not part of the package
import numpy as np
import paho.mqtt.client as paho  # noqa: TID251 - the benchmark's own MQTT client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: TID251

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 4  # requests in flight: enough to keep decode and the model busy, below the queue (8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build_package(folder: Path) -> Path:
    from lfv_edge.model import cpu_runtime
    from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package

    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        sys.exit("the CPU runtime is missing: run scripts/setup")
    dest = folder / "bench-1000"
    spec = PackageSpec(image_width=1000, image_height=1000, network="bench")
    build_lfv_package(dest, spec, libdlr=runtime.library)
    return dest


def photo_jpeg() -> bytes:
    from lfv_edge.demo.synthetic_line import generate_sample

    sample = generate_sample(seed=11, surface="metal", defect="scratch", size=(1080, 1920))
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(sample.image_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    if not ok:
        sys.exit("JPEG encoding failed")
    return data.tobytes()


# --- the bare loop, in its own process ---------------------------------------------------


def bare_worker(package_dir: str, threads: int, image: str) -> None:
    """Read counts on stdin; answer each with the seconds `count` model runs took."""
    from lfv_edge.model.package import read_model_package
    from lfv_edge.inspection.pipeline import EncodedImage, Inspector

    inspector = Inspector.load(read_model_package(Path(package_dir)), device="cpu", threads=threads)
    tensor = inspector.prepare(EncodedImage(Path(image).read_bytes())).tensor
    for _ in range(3):
        inspector.runner.run(tensor)
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            inspector.runner.run(tensor)
        print(time.perf_counter() - start, time.process_time() - cpu, flush=True)


class Bare:
    def __init__(self, package: Path, threads: int, image: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--bare-worker", str(package), str(threads), str(image)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None or stdout.readline().strip() != "ready":
            sys.exit("the bare worker did not start")
        self.stdin, self.stdout = stdin, stdout

    def rate(self, count: int) -> tuple[float, float]:
        """Runs per second, and CPU milliseconds per run."""
        self.stdin.write(f"{count}\n")
        self.stdin.flush()
        elapsed, cpu = (float(part) for part in self.stdout.readline().split())
        return count / elapsed, cpu * 1000.0 / count

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(30)


# --- the served side -------------------------------------------------------------------


class Client:
    """Publishes requests and timestamps replies (paho's network thread records arrivals)."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        self.replies: dict[str, float] = {}
        self.stats: list[dict[str, object]] = []
        self.status: list[dict[str, object]] = []
        self.changed = threading.Condition()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{topic}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if message.topic.endswith("/requests"):
            return
        body = json.loads(message.payload)
        with self.changed:
            if message.topic.endswith("/results"):
                if "Error" in body:
                    print("error reply:", body["Error"], file=sys.stderr)
                self.replies[body["RequestId"]] = now
            elif message.topic.endswith("/stats"):
                self.stats.append(body)
            elif message.topic.endswith("/status"):
                self.status.append(body)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                sys.exit("timed out waiting for replies")


def request(request_id: str, b64: str) -> bytes:
    return b'{"RequestId":"%s","ContentType":"image/jpeg","Body":"%s"}' % (
        request_id.encode(),
        b64.encode(),
    )


class Served:
    def __init__(self, package: Path, threads: int, port: int, topic: str, stats_s: float) -> None:
        self.topic = topic
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", "serve", "--model", str(package),
             "--broker", f"mqtt://127.0.0.1:{port}", "--client-id", f"{topic}-svc",
             "--requests-topic", f"{topic}/requests", "--results-topic", f"{topic}/results",
             "--status-topic", f"{topic}/status", "--stats-topic", f"{topic}/stats",
             "--stats-interval", str(stats_s), "--threads", str(threads), "--queue-size", "8"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.client = Client(port, topic)
        self.client.wait(lambda: any(s["Status"] == "online" for s in self.client.status), 60)
        self.sequence = 0

    def _publish(self, b64: str) -> str:
        self.sequence += 1
        request_id = f"{self.topic}-{self.sequence}"
        self.client.client.publish(f"{self.topic}/requests", request(request_id, b64), qos=1)
        return request_id

    def rate(self, count: int, b64: str) -> tuple[float, float]:
        """Steady-state replies per second with WINDOW requests in flight; CPU ms per request."""
        cpu = _cpu_s(self.process.pid)
        ids = [self._publish(b64) for _ in range(WINDOW)]
        while len(ids) < count:
            done = len(ids) - WINDOW + 1

            def enough(done: int = done) -> bool:
                return sum(i in self.client.replies for i in ids) >= done

            self.client.wait(enough)
            ids.append(self._publish(b64))
        self.client.wait(lambda: all(i in self.client.replies for i in ids))
        times = sorted(self.client.replies[i] for i in ids)
        skip = WINDOW  # the first replies include filling the pipeline
        cpu_ms = (_cpu_s(self.process.pid) - cpu) * 1000.0 / len(ids)
        return (len(times) - skip - 1) / (times[-1] - times[skip]), cpu_ms

    def paced(self, count: int, rate: float, b64: str) -> list[float]:
        """Publish at `rate`/s; return client-side latencies (publish → reply) in ms."""
        sent: dict[str, float] = {}
        start = time.perf_counter()
        for n in range(count):
            target = start + n / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at = time.perf_counter()
            sent[self._publish(b64)] = sent_at
        self.client.wait(lambda: all(i in self.client.replies for i in sent))
        return [(self.client.replies[i] - t) * 1000.0 for i, t in sent.items()]

    def close(self) -> dict[str, object]:
        self.process.terminate()
        self.process.wait(60)
        self.client.client.disconnect()
        self.client.client.loop_stop()
        return self.client.stats[-1] if self.client.stats else {}


def _mosquitto(folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "message_size_limit 0\nmax_inflight_messages 0\nmax_queued_messages 0\n"
    )
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([mosquitto, "-c", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    sys.exit("mosquitto did not start")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.array(values)
    return {f"p{p}": round(float(np.percentile(array, p)), 1) for p in (50, 90, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=24, help="requests (and runs) per round")
    parser.add_argument("--threads", default="1,2", help="TVM thread counts to compare")
    parser.add_argument("--paced", type=int, default=150, help="requests at half the max rate")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    try:
        package = build_package(work)
        jpeg_bytes = photo_jpeg()
        image = work / "frame.jpg"
        image.write_bytes(jpeg_bytes)
        b64 = base64.b64encode(jpeg_bytes).decode()
        port = _free_port()
        broker = _mosquitto(work, port)
        by_threads: dict[int, dict[str, object]] = {}
        report: dict[str, object] = {
            "machine": {
                "cpu": _cpu_model(),
                "load_average_at_end": None,
                "cores": os.cpu_count(),
                "usable": len(os.sched_getaffinity(0)),
                "load_average_at_start": os.getloadavg(),
            },
            "jpeg_bytes": len(jpeg_bytes),
            "rounds": args.rounds,
            "batch": args.batch,
            "window": WINDOW,
            "by_threads": by_threads,
        }
        try:
            for threads in (int(t) for t in args.threads.split(",")):
                bare = Bare(package, threads, image)
                served = Served(package, threads, port, f"bench{threads}", stats_s=0)
                served.rate(args.batch, b64)  # warm-up
                bare_rates, served_rates, bare_cpu, served_cpu = [], [], [], []
                broker_cpu = _cpu_s(broker.pid)
                for _ in range(args.rounds):
                    rate, cpu = bare.rate(args.batch)
                    bare_rates.append(rate)
                    bare_cpu.append(cpu)
                    rate, cpu = served.rate(args.batch, b64)
                    served_rates.append(rate)
                    served_cpu.append(cpu)
                broker_cpu_ms = (
                    (_cpu_s(broker.pid) - broker_cpu) * 1000 / (args.rounds * args.batch)
                )
                bare.close()
                served.close()
                bare_median = statistics.median(bare_rates)
                served_median = statistics.median(served_rates)
                # P3: a fresh service (its stats window holds only these), at half the rate.
                paced = Served(package, threads, port, f"paced{threads}", stats_s=1)
                client_ms = paced.paced(args.paced, served_median / 2, b64)
                stats_list, expected = paced.client.stats, args.paced

                def final(stats: list[dict[str, object]] = stats_list, n: int = expected) -> bool:
                    return bool(stats) and stats[-1].get("Answered") == n

                paced.client.wait(final, 30)
                stats = paced.close()
                by_threads[threads] = {
                    "bare_per_s": round(bare_median, 2),
                    "served_per_s": round(served_median, 2),
                    "ratio": round(served_median / bare_median, 3),
                    "bare_cpu_ms_per_run": round(statistics.median(bare_cpu), 1),
                    "served_cpu_ms_per_request": round(statistics.median(served_cpu), 1),
                    "broker_cpu_ms_per_request": round(broker_cpu_ms, 2),
                    "bare_spread": [round(min(bare_rates), 2), round(max(bare_rates), 2)],
                    "served_spread": [round(min(served_rates), 2), round(max(served_rates), 2)],
                    "paced_rate_per_s": round(served_median / 2, 2),
                    "service_latency_ms": stats.get("LatencyMs"),
                    "service_added_latency_ms": stats.get("AddedLatencyMs"),
                    "stage_ms_ewma": stats.get("StageMsEwma"),
                    "client_round_trip_ms": _percentiles(client_ms),
                }
                print(json.dumps({threads: by_threads[threads]}, indent=1), flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
        report["machine"]["load_average_at_end"] = os.getloadavg()  # type: ignore[index]
        print(json.dumps(report, indent=1))
        if args.out:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--bare-worker":
        bare_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
