"""Requests of every source kind and every bad input, through a real mosquitto and the real model."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.service.config import OverflowPolicy
from tests.imagefiles import write_image
from tests.mqtt.conftest import (
    Broker,
    ObservedInspector,
    Peer,
    Running,
    body_request,
    jpeg,
    png,
    red_rgb,
    request_ids,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    write_image(root / "anomalous.png", red_rgb(80, 120, 0.9))
    write_image(root / "normal.png", red_rgb(80, 120, 0.1))
    return root


def test_image_path_under_a_root_round_trip(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    images: Path,
) -> None:
    # given a service that may read the images folder
    running = serve(broker.url, topic, image_roots=(images,))
    peer = peers(broker.port).connect(running.results)
    # when a camera names an anomalous and a normal image
    peer.publish(
        running.requests,
        json.dumps({"RequestId": "p1", "ImagePath": str(images / "anomalous.png")}),
    )
    peer.publish(running.requests, json.dumps({"RequestId": "p2", "ImagePath": "normal.png"}))
    # then each gets its verdict, shaped like DetectAnomalies
    replies = {r.json()["RequestId"]: r.json() for r in peer.wait_for(2, running.results)}
    assert replies["p1"]["DetectAnomalyResult"]["IsAnomalous"] is True, (
        "P(anomaly)=0.9 is anomalous"
    )
    assert replies["p2"]["DetectAnomalyResult"]["IsAnomalous"] is False, (
        "relative paths resolve under the root"
    )
    assert replies["p1"]["Model"] == {"Name": running.service.inspector.package.name,
                                      "Version": running.service.inspector.package.version}, "the reply names the model"  # fmt: skip
    assert set(replies["p1"]["TimingsMs"]) >= {"decode", "run", "total"}, (
        "stage timings are reported"
    )


def test_body_round_trip(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service
    running = serve(broker.url, topic)
    peer = peers(broker.port).connect(running.results)
    # when a JPEG Body arrives with its ContentType
    peer.publish(running.requests, body_request("b1", jpeg(red_rgb(100, 100, 0.9))))
    # then the verdict comes back with the request's id
    (reply,) = peer.wait_for(1, running.results)
    body = reply.json()
    assert body["RequestId"] == "b1", "the reply echoes RequestId"
    assert body["DetectAnomalyResult"]["IsAnomalous"] is True, "a red image is anomalous"
    assert 0.8 < body["Score"] < 1.0, f"the score follows the controllable network: {body['Score']}"


def test_frame_round_trip(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service
    running = serve(broker.url, topic)
    peer = peers(broker.port).connect(running.results)
    # when raw rgb8 pixels arrive as a Frame
    pixels = red_rgb(70, 90, 0.1)
    frame = {
        "Width": 90,
        "Height": 70,
        "Encoding": "rgb8",
        "Data": base64.b64encode(pixels.tobytes()).decode(),
    }
    peer.publish(running.requests, json.dumps({"RequestId": "f1", "Frame": frame}))
    # then it is inspected like an image
    (reply,) = peer.wait_for(1, running.results)
    assert reply.json()["DetectAnomalyResult"]["IsAnomalous"] is False, "P(anomaly)=0.1 is normal"


def test_bare_jpeg_payload_round_trip(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service
    running = serve(broker.url, topic)
    peer = peers(broker.port).connect(running.results)
    # when a camera publishes nothing but JPEG bytes
    peer.publish(running.requests, jpeg(red_rgb(64, 64, 0.9)))
    # then it gets a verdict without a RequestId
    (reply,) = peer.wait_for(1, running.results)
    body = reply.json()
    assert body["RequestId"] is None, "a bare image has no RequestId"
    assert body["DetectAnomalyResult"]["IsAnomalous"] is True, "the bare image was inspected"


def _bad_requests(images: Path, outside: Path) -> list[tuple[str | None, bytes, str]]:
    (images / "escape.png").symlink_to(outside)
    (images / "garbage.png").write_bytes(b"not an image at all, just text" * 10)
    wrong_frame = {
        "Width": 64,
        "Height": 64,
        "Encoding": "rgb8",
        "Data": base64.b64encode(b"\x00" * 100).decode(),
    }
    tiny = base64.b64encode(png(red_rgb(32, 32, 0.5))).decode()
    good = base64.b64encode(jpeg(red_rgb(64, 64, 0.5))).decode()
    return [
        ("outside-absolute", json.dumps({"RequestId": "outside-absolute", "ImagePath": str(outside)}).encode(), "PathRefused"),
        ("outside-symlink", json.dumps({"RequestId": "outside-symlink", "ImagePath": "escape.png"}).encode(), "PathRefused"),
        ("outside-dotdot", json.dumps({"RequestId": "outside-dotdot", "ImagePath": f"../{outside.name}"}).encode(), "PathRefused"),
        (None, b'{"RequestId": "bad-json", "Body": ', "BadRequest"),  # no id can be read back
        ("missing-source", json.dumps({"RequestId": "missing-source"}).encode(), "BadRequest"),
        ("two-sources", json.dumps({"RequestId": "two-sources", "Body": good, "ImagePath": "anomalous.png"}).encode(), "BadRequest"),
        ("bad-base64", json.dumps({"RequestId": "bad-base64", "Body": "not base64!!"}).encode(), "BadRequest"),
        ("wrong-frame-size", json.dumps({"RequestId": "wrong-frame-size", "Frame": wrong_frame}).encode(), "BadRequest"),
        ("unreadable", json.dumps({"RequestId": "unreadable", "ImagePath": "garbage.png"}).encode(), "ImageUnreadable"),
        ("too-large", json.dumps({"RequestId": "too-large", "Body": good, "Metadata": {"pad": "x" * 9000}}).encode(), "PayloadTooLarge"),
        ("too-small", json.dumps({"RequestId": "too-small", "Body": tiny}).encode(), "ImageTooSmall"),
    ]  # fmt: skip


def test_every_bad_input_gets_its_coded_error_and_the_service_keeps_serving(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    images: Path,
    tmp_path: Path,
) -> None:
    # given a service with an image root and an 8 KB payload limit, and an image outside the root
    outside = write_image(tmp_path / "secret.png", red_rgb(64, 64, 0.5))
    running = serve(broker.url, topic, image_roots=(images,), max_payload_bytes=8192, queue_size=64)
    peer = peers(broker.port).connect(running.results)
    cases = _bad_requests(images, outside)
    # when every kind of bad request arrives, then a good one
    for _, payload, _ in cases:
        peer.publish(running.requests, payload)
    peer.publish(running.requests, json.dumps({"RequestId": "after", "ImagePath": "anomalous.png"}))
    # then each bad one got exactly one error reply with its code, and the good one a verdict
    replies = peer.wait_for(len(cases) + 1, running.results)
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for reply in replies:
        body = reply.json()
        by_id.setdefault(body["RequestId"], []).append(body)
    for name, _, code in cases:
        got = by_id.get(name, [])
        assert len(got) == 1, f"{name}: exactly one reply, got {len(got)}"
        error = got[0].get("Error")
        assert isinstance(error, dict), f"{name}: an error reply, got {got[0]}"
        assert error["Code"] == code, f"{name}: expected {code}, got {error}"
    assert by_id["after"][0]["DetectAnomalyResult"]["IsAnomalous"] is True, (
        "the service kept serving"
    )


def test_mqtt5_response_topic_and_correlation_data(
    broker: Broker, topic: str, serve: Callable[..., Running], peers: Callable[..., Peer]
) -> None:
    # given a service and a requester that waits on its own response topic
    running = serve(broker.url, topic)
    response_topic = f"{topic}/client-7/responses"
    peer = peers(broker.port).connect(running.results, response_topic)
    # when it publishes with a Response Topic and Correlation Data, then a plain request
    peer.publish(running.requests, body_request("rr", jpeg(red_rgb(64, 64, 0.9))),
                 response_topic=response_topic, correlation_data=b"\x00corr-42\xff")  # fmt: skip
    peer.publish(running.requests, body_request("plain", jpeg(red_rgb(64, 64, 0.9))))
    # then the first reply goes to its response topic with the correlation data, not to results
    (answer,) = peer.wait_for(1, response_topic)
    assert answer.json()["RequestId"] == "rr", "the reply on the response topic is for rr"
    assert answer.correlation_data == b"\x00corr-42\xff", "correlation data is echoed byte for byte"
    results = peer.wait_for(1, running.results)
    assert request_ids(results) == ["plain"], (
        "only the plain request is answered on the results topic"
    )


@pytest.mark.parametrize(
    ("policy", "busy", "served"),
    [
        (OverflowPolicy.REJECT, ["r5", "r6"], ["r1", "r2", "r3", "r4"]),
        (OverflowPolicy.DROP_OLDEST, ["r4", "r5"], ["r1", "r2", "r3", "r6"]),
    ],
    ids=["reject", "drop_oldest"],
)
def test_a_full_queue_answers_busy_by_policy(
    broker: Broker,
    topic: str,
    serve: Callable[..., Running],
    peers: Callable[..., Peer],
    inspector: Inspector,
    policy: OverflowPolicy,
    busy: list[str],
    served: list[str],
) -> None:
    # given a queue of one and a model held busy: r1 in the model, r2 waiting for it, r3 prepared
    observed = ObservedInspector(inspector)
    running = serve(broker.url, topic, inspector_=observed, queue_size=1, overflow=policy)
    peer = peers(broker.port).connect(running.results)
    image = jpeg(red_rgb(64, 64, 0.9))
    for count, request_id in enumerate(["r1", "r2", "r3"], start=1):
        peer.publish(running.requests, body_request(request_id, image))
        observed.wait_prepared(count)
    assert observed.gated.entered.acquire(timeout=20), "r1 reached the model"
    # when three more arrive while the queue holds one
    for request_id in ["r4", "r5", "r6"]:
        peer.publish(running.requests, body_request(request_id, image))
    # then two are refused with Busy, chosen by the policy, before the model is released
    refused = peer.wait_for(2, running.results)
    assert sorted(request_ids(refused)) == busy, f"{policy.value}: Busy for {busy}"
    assert all(r.json()["Error"]["Code"] == "Busy" for r in refused), "refusals carry Busy"
    observed.gated.gate.set()
    replies = peer.wait_for(6, running.results)
    verdicts = [r.json()["RequestId"] for r in replies if "DetectAnomalyResult" in r.json()]
    assert sorted(verdicts) == served, f"{policy.value}: the others are inspected"
    assert len(replies) == 6, "every request got exactly one reply"
    np.testing.assert_equal(sorted(request_ids(replies)), [f"r{i}" for i in range(1, 7)])
