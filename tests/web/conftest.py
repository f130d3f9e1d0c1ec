"""Fixtures of the web view tests: the demo model, the view beside a real service, a real browser.

* `live`: a `Service` (the embedded demo package on the real CPU libdlr.so, in-process
  transport) with a `WebView` on 127.0.0.1:<free port>;
* `serve_web`: `lfv-edge serve --http …` as a process on a real mosquitto (`broker`);
* `browser`: Debian's chromium, headless, driven by selenium through /usr/bin/chromedriver
  (never a driver download). Locally a missing browser skips with a message; in CI (`CI` set)
  it fails.
* `http_get`: raw HTTP requests (http.client), for status codes and headers exactly as sent.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lfv_edge.demo.embedded import embedded_package
from lfv_edge.demo.synthetic_line import DEFECTS, SURFACES, generate_sample
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.service.config import HttpConfig, parse_config
from lfv_edge.service.core import Service
from lfv_edge.transports.memory import MemoryTransport
from lfv_edge.web.view import WebView

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30.0
DEMO_COLORS = {"scratch": "#FF2EDC", "stain": "#14A3B3", "crack": "#F76902", "dent": "#9380FF"}


# --- parts ---------------------------------------------------------------------------------


def part_rgb(index: int, size: int = 320) -> np.ndarray:
    """The demo line's part `index`: surfaces cycle in fours, normal + defects in fives."""
    kinds = (None, *DEFECTS)
    sample = generate_sample(
        2026_000 + index, SURFACES[index % len(SURFACES)], kinds[index % len(kinds)], (size, size)
    )
    return sample.image_rgb


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok, "JPEG encoding works"
    return data.tobytes()


def body_request(request_id: str, image: bytes) -> bytes:
    return json.dumps(
        {
            "RequestId": request_id,
            "Body": base64.b64encode(image).decode(),
            "ContentType": "image/jpeg",
        }
    ).encode()


@pytest.fixture(scope="session")
def part_requests() -> list[bytes]:
    """Twenty demo-line parts as JSON requests (RequestId part-00 … part-19)."""
    return [body_request(f"part-{i:02d}", jpeg(part_rgb(i))) for i in range(20)]


# --- the view beside a service ---------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_inspector(cpu_libdlr: Path) -> Inspector:
    """The embedded demo package (segmentation + classification), loaded once."""
    return Inspector.load(read_model_package(embedded_package()), device="cpu", colors=DEMO_COLORS)


def http_config(**raw: object) -> HttpConfig:
    config = parse_config({"http": {"listen": "127.0.0.1:0", **raw}}).http
    assert config is not None
    return config


@dataclass
class Live:
    service: Service
    transport: MemoryTransport
    view: WebView

    @property
    def port(self) -> int:
        return self.view.server.port

    def wait_listed(self, count: int) -> None:
        """Block until `count` replies were published and turned into history entries."""
        self.transport.wait_for(count, topic="results", timeout_s=WAIT_S)
        assert self.view.feed.drain(WAIT_S), "the web view made every entry in time"


@pytest.fixture
def make_live(demo_inspector: Inspector) -> Iterator[Callable[..., Live]]:
    """`make_live(**http keys)` → a started service with its web view; stopped after the test."""
    made: list[Live] = []

    def make(queue_size: int = 64, **raw: object) -> Live:
        transport = MemoryTransport()
        service = Service(demo_inspector, [transport], queue_size=queue_size, stats_interval_s=0)
        view = WebView.for_service(http_config(**raw), service)
        service.start()
        view.start()
        live = Live(service, transport, view)
        made.append(live)
        return live

    yield make
    for live in made:
        live.view.stop(5.0)
        live.service.stop(10.0)


@pytest.fixture
def live(make_live: Callable[..., Live]) -> Live:
    return make_live()


# --- raw HTTP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    port: int,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    host: str = "127.0.0.1",
) -> Answer:
    """One request on a fresh connection; the answer as received."""
    connection = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        pairs = response.getheaders()
        return Answer(response.status, {k.lower(): v for k, v in pairs}, pairs, data)
    finally:
        connection.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are (malformed requests) and return what comes back until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `predicate` (an HTTP answer: no event to wait on) until true, bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.05)


# --- serve as a process ------------------------------------------------------------------------


class Process:
    """A `python -m lfv_edge …` child with its output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def terminate(self) -> int:
        """SIGTERM and the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT_S)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_S)
        self._out.close()


@pytest.fixture
def launch(tmp_path: Path, cpu_libdlr: Path) -> Iterator[Callable[[list[str]], Process]]:
    """`launch([...])` → a running `lfv-edge …` process, killed after the test if still up."""
    started: list[Process] = []

    def start(args: list[str]) -> Process:
        process = Process(args, tmp_path / f"process{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def wait_http(port: int, process: Process, path: str = "/healthz") -> None:
    """Block until the process answers `path` (fails with its log if it exits first)."""

    def up() -> bool:
        assert process.process.poll() is None, f"the process exited:\n{process.text()}"
        try:
            return http_get(port, path).status == 200
        except OSError:
            return False

    wait_until(up, f"{path} answered on port {port}", 60.0)


# --- a real browser --------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium through chromedriver (selenium); the window is 1400×1000."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = f"a real browser is needed: missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    # The driver's path is given: selenium never runs its manager (no download, no telemetry).
    driver = webdriver.Chrome(
        service=DriverService(executable_path=str(CHROMEDRIVER), log_output=subprocess.DEVNULL),
        options=options,
    )
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $LFV_EDGE_SCREENSHOTS (to look at them), else the test's folder."""
    folder = Path(os.environ.get("LFV_EDGE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
