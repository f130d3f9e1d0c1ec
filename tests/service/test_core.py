"""The service core: model swaps free the old model, prepare workers, observers, submitted frames.

Real DLR models from our builder, the real service core, the in-process MemoryTransport.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pybase64
import pytest

from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.modelbuild.networks import red_mean_for_probability
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.config import ModelConfig
from lfv_edge.service.core import Service
from lfv_edge.service.messages import Request
from lfv_edge.service.ports import IncomingMessage, InspectionRecord
from lfv_edge.service.wiring import load_inspector
from lfv_edge.transports.memory import MemoryTransport
from tests.conftest import PackageFactory

SIDE = 512  # a 3 MB input tensor: a leaked pool of them shows in RSS
COUNT = 300


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / (1 << 20)


def _frame_request(request_id: str, probability: float, side: int) -> bytes:
    red = round(red_mean_for_probability(probability) * 255)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[:] = (red, 90, 60)
    frame = {"Width": side, "Height": side, "Encoding": "rgb8",
             "Data": pybase64.b64encode(pixels.tobytes()).decode()}  # fmt: skip
    return json.dumps({"RequestId": request_id, "Frame": frame}).encode()


@pytest.fixture(scope="module")
def big_package(make_package: PackageFactory) -> Path:
    return make_package(PackageSpec(image_width=SIDE, image_height=SIDE))


def _load(package: Path) -> Inspector:
    return load_inspector(ModelConfig(path=package, device="cpu"), serving=False)


def test_fifty_model_swaps_under_load_free_every_old_model(big_package: Path) -> None:
    # given a service answering a steady stream of requests
    transport = MemoryTransport(stats_topic=None)
    service = Service(_load(big_package), [transport], queue_size=16, prepare_workers=2,
                      stats_interval_s=0)  # fmt: skip
    service.start()
    request = _frame_request("load", 0.9, SIDE)
    stop = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        while not stop.is_set():
            if len(transport.published) >= sent - 8:  # keep about 8 in flight, never refuse
                transport.deliver(request)
                sent += 1
            else:
                transport.wait_for(sent - 8, timeout_s=30)

    feeder = threading.Thread(target=load, daemon=True)
    feeder.start()
    old: list[weakref.ref[Inspector]] = []
    rss_after_ten = 0.0
    try:
        # when the model is replaced 50 times while requests keep coming
        for swap in range(50):
            answered = len(transport.published)
            old.append(weakref.ref(service.inspector))
            service.replace_inspector(_load(big_package))
            transport.wait_for(answered + 3, timeout_s=60)  # the new model answers under load
            if swap == 9:
                gc.collect()
                rss_after_ten = _rss_mib()
    finally:
        stop.set()
        feeder.join(30)
    transport.wait_for(sent, timeout_s=60)
    assert service.stop(30), "the service drains"
    gc.collect()
    rss_after_fifty = _rss_mib()
    # then every old inspector (DLR model, tensors) is gone, and memory did not grow with swaps
    alive = [i for i, ref in enumerate(old) if ref() is not None]
    assert alive == [], f"old inspectors still referenced after their last message: {alive}"
    replies = [json.loads(p.payload) for p in transport.published]
    assert len(replies) == sent, "every request got one reply"
    assert all("DetectAnomalyResult" in r for r in replies), "all verdicts, no errors"
    growth = rss_after_fifty - rss_after_ten
    print(f"rss after 10 swaps {rss_after_ten:.1f} MiB, after 50 {rss_after_fifty:.1f} MiB")
    # A leaked pool alone is 4 tensors × 3 MiB per swap: 40 swaps would keep ≥ 480 MiB.
    assert growth < 60, f"RSS grew {growth:.1f} MiB from swap 10 to swap 50"


def test_several_prepare_workers_answer_every_request_once_with_its_verdict(
    make_package: PackageFactory,
) -> None:
    # given a service with three prepare workers (each needs its own pre-processor: sharing
    # one mixed images up, about one wrong verdict in a few hundred)
    transport = MemoryTransport(stats_topic=None)
    service = Service(_load(make_package(PackageSpec())), [transport], queue_size=COUNT,
                      prepare_workers=3, stats_interval_s=0)  # fmt: skip
    service.start()
    names = [threading.current_thread().name]
    # when 300 requests, alternating anomalous and normal parts, arrive at once
    # (large frames: pre-processing long enough for the workers to overlap)
    for i in range(COUNT):
        transport.deliver(_frame_request(f"r{i}", 0.9 if i % 2 else 0.1, 256))
    replies = [json.loads(p.payload) for p in transport.wait_for(COUNT, timeout_s=60)]
    # then each is answered exactly once, with its own verdict, and stop drains
    ids = sorted(int(r["RequestId"][1:]) for r in replies)
    assert ids == list(range(COUNT)), "each request answered once"
    for reply in replies:
        index = int(reply["RequestId"][1:])
        assert reply["DetectAnomalyResult"]["IsAnomalous"] is bool(index % 2), reply["RequestId"]
    workers = {t.name for t in threading.enumerate() if t.name.startswith("lfv-prepare-")}
    assert len(workers) == 3, f"three prepare threads run: {sorted(workers)} ({names})"
    assert service.stop(30), "the sentinel reaches every worker and the model stage"
    assert not {t.name for t in threading.enumerate() if t.name.startswith("lfv-prepare-")}, (
        "every prepare worker ended"
    )


class _Recorder:
    """An observer keeping every record (the web view and capture keep theirs bounded)."""

    def __init__(self, *, wants_pixels: bool) -> None:
        self.wants_pixels = wants_pixels
        self.records: list[InspectionRecord] = []

    def observe(self, record: InspectionRecord) -> None:
        self.records.append(record)


def test_observers_see_verdicts_and_errors_and_a_submitted_frame_carries_its_fields(
    make_package: PackageFactory,
) -> None:
    # given a service with an observer that wants the decoded pixels
    transport = MemoryTransport(stats_topic=None)
    recorder = _Recorder(wants_pixels=True)
    service = Service(_load(make_package(PackageSpec())), [transport], stats_interval_s=0,
                      observers=[recorder])  # fmt: skip
    service.start()
    try:
        # when a JSON request, a broken one and a parsed frame from inside the process arrive
        transport.deliver(_frame_request("json-1", 0.9, 64))
        transport.deliver(b'{"RequestId": "bad-1", "Frame": 3}')
        pixels = np.zeros((64, 64, 3), dtype=np.uint8)
        route = transport.results_route()
        service.submit(
            IncomingMessage(
                b"",
                route,
                request=Request(request_id="cap-1", source=RawFrame(pixels, "rgb")),
                reply_fields={"Capture": {"SourceId": "cam1"}},
                source="cam1",
            )
        )
        replies = {
            r["RequestId"]: r for r in (json.loads(p.payload) for p in transport.wait_for(3))
        }
    finally:
        service.stop(10)
    # then the frame's reply went to the results topic with its Capture object, and the
    # observer saw all three, with pixels where there was an image
    assert replies["cap-1"]["Capture"] == {"SourceId": "cam1"}, "reply fields are top-level"
    assert "DetectAnomalyResult" in replies["cap-1"], "a verdict for the submitted frame"
    assert replies["bad-1"]["Error"]["Code"] == "BadRequest"
    by_id = {r.request_id: r for r in recorder.records}
    assert set(by_id) == {"json-1", "bad-1", "cap-1"}, "every reply is observed once"
    assert by_id["json-1"].inspection is not None
    assert by_id["json-1"].pixels is not None
    assert by_id["json-1"].pixels.shape == (64, 64, 3)
    assert by_id["bad-1"].error_code == "BadRequest"
    assert by_id["bad-1"].inspection is None
    assert by_id["cap-1"].source == "cam1"
    published = [p.payload for p in transport.published]
    assert by_id["cap-1"].payload in published, "the observer sees the payload as published"


def test_a_configured_model_arn_is_in_every_verdict(make_package: PackageFactory) -> None:
    # given a model configured with its LFV ARN
    arn = "arn:aws:lookoutvision:us-east-1:123456789012:model/parts/7"
    package = make_package(PackageSpec())
    inspector = load_inspector(
        ModelConfig(path=package, device="cpu", lookout_vision_model_arn=arn), serving=False
    )
    transport = MemoryTransport(stats_topic=None)
    service = Service(inspector, [transport], stats_interval_s=0)
    service.start()
    try:
        # when a request is answered
        transport.deliver(_frame_request("arn-1", 0.9, 64))
        (reply,) = [json.loads(p.payload) for p in transport.wait_for(1)]
    finally:
        service.stop(10)
    # then the reply names it beside the package's name and version
    assert reply["Model"]["Arn"] == arn
    assert reply["Score"] > 0.5
    assert reply["Threshold"] == 0.5, "Score and Threshold, as the agent's fields 5 and 6"


def test_a_stop_out_of_time_leaves_redeliverable_requests_and_answers_the_others_busy(
    make_package: PackageFactory,
) -> None:
    # given a held model and 40 waiting requests: half the broker would deliver again
    from tests.gated import GatedRunner

    base = _load(make_package(PackageSpec()))
    gated = GatedRunner(base.runner)
    inspector = Inspector(base.package, gated, device=base.device)
    transport = MemoryTransport(stats_topic=None)
    service = Service(inspector, [transport], queue_size=2, stats_interval_s=0,
                      waiting_max_bytes=1 << 20)  # fmt: skip
    service.start()
    for i in range(40):
        redelivered = i % 2 == 0
        transport.deliver(_frame_request(f"s{i}", 0.9, 64), can_wait=True,
                          redelivered_if_unanswered=redelivered)  # fmt: skip
    assert gated.entered.acquire(timeout=30), "the first request reached the model"
    # when the service must stop in 2 s and the model is released only after the last call
    threading.Timer(1.6, gated.gate.set).start()
    drained = service.stop(2.0)
    # then nothing waiting was started after the last call: redeliverable requests were left
    # unanswered (not acknowledged), the others answered Busy; what was in flight finished
    replies = {
        json.loads(p.payload)["RequestId"]: json.loads(p.payload) for p in transport.published
    }
    busy = sorted(k for k, r in replies.items() if r.get("Error", {}).get("Code") == "Busy")
    verdicts = sorted(k for k, r in replies.items() if "DetectAnomalyResult" in r)
    left = {f"s{i}" for i in range(40)} - set(replies)
    assert drained, "the workers finished in time"
    assert all(int(k[1:]) % 2 == 1 for k in busy), f"only non-redeliverable ones are Busy: {busy}"
    assert all(int(k[1:]) % 2 == 0 for k in left), f"only redeliverable ones are left: {left}"
    assert service.unanswered_at_stop == len(left)
    assert len(busy) + len(left) + len(verdicts) == 40, "none answered twice, none lost silently"
    assert len(verdicts) <= 6, f"at most what was in flight got a verdict: {verdicts}"
