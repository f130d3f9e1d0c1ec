"""The Unix socket: permissions, refusing a live server, replacing a stale file, removal on stop."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent.registry import ModelRegistry
from lfv_edge.agent.server import AgentServer, SocketInUseError, socket_path
from lfv_edge.errors import ConfigError
from lfv_edge.service.wiring import model_loader
from tests.agent.conftest import WAIT_S, AgentFactory, GatedLoader, make_stub, red_image


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_socket_gets_the_configured_mode_whatever_the_umask(
    agent: AgentFactory, classifier: Path, mode: int
) -> None:
    # given a permissive umask (the worst case: the socket must never be wider than asked)
    previous = os.umask(0)
    try:
        # when
        server = agent({"parts": classifier}, socket_mode=mode)
    finally:
        os.umask(previous)
    # then
    info = server.socket_path.lstat()
    assert stat.S_ISSOCK(info.st_mode), "it is a socket"
    assert stat.S_IMODE(info.st_mode) == mode, f"mode {oct(stat.S_IMODE(info.st_mode))}"
    assert info.st_gid == os.getegid(), "group: the agent's (ggc_group under Greengrass)"


def test_default_mode_is_0660(agent: AgentFactory, classifier: Path) -> None:
    # given / when
    server = agent({"parts": classifier})
    # then
    assert stat.S_IMODE(server.socket_path.lstat().st_mode) == 0o660, "owner and group only"


def test_a_live_server_on_the_path_is_refused(agent: AgentFactory, classifier: Path) -> None:
    # given a running agent
    first = agent({"parts": classifier})
    registry = ModelRegistry({"other": classifier}, loader=model_loader(None), max_pending=1)
    second = AgentServer(registry, socket=f"unix://{first.socket_path}")
    # when
    with pytest.raises(SocketInUseError) as caught:
        second.start()
    # then
    assert "another server is listening" in str(caught.value), f"says why: {caught.value}"
    described = agent.stub(first).DescribeModel(pb2.DescribeModelRequest(model_component="parts"))
    assert described.model_description.model_component == "parts", "the first agent still serves"


def test_a_stale_socket_file_is_replaced(
    agent: AgentFactory, classifier: Path, socket_dir: Path
) -> None:
    # given a socket file left behind by a process that died (bound, never unlinked)
    path = socket_dir / "agent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))
    dead.close()
    assert path.exists(), "the stale file exists"
    # when
    server = agent({"parts": classifier})
    # then
    described = agent.stub(server).DescribeModel(pb2.DescribeModelRequest(model_component="parts"))
    assert described.model_description.status == pb2.STOPPED, "the new agent serves on the path"


def test_a_regular_file_at_the_path_is_left_alone(classifier: Path, socket_dir: Path) -> None:
    # given
    path = socket_dir / "agent.sock"
    path.write_text("not a socket")
    registry = ModelRegistry({"parts": classifier}, loader=model_loader(None), max_pending=1)
    server = AgentServer(registry, socket=f"unix://{path}")
    # when
    with pytest.raises(SocketInUseError) as caught:
        server.start()
    # then
    assert "not a socket" in str(caught.value), f"says why: {caught.value}"
    assert path.read_text() == "not a socket", "the file is untouched"


def test_stop_removes_the_socket_and_refuses_calls(agent: AgentFactory, classifier: Path) -> None:
    # given
    server = agent({"parts": classifier}, start=("parts",))
    channel = grpc.insecure_channel(f"unix://{server.socket_path}")
    stub = make_stub(channel)
    # when
    server.stop(grace_s=5.0)
    # then
    assert not server.socket_path.exists(), "the socket is removed"
    assert server.wait(0), "wait() reports the stop"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListModels(pb2.ListModelsRequest(), timeout=5)
    channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "nothing serves any more"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("unix:///tmp/x.sock", Path("/tmp/x.sock")),
        ("/tmp/y.sock", Path("/tmp/y.sock")),
        ("unix:/tmp/z.sock", Path("/tmp/z.sock")),
    ],
)
def test_socket_targets(target: str, expected: Path) -> None:
    assert socket_path(target) == expected, f"{target} → {expected}"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("unix:///" + "d" * 120 + "/agent.sock", "Unix sockets allow 107"),
        ("dns:///localhost:50051", "only Unix domain sockets"),
        ("unix://relative.sock", "three slashes"),
    ],
    ids=["too-long", "tcp", "two-slashes"],
)
def test_bad_socket_targets_are_config_errors(target: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        socket_path(target)
    assert expected in str(caught.value), f"clear message: {caught.value}"


def test_stop_lets_in_flight_calls_finish(agent: AgentFactory, classifier: Path) -> None:
    # given a call held inside the model
    loader = GatedLoader()
    server = agent({"parts": classifier}, loader=loader, start=("parts",))
    stub = agent.stub(server)
    runner = loader.runners[classifier]
    image = red_image(64, 64, 0.9)
    in_flight = stub.DetectAnomalies.future(
        pb2.DetectAnomaliesRequest(
            model_component="parts",
            bitmap=pb2.Bitmap(width=64, height=64, byte_data=image.tobytes()),
        )
    )
    assert runner.entered.acquire(timeout=WAIT_S), "the call reached the model"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # when the agent is told to stop (SIGTERM) while it runs
        stopping = pool.submit(server.stop, 30.0)
        assert server.stopping.wait(WAIT_S), "stop() began"
        runner.gate.set()
        stopping.result(timeout=WAIT_S)
    # then
    assert in_flight.result(timeout=WAIT_S).detect_anomaly_result.is_anomalous, (
        "the in-flight call got its verdict"
    )
    assert not server.socket_path.exists(), "then the socket was removed"
