"""The processes a broker benchmark runs: mosquitto, `lfv-edge serve`, the bare model worker.

Plus the benchmark's own MQTT client, which publishes requests and timestamps replies on
paho's network thread. Each process is the real thing, started as users start it.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho  # noqa: TID251 - the benchmark's client, not the service's door
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: TID251

from lfv_edge.errors import LfvEdgeError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 300.0


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def proc_status_kb(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` memory field (VmRSS, VmHWM) in kB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- mosquitto ---------------------------------------------------------------------------


def terminate(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM a child that still runs, SIGKILL it if it has not exited within `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


class Mosquitto:
    """A private mosquitto on 127.0.0.1:<free port>, in-memory sessions, no size limits."""

    def __init__(self, folder: Path) -> None:
        executable = next(
            (found for name in MOSQUITTO_CANDIDATES if (found := shutil.which(name))), None
        )
        if executable is None:
            msg = "mosquitto is needed for the broker benchmarks (apt-get install mosquitto)"
            raise LfvEdgeError(msg)
        self.port = free_port()
        config = folder / "mosquitto.conf"
        # max_queued_messages 0: the broker never drops a backlog (the burst of P4 is one);
        # in-flight messages per client stay at mosquitto's default (20), as deployed.
        # `user`: started as root, mosquitto would switch to a user "mosquitto" that a bare
        # machine may not have.
        config.write_text(
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "message_size_limit 0\nmax_queued_messages 0\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        )
        self._log = folder / "mosquitto.log"
        with self._log.open("w") as log:
            self.process = subprocess.Popen([executable, "-c", str(config)], stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"mosquitto did not start:\n{_tail(self._log)}"
                raise LfvEdgeError(msg)
            time.sleep(0.02)

    def _accepting(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.process)


# --- the benchmark's MQTT client -----------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """One reply as the client saw it."""

    arrived: float  # perf_counter on the client's network thread
    error: str | None  # the error code, None for a verdict
    run_ms: float | None  # the model's run time from TimingsMs


class BenchClient:
    """Publishes requests, records replies, stats snapshots and status messages."""

    def __init__(
        self, port: int, prefix: str, *, max_outstanding: int = 64, keep_bodies: bool = False
    ) -> None:
        self.prefix = prefix
        self.requests_topic = f"{prefix}/requests"
        self.results_topic = f"{prefix}/results"
        self.status_topic = f"{prefix}/status"
        self.stats_topic = f"{prefix}/stats"
        self.replies: dict[str, Reply] = {}
        self.bodies: dict[str, dict[str, object]] = {}  # whole replies, with keep_bodies
        self._keep_bodies = keep_bodies
        self.stats: list[dict[str, object]] = []
        self.status: list[tuple[float, dict[str, object]]] = []
        self.other: dict[str, list[tuple[float, dict[str, object]]]] = {}  # subscribe_other's
        self.changed = threading.Condition()
        # Bounds the publishes paho holds in memory (a 10,000-request burst of 460 KB bodies
        # would otherwise sit in this process): publish() waits for a slot.
        self._slots = threading.BoundedSemaphore(max_outstanding)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{prefix}-client-{os.getpid()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(max_outstanding)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = _no_delay  # as serve's transport: no Nagle delay on acks
        self.client.connect("127.0.0.1", port)
        for topic in (self.results_topic, self.status_topic, self.stats_topic):
            self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, *_: object) -> None:
        self._slots.release()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(message.payload)
        with self.changed:
            if message.topic == self.results_topic:
                error = body.get("Error")
                timings = body.get("TimingsMs") or {}
                self.replies[str(body.get("RequestId"))] = Reply(
                    now, error.get("Code") if error else None, timings.get("run")
                )
                if self._keep_bodies:
                    self.bodies[str(body.get("RequestId"))] = body
            elif message.topic == self.stats_topic:
                self.stats.append(body)
            elif message.topic == self.status_topic:
                self.status.append((now, body))
            elif message.topic in self.other:
                self.other[message.topic].append((now, body))
            self.changed.notify_all()

    def publish(self, request_id: str, payload: bytes) -> float:
        """Publish one request (QoS 1); returns the perf_counter just before handing it over."""
        if not self._slots.acquire(timeout=REPLY_TIMEOUT_S):
            msg = "the broker stopped acknowledging requests"
            raise LfvEdgeError(msg)
        sent = time.perf_counter()
        self.client.publish(self.requests_topic, payload, qos=1)
        return sent

    def subscribe_other(self, topic: str) -> None:
        """Also record the JSON messages of `topic` (in `other[topic]`, with arrival times)."""
        with self.changed:
            self.other.setdefault(topic, [])
        self.client.subscribe(topic, qos=1)

    def publish_to(self, topic: str, payload: bytes) -> float:
        """Publish one message at QoS 0 (a trigger); returns the perf_counter just before."""
        if not self._slots.acquire(timeout=REPLY_TIMEOUT_S):  # on_publish releases it
            msg = "paho stopped writing messages"
            raise LfvEdgeError(msg)
        sent = time.perf_counter()
        self.client.publish(topic, payload, qos=0)
        return sent

    def wait(self, predicate: Callable[[], bool], timeout_s: float = REPLY_TIMEOUT_S) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout_s):
                msg = f"timed out after {timeout_s:g} s waiting on {self.prefix}"
                raise LfvEdgeError(msg)

    def wait_replies(self, request_ids: Sequence[str]) -> None:
        self.wait(lambda: all(i in self.replies for i in request_ids))

    def online_at(self) -> float | None:
        with self.changed:
            return next((t for t, s in self.status if s.get("Status") == "online"), None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _no_delay(client: paho.Client, userdata: object, sock: object) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- lfv-edge serve ------------------------------------------------------------------------


class ServeProcess:
    """`python -m lfv_edge serve` on the benchmark broker, one topic prefix per process."""

    def __init__(
        self,
        package: Path,
        broker: Mosquitto,
        prefix: str,
        folder: Path,
        *,
        threads: int | None = None,
        stats_interval_s: float = 0.0,
        extra_args: Sequence[str] = (),
        client_id: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.prefix = prefix
        self.log_path = folder / f"{prefix}-serve.log"
        command = [
            sys.executable, "-m", "lfv_edge", "serve", "--model", str(package),
            "--broker", broker.url, "--client-id", client_id or f"{prefix}-svc",
            "--requests-topic", f"{prefix}/requests", "--results-topic", f"{prefix}/results",
            "--status-topic", f"{prefix}/status", "--stats-topic", f"{prefix}/stats",
            "--stats-interval", f"{stats_interval_s:g}", *extra_args,
        ]  # fmt: skip
        if threads is not None:
            command += ["--threads", str(threads)]
        self._log: IO[str] = self.log_path.open("w")
        self.started_at = time.perf_counter()
        env = {**os.environ, **environment} if environment else None
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self._log, env=env
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_online(self, client: BenchClient) -> float:
        """Block until the retained `online` status arrives; seconds since the start."""
        try:
            client.wait(lambda: client.online_at() is not None, START_TIMEOUT_S)
        except LfvEdgeError:
            self.fail("did not come online")
        online = client.online_at()
        assert online is not None  # noqa: S101 - waited for above
        return online - self.started_at

    def fail(self, what: str) -> None:
        self.stop()
        msg = f"lfv-edge serve {what}:\n{_tail(self.log_path)}"
        raise LfvEdgeError(msg)

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def peak_rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (drain and exit), then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


# --- the service core in-process --------------------------------------------------------------


class InProcessService:
    """`python -m lfv_edge.bench.inprocess`: the service core behind the memory transport."""

    def __init__(
        self, package: Path, device: str, workers: int, queue_size: int, side: int
    ) -> None:
        command = [sys.executable, "-m", "lfv_edge.bench.inprocess", str(package), device,
                   str(workers), str(queue_size), str(side)]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None  # noqa: S101, PT018 - pipes requested
        self._stdin, self._stdout = stdin, stdout
        if stdout.readline().strip() != "ready":
            self.close()
            msg = "the in-process service did not start"
            raise LfvEdgeError(msg)

    def rate(self, kind: str, count: int, window: int) -> tuple[float, float]:
        """Replies per second and CPU ms per request; raises if any reply was an error."""
        self._stdin.write(f"{kind} {count} {window}\n")
        self._stdin.flush()
        rate, cpu_ms, errors = self._stdout.readline().split()
        if int(errors):
            msg = f"the in-process service answered {errors} of {count} {kind} with an error"
            raise LfvEdgeError(msg)
        return float(rate), float(cpu_ms)

    def close(self) -> None:
        if self.process.poll() is None:
            self._stdin.close()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# --- the bare model loop ---------------------------------------------------------------------


class BareWorker:
    """`python -m lfv_edge.bench.bare`: the package's model alone, in its own process."""

    def __init__(self, package: Path, threads: int, image: Path, device: str = "cpu") -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lfv_edge.bench.bare",
                str(package),
                str(threads),
                str(image),
                device,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None  # noqa: S101, PT018 - pipes requested
        self._stdin, self._stdout = stdin, stdout
        ready = stdout.readline().split()
        if not ready or ready[0] != "ready":
            self.close()
            msg = "the bare model worker did not start"
            raise LfvEdgeError(msg)
        self.run_ms = float(ready[1])

    def rate(self, count: int) -> tuple[float, float]:
        """Model runs per second over `count` runs, and CPU ms per run."""
        self._stdin.write(f"{count}\n")
        self._stdin.flush()
        elapsed, cpu = (float(part) for part in self._stdout.readline().split())
        return count / elapsed, cpu * 1000.0 / count

    def close(self) -> None:
        if self.process.poll() is None:
            self._stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# --- a page watching the web view ------------------------------------------------------------


