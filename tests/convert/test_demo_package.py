"""The committed demo package: converted, then served by ONNX Runtime with DLR's verdicts.

One conversion per test session (module fixture) into a copy of the package that carries the
model in its stage folder (`--into-package`), then `lfv-edge infer --runtime onnx` against
`--runtime dlr` on the synthetic production line's images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.cli import main
from lfv_edge.demo.embedded import embedded_package
from lfv_edge.demo.synthetic_line import generate_dataset
from lfv_edge.errors import DeviceError, ModelPackageError
from lfv_edge.inspection.imaging import encode_png
from lfv_edge.model.onnx_runner import (
    META_MANIFEST,
    OnnxRunner,
    OnnxSession,
    available_providers,
    load_onnx_runner,
)
from lfv_edge.model.package import read_model_package

pytestmark = pytest.mark.dlr


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo package converted with the CLI: model, report, package copy with the model."""
    folder = tmp_path_factory.mktemp("demo-convert")
    model = folder / "demo.onnx"
    package = folder / "demo-with-onnx"
    code = main(["convert", str(embedded_package()), str(model), "--into-package", str(package)])
    assert code == 0
    images = folder / "images"
    images.mkdir()
    for index, sample in enumerate(generate_dataset(12, seed=5, split="test")):
        (images / f"{index:02d}.png").write_bytes(encode_png(sample.image_rgb))
    return {"model": model, "package": package, "images": images, "folder": folder}


def test_every_demo_kernel_is_verified_and_dlr_agrees(converted: dict[str, Path]) -> None:
    report = json.loads((converted["folder"] / "demo.report.json").read_text())
    assert report["verified"] == report["total"] == 29
    assert report["model"] == str(converted["model"])
    assert report["vs_dlr"]["outputs"][0]["name"] == "mask"
    assert max(o["max_rel"] for o in report["vs_dlr"]["outputs"]) < 1e-5
    verdicts = report["verdicts"]
    assert len(verdicts) == 8  # the default synthetic images
    assert all(v["dlr_anomalous"] == v["onnx_anomalous"] for v in verdicts)
    assert all(v["mask_pixels_differing"] == 0 for v in verdicts)
    # the manifest travels in the model and beside it
    sidecar = (converted["folder"] / "demo.manifest.json").read_text()
    assert OnnxSession(converted["model"]).metadata()[META_MANIFEST] == sidecar
    assert json.loads(sidecar)["model_graph"]["stages"][0]["type"] == "mochi"


def _infer(
    package: Path, images: Path, runtime: str, capsys: pytest.CaptureFixture[str]
) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["infer", "--model", str(package), "--runtime", runtime, str(images)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_infer_with_onnx_runtime_gives_dlrs_verdicts(
    converted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dlr = _infer(converted["package"], converted["images"], "dlr", capsys)
    onnx = _infer(converted["package"], converted["images"], "onnx", capsys)
    assert len(dlr) == len(onnx) == 12
    anomalous = 0
    for a, b in zip(dlr, onnx, strict=True):
        ra, rb = a["DetectAnomalyResult"], b["DetectAnomalyResult"]
        assert isinstance(ra, dict)
        assert isinstance(rb, dict)
        assert ra["IsAnomalous"] == rb["IsAnomalous"], a["Image"]
        assert ra["Confidence"] == pytest.approx(rb["Confidence"], abs=1e-5)
        assert ra.get("AnomalyMask") == rb.get("AnomalyMask")  # the PNG mask, byte for byte
        anomalous += bool(ra["IsAnomalous"])
    assert 0 < anomalous < 12  # both verdicts occur


def test_onnx_runner_refuses_a_model_of_another_package(
    converted: dict[str, Path], make_package: object, tmp_path: Path
) -> None:
    other = make_package()  # type: ignore[operator]
    with pytest.raises(ModelPackageError, match="not converted from"):
        OnnxRunner.load(read_model_package(other), model=converted["model"])
    bare = tmp_path / "bare"
    shutil.copytree(other, bare)
    with pytest.raises(ModelPackageError, match="convert the package first"):
        OnnxRunner.load(read_model_package(bare))


def test_device_choice_for_the_onnx_runtime(converted: dict[str, Path]) -> None:
    package = read_model_package(converted["package"])
    runner, choice = load_onnx_runner(package, device="cpu", threads=1)
    assert choice.device == "cpu"
    assert runner.info.providers[0] == "CPUExecutionProvider"
    if "cuda" not in available_providers() and "tensorrt" not in available_providers():
        with pytest.raises(DeviceError, match="onnxruntime-gpu"):
            load_onnx_runner(package, device="gpu")
        _, auto = load_onnx_runner(package, device="auto")
        assert auto.device == "cpu"


def test_a_zipped_package_carries_the_model_and_runs_it(
    converted: dict[str, Path], tmp_path: Path
) -> None:
    from lfv_edge.convert.api import write_package_with_model

    source = read_model_package(embedded_package())
    target = write_package_with_model(source.root, "mochi", converted["model"], tmp_path / "p.zip")
    package = read_model_package(target)
    runner, _ = load_onnx_runner(package, device="cpu", threads=1)
    assert runner.info.model == package.stage_dir / "model.onnx"
    outputs = runner.run(np.zeros(package.stage.input_shape, dtype=np.float32))
    assert [o.shape for o in outputs] == [(1, 5, 256, 256), (1, 2)]
