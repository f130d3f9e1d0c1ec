"""Fixtures for the Edge Agent tests: real packages, a real gRPC server on a short Unix socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from lfv_edge.agent import edge_agent_pb2_grpc as pb2_grpc
from lfv_edge.agent.registry import Loader, ModelRegistry, ModelStatus
from lfv_edge.agent.server import AgentServer, OnVerdict
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.modelbuild.networks import red_mean_for_probability
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.wiring import model_loader
from tests.conftest import PackageFactory
from tests.gated import GatedRunner
from tests.imagefiles import solid_rgb

CLASSIFIER = PackageSpec()  # 64×64, P(anomaly) follows the mean red
SEGMENTER = PackageSpec(segmentation_head=True)  # 64×64, red → class 1, blue → class 2
WAIT_S = 60.0


def red_image(height: int, width: int, probability: float) -> np.ndarray:
    """An RGB image the controllable classifier scores `probability`."""
    red = round(red_mean_for_probability(probability) * 255)
    return solid_rgb(height, width, (red, 90, 60))


def defect_image(height: int, width: int) -> np.ndarray:
    """Grey with a red block (class 1, 'scratch') and a blue block (class 2, 'dent')."""
    image = solid_rgb(height, width, (120, 120, 120))
    image[: height // 4, : width // 4] = (250, 10, 10)
    image[height // 2 : height // 2 + height // 8, width // 2 :] = (10, 10, 250)
    return image


def make_stub(channel: grpc.Channel) -> Any:
    """The generated client stub, exactly as AWS's samples build it."""
    stub_class: Callable[[grpc.Channel], Any] = pb2_grpc.EdgeAgentStub
    return stub_class(channel)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder for sockets: sun_path holds 107 bytes, pytest's tmp_path can be longer."""
    folder = Path(tempfile.mkdtemp(prefix="lfva-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def classifier(make_package: PackageFactory) -> Path:
    return make_package(CLASSIFIER)


@pytest.fixture
def segmenter(make_package: PackageFactory) -> Path:
    return make_package(SEGMENTER)


class AgentFactory:
    """Starts AgentServers on sockets in one folder; stops them all at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.servers: list[AgentServer] = []
        self.channels: list[grpc.Channel] = []

    def __call__(
        self,
        models: Mapping[str, Path],
        *,
        loader: Loader | None = None,
        max_pending: int = 4,
        start: tuple[str, ...] = (),
        on_verdict: OnVerdict | None = None,
        socket_mode: int = 0o660,
        name: str = "agent.sock",
    ) -> AgentServer:
        registry = ModelRegistry(
            models, loader=loader or model_loader(None, device="cpu"), max_pending=max_pending
        )
        server = AgentServer(
            registry,
            socket=f"unix://{self.folder / name}",
            socket_mode=socket_mode,
            on_verdict=on_verdict,
            start_models=start,
        )
        server.start()
        self.servers.append(server)
        for model in start:
            info = registry.wait_for(model, (ModelStatus.RUNNING, ModelStatus.FAILED), WAIT_S)
            assert info.status == ModelStatus.RUNNING, f"{model} started: {info.status_message}"
        return server

    def stub(self, server: AgentServer) -> Any:
        channel = grpc.insecure_channel(f"unix://{server.socket_path}")
        self.channels.append(channel)
        return make_stub(channel)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers:
            server.stop(grace_s=5.0)


@pytest.fixture
def agent(socket_dir: Path) -> Iterator[AgentFactory]:
    factory = AgentFactory(socket_dir)
    yield factory
    factory.close()


class GatedLoader:
    """Loads packages for real and puts each model's runner behind a `GatedRunner`."""

    def __init__(self, *, open_gate: bool = False) -> None:
        self._load = model_loader(None, device="cpu")
        self.runners: dict[Path, GatedRunner] = {}
        self.open_gate = open_gate

    def __call__(self, path: Path) -> Inspector:
        inspector = self._load(path)
        gated = GatedRunner(inspector.runner)
        if self.open_gate:
            gated.gate.set()
        inspector.runner = gated
        self.runners[path] = gated
        return inspector