class PageClient:
    """What a browser with the live page open does to `serve --http`, over plain HTTP.

    It follows the event stream (/api/events), fetches the thumbnail of every inspection
    announced, as the page does, and scrapes /metrics every `scrape_every_s` (Prometheus's
    default interval is 15 s; 5 s is a heavy scraper).
    """

    def __init__(self, port: int, *, scrape_every_s: float = 5.0) -> None:
        self.port = port
        self.events = 0
        self.thumbnails = 0
        self.scrapes = 0
        self._stop = threading.Event()
        self._scrape_every_s = scrape_every_s
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if time.monotonic() > deadline:
                msg = f"the web view on port {port} did not answer /healthz"
                raise LfvEdgeError(msg)
            time.sleep(0.05)
        self._stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._stream.request("GET", "/api/events")
        self._events = self._stream.getresponse()
        self._threads = [
            threading.Thread(target=self._follow, name="bench-page-events", daemon=True),
            threading.Thread(target=self._scrape, name="bench-page-metrics", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _follow(self) -> None:
        pictures = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        kind = ""
        try:
            while not self._stop.is_set():
                line = self._events.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    kind = text[len("event: ") :]
                elif text.startswith("data: ") and kind == "inspection":
                    self.events += 1
                    summary = json.loads(text[len("data: ") :])
                    if "thumb" in summary.get("Pictures", []):
                        pictures.request("GET", f"/api/inspections/{summary['Seq']}/thumb.jpg")
                        pictures.getresponse().read()
                        self.thumbnails += 1
        except (OSError, ValueError, http.client.HTTPException):
            return  # the stream closed (stop) or serve went away
        finally:
            pictures.close()

    def _scrape(self) -> None:
        scraper = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self._stop.wait(self._scrape_every_s):
                scraper.request("GET", "/metrics")
                scraper.getresponse().read()
                self.scrapes += 1
        except (OSError, http.client.HTTPException):
            return
        finally:
            scraper.close()

    def close(self) -> None:
        self._stop.set()
        self._stream.close()
        for thread in self._threads:
            thread.join(10)
