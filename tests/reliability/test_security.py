"""Security of the long-running commands: no network but the broker, no secret in any log.

The network guard runs the command in a fresh interpreter whose socket layer lets through
only connections to the broker's 127.0.0.1 port (and Unix sockets), reports every attempt on
stderr as it happens (serve leaves with os._exit: no report at exit), and refuses the rest.
It sees what Python does (paho, DLR's phone-home through requests), not what C libraries do
with their own sockets (gRPC's core serves the agent's Unix socket).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.modelbuild.package import PackageSpec
from tests.agent.conftest import make_stub, red_image
from tests.conftest import PackageFactory
from tests.mqtt.conftest import WAIT_S, Broker, Peer, body_request, free_port, jpeg, red_rgb

GUARD = r"""
import os, socket, sys
port = int(os.environ["GUARD_BROKER_PORT"])
LOCAL = ("127.0.0.1", "::1", "localhost")

def note(verdict, kind, detail):
    sys.stderr.write(f"GUARD {verdict} {kind} {detail!r}\n")
    sys.stderr.flush()

def guarded(kind, real, allow):
    def call(*args, **kwargs):
        if not allow(*args):
            note("REFUSED", kind, args[1:] if kind.startswith("socket") else args)
            raise OSError(f"network disabled by the test ({kind})")
        note("ALLOWED", kind, args[1:] if kind.startswith("socket") else args)
        return real(*args, **kwargs)
    return call

own_ports = set()  # loopback ports this process listens on (paho's wake-up socket pair)
real_bind = socket.socket.bind

def bind(sock, address):
    real_bind(sock, address)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] in LOCAL:
        own_ports.add(sock.getsockname()[1])

def to_broker(sock, address, *rest):
    if sock.family == socket.AF_UNIX:
        return True
    if not isinstance(address, tuple) or address[0] not in LOCAL:
        return False
    return address[1] == port or address[1] in own_ports

socket.socket.bind = bind
socket.socket.connect = guarded("socket.connect", socket.socket.connect, to_broker)
socket.socket.connect_ex = guarded("socket.connect_ex", socket.socket.connect_ex, to_broker)
socket.socket.sendto = guarded("socket.sendto", socket.socket.sendto, lambda *a: False)
socket.getaddrinfo = guarded(
    "getaddrinfo", socket.getaddrinfo, lambda host, *a: host in LOCAL and a[:1] == (port,)
)
from lfv_edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _guarded(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-c", GUARD, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GUARD_BROKER_PORT": str(port)},
        )


def _guard_lines(log: Path, verdict: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(f"GUARD {verdict}")]


@pytest.fixture(scope="module")
def package(make_package: PackageFactory) -> Path:
    return make_package(PackageSpec(image_width=64, image_height=64))


@contextlib.contextmanager
def _broker(folder: Path, extra: str = "", *, anonymous: bool = True) -> Iterator[Broker]:
    folder.mkdir()
    broker = Broker(folder, free_port(), extra, anonymous=anonymous)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _serve_round_trip(
    broker: Broker, package: Path, log: Path, extra: list[str], peer: Peer
) -> tuple[int, list[dict[str, object]]]:
    """Run guarded `serve`, answer one request, SIGTERM it; (exit code, replies)."""
    topic = f"sec/{uuid.uuid4().hex[:8]}"
    process = _guarded(
        ["serve", "--model", str(package), "--broker", broker.url, "--client-id",
         f"sec-{uuid.uuid4().hex[:6]}", "--requests-topic", f"{topic}/requests",
         "--results-topic", f"{topic}/results", "--status-topic", f"{topic}/status",
         "--stats-interval", "0", *extra],
        broker.port, log,
    )  # fmt: skip
    try:
        peer.client.subscribe(f"{topic}/results", qos=1)
        peer.client.subscribe(f"{topic}/status", qos=1)
        peer.wait_for(1, f"{topic}/status", where=lambda m: m.json()["Status"] == "online")
        peer.publish(f"{topic}/requests", body_request("sec-1", jpeg(red_rgb(64, 64, 0.9))))
        replies = [m.json() for m in peer.wait_for(1, f"{topic}/results")]
        process.send_signal(signal.SIGTERM)
        return process.wait(WAIT_S), replies
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT_S)


def test_serve_connects_to_its_broker_and_nowhere_else(package: Path, tmp_path: Path) -> None:
    # given a broker, and serve under a guard that refuses any other connection
    with _broker(tmp_path / "broker") as broker:
        peer = Peer(broker.port).connect()
        log = tmp_path / "serve.log"
        try:
            # when it serves a request and stops
            code, replies = _serve_round_trip(broker, package, log, ["--log-level", "DEBUG"], peer)
        finally:
            peer.close()
    # then it talked to the broker only
    assert code == 0, f"a clean stop: {log.read_text()[-2000:]}"
    assert replies[0]["RequestId"] == "sec-1", "it served"
    refused = _guard_lines(log, "REFUSED")
    connects = [line for line in _guard_lines(log, "ALLOWED") if "socket.connect" in line]
    to_broker = [line for line in connects if f", {broker.port})" in line]
    assert not refused, f"no connection attempt but to the broker: {refused}"
    assert to_broker, "the guard saw the broker connection (it was active)"
    assert len(connects) - len(to_broker) <= 1, (
        f"besides the broker, only paho's own wake-up socket pair (127.0.0.1): {connects}"
    )


