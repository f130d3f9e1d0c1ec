"""Capture tests: the real service and model, real camera feeds, real files.

`capture_run(raw)` builds what `serve` builds from a configuration (the service with its
transport, and the companions host.py adds) around a `MemoryTransport`, starts it and stops
it at the end of the test. Camera feeds run as their own processes on 127.0.0.1:
`MjpegFeed` (HTTP MJPEG, Python's http.server) and `RtspFeed` (GStreamer's RTSP server from
Debian's packages, under the distribution's Python). In CI (`$CI` set) a missing RTSP server
fails the test; elsewhere those tests skip, saying what to install.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lfv_edge.bench.feeds import LineFrames, MjpegFeed, RtspFeed, rtsp_available, write_line_frames
from lfv_edge.demo.embedded import embedded_package
from lfv_edge.host import Companion, build_companions, start_companions, stop_companions
from lfv_edge.service.config import merge_config, parse_config
from lfv_edge.service.core import Service
from lfv_edge.service.wiring import build_service, load_inspector
from lfv_edge.transports.memory import MemoryTransport, Published

WAIT_S = 30.0  # bound of any single wait; tests never sleep


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The committed demo package (com.lfvedge.DemoModel)."""
    return embedded_package({})


@pytest.fixture(scope="session")
def line_frames(tmp_path_factory: pytest.TempPathFactory) -> LineFrames:
    """16 production-line frames, 240×320 JPEG, half of them with defects."""
    return write_line_frames(tmp_path_factory.mktemp("frames"), 16, (240, 320))


def results(transport: MemoryTransport, topic: str = "results") -> list[dict[str, Any]]:
    """Every reply published on `topic`, as JSON."""
    return [json.loads(p.payload) for p in list(transport.published) if p.topic == topic]


def wait_until(
    transport: MemoryTransport, predicate: Callable[[list[Published]], bool], what: str
) -> None:
    """Wait (bounded) until `predicate(published)` holds (woken by each publish, else every 0.1 s)."""
    changed = transport._changed  # the transport's own condition: notified on every publish
    deadline = time.monotonic() + WAIT_S
    with changed:
        while not predicate(list(transport.published)):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; published: "
                            f"{[p.payload[:160] for p in transport.published[-8:]]}")  # fmt: skip
            changed.wait(0.1)


def statuses(transport: MemoryTransport, source: str) -> list[str]:
    """The Status values published for `source` on the `status` topic, in order."""
    return [body["Status"] for body in results(transport, "status") if body["Source"] == source]


@dataclass
class CaptureRun:
    """A running service with its capture companions, on a MemoryTransport."""

    service: Service
    transport: MemoryTransport
    companions: list[Companion]

    def stop(self) -> None:
        stop_companions(self.companions, 10.0)
        self.service.stop(10.0)


CaptureRunFactory = Callable[..., CaptureRun]


@pytest.fixture
def capture_run(demo_model: Path) -> Iterator[CaptureRunFactory]:
    """`capture_run({"sources": [...], ...}, model=PATH)` → a started CaptureRun."""
    runs: list[CaptureRun] = []

    def start(raw: Mapping[str, Any], *, model: Path | None = None) -> CaptureRun:
        base = {"model": {"path": str(model or demo_model)},
                "capture": {"statusTopic": "status"}}  # fmt: skip
        config = parse_config(merge_config(base, raw), {})
        assert config.model is not None
        transport = MemoryTransport()
        service = build_service(config, load_inspector(config.model, config.limits), [transport])
        service.start()
        companions = build_companions(config, service, transport, {})
        run = CaptureRun(service, transport, companions)
        runs.append(run)
        start_companions(companions)
        return run

    yield start
    for run in runs:
        run.stop()


def _need_rtsp() -> None:
    missing = rtsp_available()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the RTSP tests: {missing} (.ci/run installs it)")
    pytest.skip(missing)


@pytest.fixture
def rtsp_feed(line_frames: LineFrames) -> Iterator[RtspFeed]:
    """An H.264 RTSP camera of production-line frames at 15 fps on 127.0.0.1."""
    _need_rtsp()
    feed = RtspFeed(line_frames.folder, 15)
    yield feed
    feed.stop()


@pytest.fixture
def mjpeg_feed(line_frames: LineFrames) -> Iterator[MjpegFeed]:
    """An HTTP MJPEG camera of production-line frames at 20 fps on 127.0.0.1."""
    feed = MjpegFeed(line_frames.folder, 20)
    yield feed
    feed.stop()
