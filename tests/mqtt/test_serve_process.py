"""`lfv-edge serve` as a real process: SIGTERM drains, SIGKILL leaves the will and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.mqtt.conftest import WAIT_S, Broker, Peer, body_request, free_port, jpeg, request_ids


class ServeProcess:
    """One `python -m lfv_edge serve` with its stderr in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lfv_edge", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait(self) -> int:
        try:
            return self.process.wait(WAIT_S)
        finally:
            self._stderr.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[list[str]], ServeProcess]]:
    started: list[ServeProcess] = []

    def start(args: list[str]) -> ServeProcess:
        process = ServeProcess(args, tmp_path / f"serve{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _slow_image() -> bytes:
    # A 2400×2400 JPEG: decoding and resizing it takes tens of ms, so requests pile up.
    y, x = np.mgrid[0:2400, 0:2400]
    rgb = np.stack([(x * 255 // 2400), (y * 255 // 2400), np.full_like(x, 90)], axis=-1)
    return jpeg(rgb.astype(np.uint8), quality=90)


def _serve_args(broker: Broker, topic: str, package: Path, client_id: str) -> list[str]:
    return [
        "--model", str(package), "--broker", broker.url, "--client-id", client_id,
        "--requests-topic", f"{topic}/requests", "--results-topic", f"{topic}/results",
        "--status-topic", f"{topic}/status", "--queue-size", "32", "--stats-interval", "0",
        "--log-level", "INFO",
    ]  # fmt: skip


def _online(peer: Peer, status: str, count: int = 1) -> None:
    peer.wait_for(count, status, where=lambda m: m.json()["Status"] == "online")


def test_sigterm_drains_in_flight_requests_and_exits_0(
    broker: Broker, topic: str, small_package: Path, peers: Callable[..., Peer],
    launch: Callable[[list[str]], ServeProcess],
) -> None:  # fmt: skip
    # given a running `lfv-edge serve` with 12 slow requests received
    serve = launch(_serve_args(broker, topic, small_package, f"proc-{uuid.uuid4().hex[:8]}"))
    peer = peers(broker.port).connect(f"{topic}/results", f"{topic}/status")
    _online(peer, f"{topic}/status")
    image = _slow_image()
    for i in range(12):
        peer.publish(f"{topic}/requests", body_request(f"t{i}", image))
    peer.wait_for(1, f"{topic}/results")
    # when it gets SIGTERM while working through them
    serve.process.send_signal(signal.SIGTERM)
    code = serve.wait()
    # then it answered every request exactly once, said offline, and exited 0
    log = serve.log.read_text()
    assert code == 0, f"exit code 0 after SIGTERM, got {code}:\n{log}"
    replies = peer.on(f"{topic}/results")
    assert sorted(request_ids(replies)) == sorted(f"t{i}" for i in range(12)), (
        f"every request answered once: {request_ids(replies)}"
    )
    offline = peer.wait_for(1, f"{topic}/status", where=lambda m: m.json()["Status"] == "offline")
    assert offline[0].json()["Reason"] == "stopped", "a clean stop, not the last will"
    assert "Traceback" not in log, f"no traceback in the log:\n{log}"


def test_sigkill_publishes_the_last_will_and_a_restart_answers_what_was_in_flight(
    broker: Broker, topic: str, small_package: Path, peers: Callable[..., Peer],
    launch: Callable[[list[str]], ServeProcess],
) -> None:  # fmt: skip
    # given a running `lfv-edge serve` with a stable client id and 12 slow requests received
    client_id = f"proc-{uuid.uuid4().hex[:8]}"
    status = f"{topic}/status"
    first = launch(_serve_args(broker, topic, small_package, client_id))
    peer = peers(broker.port).connect(f"{topic}/results", status)
    _online(peer, status)
    online = peer.on(status)[0].json()
    assert online["Model"]["Name"] == small_package.name, f"the status names the model: {online}"
    image = _slow_image()
    for i in range(12):
        peer.publish(f"{topic}/requests", body_request(f"k{i}", image))
    peer.wait_for(1, f"{topic}/results")
    # when the process is killed
    first.process.kill()
    first.wait()
    # then the broker publishes its retained last will
    (will,) = peer.wait_for(1, status, where=lambda m: m.json()["Status"] == "offline")
    assert will.json()["Reason"] == "connection lost", f"the will says why: {will.json()}"
    late = peers(broker.port).connect(status)
    assert late.wait_for(1, status)[0].json()["Status"] == "offline", "the will is retained"
    # when the service starts again with the same client id
    launch(_serve_args(broker, topic, small_package, client_id))
    # then every request is answered at least once (the unacknowledged ones were redelivered)
    expected = {f"k{i}" for i in range(12)}
    peer.wait_for(12, f"{topic}/results", where=lambda m: m.json()["RequestId"] in expected
                  and set(request_ids(peer.on(f"{topic}/results"))) >= expected)  # fmt: skip
    _online(peer, status, count=2)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "m.zip", "--requests-topic", "a", "--results-topic", "b"], 2, "--broker"),
        (
            [
                "--model",
                "m.zip",
                "--broker",
                "http://x",
                "--requests-topic",
                "a",
                "--results-topic",
                "b",
            ],
            2,
            "mqtt.broker",
        ),
        (
            [
                "--broker",
                "mqtt://127.0.0.1:1",
                "--requests-topic",
                "a",
                "--results-topic",
                "b",
                "--model",
                "/nonexistent/model.zip",
            ],
            3,
            "model",
        ),
    ],
    ids=["no-broker", "bad-scheme", "missing-package"],
)
def test_startup_errors_exit_non_zero_with_one_line(
    args: list[str], code: int, message: str, launch: Callable[[list[str]], ServeProcess]
) -> None:
    # given a serve command line that cannot work
    # when it runs
    process = launch(args)
    got = process.wait()
    # then it exits with the documented code and one line naming the problem
    lines = process.log.read_text().strip().splitlines()
    assert got == code, f"exit {code}, got {got}: {lines}"
    assert len(lines) == 1, f"one line, no traceback: {lines}"
    assert message in lines[0], f"the line names {message}: {lines[0]}"


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    # given a config file and flags that disagree on some keys
    from lfv_edge.cli import build_parser
    from lfv_edge.commands.serve import build_config

    config_file = tmp_path / "serve.json"
    config_file.write_text(json.dumps({
        "model": {"path": "/models/a.zip", "threads": "2"},
        "queue": {"size": 4, "overflow": "drop_oldest"},
        "mqtt": {"broker": "mqtt://file:1883", "requestsTopic": "lfv/{thingName}/requests",
                 "resultsTopic": "lfv/{thingName}/results", "qos": "1", "clientId": "{thingName}"},
    }))  # fmt: skip
    args = build_parser().parse_args(
        [
            "serve",
            "--config",
            str(config_file),
            "--broker",
            "mqtts://flag:8883",
            "--queue-size",
            "9",
            "--no-mask",
            "--image-root",
            "/a",
            "--image-root",
            "/b",
        ]
    )
    # when the configuration is built
    config = build_config(args, {"AWS_IOT_THING_NAME": "press-7"})
    # then flags win key by key, and the rest comes from the file
    assert config.mqtt is not None
    assert config.model is not None
    assert config.mqtt.broker == "mqtts://flag:8883", "--broker overrides mqtt.broker"
    assert config.mqtt.requests_topic == "lfv/press-7/requests", (
        "file values stay, {thingName} filled"
    )
    assert config.mqtt.client_id == "press-7", "{thingName} works in the client id"
    assert config.queue.size == 9, "--queue-size overrides queue.size"
    assert config.queue.overflow.value == "drop_oldest", "queue.overflow stays from the file"
    assert config.model.threads == 2, "strings as numbers are accepted from files"
    assert config.results.include_mask is False, "--no-mask"
    assert config.image_roots == (Path("/a"), Path("/b")), "--image-root repeats"
    assert os.environ.get("AWS_IOT_THING_NAME") != "press-7", (
        "the environment came in as an argument"
    )


def test_a_broker_refusing_us_after_start_exits_1_with_one_line(
    tmp_path: Path, topic: str, small_package: Path, launch: Callable[[list[str]], ServeProcess]
) -> None:
    # given a broker that accepts the TCP connection but refuses every client in its CONNACK
    refusing = Broker(tmp_path / "refusing", free_port(), anonymous=False)
    refusing.folder.mkdir()
    refusing.start()
    try:
        # when serve connects to it
        serve = launch(_serve_args(refusing, topic, small_package, f"proc-{uuid.uuid4().hex[:8]}"))
        code = serve.wait()
    finally:
        refusing.stop()
    # then it stops with exit 1 and one line naming the refusal
    lines = serve.log.read_text().strip().splitlines()
    assert code == 1, f"exit 1, got {code}: {lines}"
    assert "refused the connection: Not authorized" in lines[-1], (
        f"the last line says why: {lines[-1]}"
    )
    assert not any("Traceback" in line for line in lines), f"no traceback: {lines}"