def _read_until(stream: Iterator[str], needle: str, seen: list[str]) -> None:
    """Append the lines of a pipe to `seen` up to the first containing `needle`."""
    for line in stream:
        seen.append(line)
        if needle in line:
            return
    pytest.fail(f"{needle!r} never appeared; the process wrote: {''.join(seen)}")


def test_the_agent_makes_no_network_connection(package: Path, tmp_path: Path) -> None:
    # given the agent under the same guard (no broker port is allowed: there is none)
    folder = Path("/tmp") / f"lfva-sec-{uuid.uuid4().hex[:6]}"  # sun_path is 107 bytes
    folder.mkdir()
    sock = folder / "agent.sock"
    stdout: list[str] = []
    stderr: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", GUARD, "--log-level", "DEBUG", "agent", "--socket",
         f"unix://{sock}", "--model", f"parts={package}", "--start", "parts"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GUARD_BROKER_PORT": "0"},
    ) as process:  # fmt: skip
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            _read_until(process.stdout, "serving on", stdout)
            _read_until(process.stderr, "model parts RUNNING", stderr)
            # when a client asks for a verdict over its Unix socket
            with grpc.insecure_channel(f"unix://{sock}") as channel:
                result = (
                    make_stub(channel)
                    .DetectAnomalies(
                        pb2.DetectAnomaliesRequest(
                            model_component="parts",
                            bitmap=pb2.Bitmap(
                                width=64, height=64, byte_data=red_image(64, 64, 0.9).tobytes()
                            ),
                        ),
                        timeout=WAIT_S,
                    )
                    .detect_anomaly_result
                )
            process.send_signal(signal.SIGTERM)
            code = process.wait(WAIT_S)
            stderr.extend(process.stderr)
        finally:
            if process.poll() is None:
                process.kill()
            sock.unlink(missing_ok=True)
            folder.rmdir()
    # then it served without a single network attempt
    output = "".join(stdout + stderr)
    assert result.is_anomalous, "the agent served"
    assert code == 0, f"a clean stop: {output[-2000:]}"
    assert "DEBUG" in output, "DEBUG lines were written (the guard ran the real command)"
    refused = [line for line in output.splitlines() if line.startswith("GUARD REFUSED")]
    assert not refused, f"no network connection or lookup: {refused}"


def test_the_mqtt_password_never_appears_in_any_output(package: Path, tmp_path: Path) -> None:
    # given a broker that requires a password, and serve given it in a file, logging at DEBUG
    password = f"pw-{uuid.uuid4().hex}"
    secrets_file = tmp_path / "mosquitto.passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(secrets_file), "lfv", password],
        check=True, capture_output=True,
    )  # fmt: skip
    password_file = tmp_path / "password.txt"
    password_file.write_text(password + "\n")
    wrong_file = tmp_path / "wrong.txt"
    wrong = f"wrong-{uuid.uuid4().hex}"
    wrong_file.write_text(wrong + "\n")
    with _broker(tmp_path / "broker", f"password_file {secrets_file}\n", anonymous=False) as broker:
        # (the test's own peer authenticates too)
        peer = Peer(broker.port)
        peer.client.username_pw_set("lfv", password)
        peer.connect()
        good_log, bad_log = tmp_path / "good.log", tmp_path / "bad.log"
        try:
            # when serve authenticates, serves a request and stops
            args = ["--log-level", "DEBUG", "--username", "lfv"]
            code, replies = _serve_round_trip(
                broker, package, good_log, [*args, "--password-file", str(password_file)], peer
            )
            # and when it is given a wrong password
            bad = _guarded(
                ["serve", "--model", str(package), "--broker", broker.url, "--requests-topic",
                 "a", "--results-topic", "b", *args, "--password-file", str(wrong_file)],
                broker.port, bad_log,
            )  # fmt: skip
            bad_code = bad.wait(WAIT_S)
        finally:
            peer.close()
    # then neither run printed the password, at any log level, in any stream
    assert code == 0, f"served with the password: {good_log.read_text()[-2000:]}"
    assert replies[0]["RequestId"] == "sec-1", "authenticated and served"
    assert "DEBUG" in good_log.read_text(), "DEBUG lines were written"
    assert password not in good_log.read_text(), "the password is never logged"
    assert bad_code == 1, f"a refused password exits 1: {bad_log.read_text()[-2000:]}"
    assert "Not authorized" in bad_log.read_text() or "Bad user name or password" in (
        bad_log.read_text()
    ), f"the refusal is reported: {bad_log.read_text()[-1500:]}"
    assert wrong not in bad_log.read_text(), "nor is a wrong one"
    assert base64.b64encode(password.encode()).decode() not in good_log.read_text(), (
        "not even base64-encoded"
    )
    assert json.dumps(password) not in good_log.read_text(), "nor quoted"
