"""The service core through the in-process MemoryTransport, with a real DLR model.

A `GatedRunner` wraps the real runner so a test can hold the model thread still and fill the
queue deterministically (no sleeps, no timing).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from lfv_edge.errors import InferenceError
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.networks import red_mean_for_probability
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.config import OverflowPolicy
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.transports.memory import MemoryTransport
from tests.conftest import PackageFactory
from tests.gated import GatedRunner
from tests.imagefiles import solid_rgb, write_image


@pytest.fixture(scope="module")
def loaded(make_package: PackageFactory) -> Inspector:
    return Inspector.load(
        read_model_package(make_package(PackageSpec(image_width=64, image_height=64))), device="cpu"
    )


@pytest.fixture
def runner(loaded: Inspector) -> GatedRunner:
    return GatedRunner(loaded.runner, open_gate=True)


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


def _service(
    loaded: Inspector, runner: GatedRunner, transport: MemoryTransport, **kwargs: object
) -> Service:
    inspector = Inspector(loaded.package, runner, device=loaded.device)
    return Service(inspector, [transport], stats_interval_s=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def service(
    loaded: Inspector, runner: GatedRunner, transport: MemoryTransport, tmp_path: Path
) -> Iterator[Service]:
    svc = _service(
        loaded,
        runner,
        transport,
        settings=ServiceSettings(image_roots=(tmp_path / "root",), max_payload_bytes=200_000),
        queue_size=64,
    )
    svc.start()
    yield svc
    runner.gate.set()
    svc.stop(10)


def _png(probability: float, size: int = 80) -> bytes:
    red = round(red_mean_for_probability(probability) * 255)
    ok, data = cv2.imencode(".png", solid_rgb(size, size, (red, 90, 60))[:, :, ::-1])
    assert ok
    return data.tobytes()


def _request(request_id: str, probability: float = 0.9, **extra: object) -> bytes:
    body = {
        "RequestId": request_id,
        "Body": base64.b64encode(_png(probability)).decode(),
        "ContentType": "image/png",
        **extra,
    }
    return json.dumps(body).encode()


def _replies(transport: MemoryTransport, count: int) -> list[dict[str, Any]]:
    return [json.loads(p.payload) for p in transport.wait_for(count, topic="results")]


def test_a_request_gets_an_lfv_verdict_with_identity_and_timings(
    service: Service, transport: MemoryTransport
) -> None:
    # when
    transport.deliver(_request("r1", 0.9, Metadata={"camera": "cam-3"}))
    transport.deliver(_request("r2", 0.1))
    # then
    first, second = _replies(transport, 2)
    assert first["RequestId"] == "r1", "the request id is echoed"
    result = first["DetectAnomalyResult"]
    assert isinstance(result, dict)
    assert result == {
        "Source": {"Type": "direct"},
        "IsAnomalous": True,
        "Confidence": result["Confidence"],
    }, "LFV shape"
    assert second["DetectAnomalyResult"]["IsAnomalous"] is False, "a normal part"
    assert first["Metadata"] == {"camera": "cam-3"}, "metadata is echoed untouched"
    assert first["Model"] == {
        "Name": service.inspector.package.name,
        "Version": service.inspector.package.version,
    }, "model identity"
    timings = first["TimingsMs"]
    assert isinstance(timings, dict)
    assert set(timings) == {"decode", "preprocess", "run", "postprocess", "total"}, (
        "per-stage timings"
    )
    assert str(first["Timestamp"]).endswith("Z"), "UTC timestamp"


def test_every_bad_input_gets_its_code_and_the_service_keeps_serving(
    service: Service, transport: MemoryTransport, tmp_path: Path
) -> None:
    # given an image root with a good image, and files outside it
    root = tmp_path / "root"
    root.mkdir()
    write_image(root / "ok.png", solid_rgb(80, 80, (250, 10, 10)))
    outside = write_image(tmp_path / "secret.png", solid_rgb(80, 80, (250, 10, 10)))
    (root / "link.png").symlink_to(outside)
    tiny = base64.b64encode(_png(0.5, size=32)).decode()
    cases = [
        (b"not json at all", "BadRequest"),
        (b'{"RequestId": "a", "Body": "x", ', "BadRequest"),
        (json.dumps({"RequestId": "b"}).encode(), "BadRequest"),
        (
            json.dumps({"RequestId": "c", "Body": "!!!", "ContentType": "image/png"}).encode(),
            "BadRequest",
        ),
        (json.dumps({"RequestId": "d", "ImagePath": str(outside)}).encode(), "PathRefused"),
        (
            json.dumps({"RequestId": "e", "ImagePath": str(root / "link.png")}).encode(),
            "PathRefused",
        ),
        (
            json.dumps({"RequestId": "f", "ImagePath": str(root / ".." / "secret.png")}).encode(),
            "PathRefused",
        ),
        (
            json.dumps({"RequestId": "g", "ImagePath": str(root / "missing.png")}).encode(),
            "ImageUnreadable",
        ),
        (
            json.dumps(
                {"RequestId": "h", "Body": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()}
            ).encode(),
            "ImageUnreadable",
        ),
        (json.dumps({"RequestId": "i", "Body": tiny}).encode(), "ImageTooSmall"),
        (
            json.dumps(
                {
                    "RequestId": "j",
                    "Frame": {"Width": 80, "Height": 80, "Encoding": "rgb8", "Data": "AAAA"},
                }
            ).encode(),
            "BadRequest",
        ),
        (json.dumps({"RequestId": "k", "Body": "x" * 300_000}).encode(), "PayloadTooLarge"),
        (json.dumps({"RequestId": "l", "Body": tiny, "Frame": {}}).encode(), "BadRequest"),
        (json.dumps({"RequestId": "m", "Body": tiny, "Camera": 3}).encode(), "BadRequest"),
    ]
    # when
    for payload, _ in cases:
        transport.deliver(payload)
    transport.deliver(json.dumps({"RequestId": "good", "ImagePath": str(root / "ok.png")}).encode())
    # then
    replies = _replies(transport, len(cases) + 1)
    for (payload, code), reply in zip(cases, replies[:-1], strict=True):
        assert reply["Error"]["Code"] == code, f"{payload[:60]!r} → {reply}"
    ids = [reply["RequestId"] for reply in replies]
    assert ids[1] is None, "no request id in broken JSON"
    assert ids[2] == "b", "the request id is recovered when the JSON parses"
    assert ids[11] == "k", "even for a payload that is too large"
    assert replies[-1]["RequestId"] == "good", (
        "the service still serves after every kind of bad input"
    )
    assert replies[-1]["DetectAnomalyResult"]["IsAnomalous"] is True, "and gives a verdict"
    errors = service.stats.snapshot()["Errors"]
    assert isinstance(errors, dict)
    assert sum(errors.values()) == len(cases), "each error is counted by code"


@pytest.mark.parametrize(
    ("policy", "refused"),
    [
        (OverflowPolicy.REJECT, {f"q{i}" for i in range(4, 11)}),
        (OverflowPolicy.DROP_OLDEST, {f"q{i}" for i in range(3, 10)}),
    ],
)
def test_a_full_queue_answers_busy_by_its_named_policy(
    loaded: Inspector,
    runner: GatedRunner,
    transport: MemoryTransport,
    policy: OverflowPolicy,
    refused: set[str],
) -> None:
    # given a queue of 1 and a pipeline filled deterministically: q0 in the (held) model,
    # q1 prepared and waiting for it, q2 held by the prepare stage (it cannot hand q2 on)
    svc = _service(
        loaded, runner, transport, settings=ServiceSettings(overflow=policy), queue_size=1
    )
    svc.start()
    try:
        runner.gate.clear()
        transport.deliver(_request("q0"))
        assert runner.entered.acquire(timeout=10), "q0 reached the model"
        for request_id in ("q1", "q2"):
            transport.deliver(_request(request_id))
            _wait_until(lambda: svc.queue_depth() == 0)  # the prepare stage took it
        # when q3 fills the queue and eight more arrive
        for i in range(3, 11):
            transport.deliver(_request(f"q{i}"))
        busy_early = {json.loads(p.payload)["RequestId"] for p in transport.wait_for(7)}
        runner.gate.set()
        # then exactly the policy's victims are refused, and every request is answered once
        replies = {str(r["RequestId"]): r for r in _replies(transport, 11)}
        assert sorted(replies) == sorted(f"q{i}" for i in range(11)), "each request answered once"
        busy = {rid for rid, r in replies.items() if "Error" in r}
        assert busy == refused, f"{policy.value}: refused {sorted(busy)}"
        assert busy_early == refused, "refusals are answered at once, before the model is free"
        assert all(replies[rid]["Error"]["Code"] == "Busy" for rid in busy), "refusals carry Busy"
        assert svc.stats.snapshot()["Errors"] == {"Busy": len(busy)}, "refusals are counted"
    finally:
        runner.gate.set()
        svc.stop(10)


def _wait_until(condition: object, timeout_s: float = 10.0) -> None:
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if condition():  # type: ignore[operator]
                done.set()
                return
            done.wait(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    assert done.wait(timeout_s), "condition not reached"


def test_stop_drains_what_was_received_and_then_refuses(
    loaded: Inspector, runner: GatedRunner, transport: MemoryTransport
) -> None:
    svc = _service(loaded, runner, transport, queue_size=8)
    svc.start()
    runner.gate.clear()
    for i in range(4):
        transport.deliver(_request(f"d{i}"))
    assert runner.entered.acquire(timeout=10), "the first request is in the model"
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(svc.stop(30)))
    stopper.start()
    _wait_until(lambda: not transport.deliver(_request("late")))
    runner.gate.set()
    stopper.join(30)
    assert result == [True], "stop() finished its work in time"
    assert sorted(str(json.loads(p.payload)["RequestId"]) for p in transport.published) == [
        "d0",
        "d1",
        "d2",
        "d3",
    ], "everything received before stop is answered; nothing after it is taken"
    assert transport.closed, "transports are closed last"


def test_an_inference_failure_is_answered_and_the_next_request_served(
    service: Service, runner: GatedRunner, transport: MemoryTransport
) -> None:
    runner.fail_with = InferenceError("kernel exploded (test)")
    transport.deliver(_request("boom"))
    transport.deliver(_request("after"))
    failed, after = _replies(transport, 2)
    assert failed["Error"] == {"Code": "InferenceFailed", "Message": "kernel exploded (test)"}, (
        "coded failure"
    )
    assert after["DetectAnomalyResult"]["IsAnomalous"] is True, "the model thread survived"


def test_replies_are_acked_after_publishing_and_not_when_publishing_fails(
    service: Service, transport: MemoryTransport
) -> None:
    acked: list[str] = []
    ack_seen = threading.Semaphore(0)

    def deliver(request_id: str) -> None:
        from lfv_edge.service.ports import IncomingMessage, ReplyRoute

        def ack() -> None:
            acked.append(request_id)
            ack_seen.release()

        service._on_message(
            IncomingMessage(_request(request_id), ReplyRoute("results", "memory"), ack=ack)
        )

    deliver("ok")
    assert ack_seen.acquire(timeout=10), "acked"
    assert [p for p in transport.published if json.loads(p.payload)["RequestId"] == "ok"], (
        "published before the ack"
    )
    transport.fail_publishes = True
    deliver("lost")
    deliver("probe")
    _wait_until(lambda: service.stats.snapshot()["PublishFailures"] == 2)
    assert acked == ["ok"], (
        "a reply that could not be published is not acked (the broker will redeliver)"
    )


def test_a_new_inspector_applies_from_the_next_message(
    service: Service, transport: MemoryTransport
) -> None:
    transport.deliver(_request("before", 0.7))
    assert _replies(transport, 1)[0]["DetectAnomalyResult"]["IsAnomalous"] is True, "0.7 ≥ 0.5"
    old = service.inspector
    service.replace_inspector(Inspector(old.package, old.runner, device=old.device, threshold=0.8))
    transport.deliver(_request("after", 0.7))
    reply = _replies(transport, 2)[1]
    assert reply["DetectAnomalyResult"]["IsAnomalous"] is False, (
        "0.7 < 0.8 after the threshold change"
    )
    assert reply["Threshold"] == 0.8, "the reply says which threshold was applied"
