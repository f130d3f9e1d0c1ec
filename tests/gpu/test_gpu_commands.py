"""The product on the GPU: `lfv-edge inspect`, `infer --device auto|gpu` and `serve` with a GPU
package from our builder (the demo network), against the CPU package's answers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from lfv_edge.inspection.imaging import encode_png
from tests.gpu.conftest import DEMO_CPU, demo_set
from tests.mqtt.conftest import Broker, Peer, body_request, jpeg, peers, topic
from tests.mqtt.test_serve_process import ServeProcess, launch

__all__ = ["launch", "peers", "topic"]  # fixtures used here (broker: tests/conftest.py)


def _lfv_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lfv_edge", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo-images")
    for i, rgb in enumerate(demo_set(12)):
        (folder / f"{i:02d}.png").write_bytes(encode_png(rgb))
    return folder


def test_inspect_shows_the_gpu_build_and_chooses_the_gpu(demo_packages: tuple[Path, Path]) -> None:
    run = _lfv_edge("inspect", str(demo_packages[1]), "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["Device"]["auto"] == {
        "possible": True,
        "device": "gpu",
        "reason": "auto: NVIDIA GPU and a CUDA build of libdlr.so are present",
    }
    assert info["Device"]["cpu"]["possible"] is False
    assert info["Runtime"]["Origin"] == "package", "the stage's own libdlr.so"
    assert any(name.startswith("libcudart") for name in info["Runtime"]["GpuLibraries"])
    assert info["Runtime"]["MissingLibraries"] == []
    assert info["Modules"] == ["cuda (fatbin sm_90 + compute_75, 31 kernels)"]


@pytest.mark.parametrize("device", ["auto", "gpu"])
def test_infer_on_the_gpu_gives_the_cpu_packages_verdicts(
    demo_packages: tuple[Path, Path], images: Path, device: str
) -> None:
    # when
    gpu = _lfv_edge("infer", "--model", str(demo_packages[1]), "--device", device, str(images))
    cpu = _lfv_edge("infer", "--model", str(DEMO_CPU), "--device", "cpu", str(images))
    # then
    assert gpu.returncode == 0, gpu.stderr
    assert cpu.returncode == 0, cpu.stderr
    reason = "auto: NVIDIA GPU" if device == "auto" else "requested"
    assert f"lfv-edge: device gpu ({reason}" in gpu.stderr
    gpu_lines = [json.loads(line) for line in gpu.stdout.splitlines()]
    cpu_lines = [json.loads(line) for line in cpu.stdout.splitlines()]
    assert len(gpu_lines) == len(cpu_lines) == 12
    for a, b in zip(gpu_lines, cpu_lines, strict=True):
        ra, rb = a["DetectAnomalyResult"], b["DetectAnomalyResult"]
        assert ra["IsAnomalous"] == rb["IsAnomalous"], a["Image"]
        assert abs(ra["Confidence"] - rb["Confidence"]) <= 1e-4, a["Image"]
        areas_a = {x["Name"]: x["PixelAnomaly"]["TotalPercentageArea"] for x in ra["Anomalies"]}
        areas_b = {x["Name"]: x["PixelAnomaly"]["TotalPercentageArea"] for x in rb["Anomalies"]}
        for name in areas_a.keys() | areas_b.keys():  # a label of a few pixels may flip
            assert abs(areas_a.get(name, 0.0) - areas_b.get(name, 0.0)) < 1e-3, (a["Image"], name)


def test_serve_answers_over_mqtt_on_the_gpu(
    demo_packages: tuple[Path, Path], broker: Broker, topic: str,
    peers: Callable[..., Peer], launch: Callable[[list[str]], ServeProcess],
) -> None:  # fmt: skip
    # given
    serve = launch([
        "--model", str(demo_packages[1]), "--device", "gpu", "--broker", broker.url,
        "--client-id", f"gpu-{uuid.uuid4().hex[:8]}", "--requests-topic", f"{topic}/requests",
        "--results-topic", f"{topic}/results", "--status-topic", f"{topic}/status",
        "--stats-interval", "0", "--log-level", "INFO",
    ])  # fmt: skip
    peer = peers(broker.port).connect(f"{topic}/results", f"{topic}/status")
    peer.wait_for(1, f"{topic}/status", where=lambda m: m.json()["Status"] == "online")
    samples = demo_set(8)
    # when
    for i, rgb in enumerate(samples):
        peer.publish(f"{topic}/requests", body_request(f"g{i}", jpeg(rgb)))
    replies = peer.wait_for(len(samples), f"{topic}/results")
    # then
    bodies = {r.json()["RequestId"]: r.json() for r in replies}
    assert set(bodies) == {f"g{i}" for i in range(len(samples))}
    assert all("Error" not in b for b in bodies.values()), bodies
    verdicts = {b["DetectAnomalyResult"]["IsAnomalous"] for b in bodies.values()}
    assert verdicts == {True, False}, "the set has normal and anomalous parts"
    serve.process.terminate()
    assert serve.wait() == 0
    log = serve.log.read_text()
    assert "device gpu" in log, log
    assert "Traceback" not in log
