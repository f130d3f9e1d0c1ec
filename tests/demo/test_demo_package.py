"""The committed demo package is exactly what tools/demo_model/export.py builds from its weights.

Rebuilds the package from tools/demo_model/weights.npz + model.json with our builder (gcc
compiles the kernels), then checks manifest, graph and params against the committed zip and
runs both through the real libdlr.so: same outputs, sane probabilities, right verdicts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.demo.synthetic_line import LABEL_NAMES, generate_sample
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.inspection.preprocess import Preprocessor
from lfv_edge.model.cpu_runtime import require_cpu_runtime
from lfv_edge.model.manifest import decode_manifest
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import DlrRunner
from lfv_edge.model.tvm_graph import parse_graph
from lfv_edge.model.tvm_params import decode_params

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "demo_model"
COMMITTED = REPO / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
STAGE_FILES = {"compiled.meta", "compiled.params", "compiled.so", "compiled_model.json"}
INPUT_SHAPE = (1, 3, 256, 256)

pytestmark = pytest.mark.dlr


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rebuilt")
    folder = out / "package"
    completed = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "export.py"),
            "--out",
            str(out / "demo.zip"),
            "--folder",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, f"export.py failed:\n{completed.stderr}"
    return folder


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("committed")
    with zipfile.ZipFile(COMMITTED) as archive:
        archive.extractall(folder)
    return folder


def _run(stage_dir: Path, tensors: list[NDArray[np.float32]]) -> list[list[NDArray[np.float32]]]:
    runner = DlrRunner.load(
        stage_dir, library=require_cpu_runtime().library, input_shape=INPUT_SHAPE
    )
    return [runner.run(tensor) for tensor in tensors]


def test_committed_zip_is_a_small_lfv_package_without_libdlr() -> None:
    # when
    with zipfile.ZipFile(COMMITTED) as archive:
        names = set(archive.namelist())
    # then
    assert names == {"manifest.json"} | {f"mochi/{n}" for n in STAGE_FILES}, f"LFV layout: {names}"
    assert COMMITTED.stat().st_size < 5 * 1024 * 1024, "the shipped package stays under 5 MB"


def test_manifest_matches_the_rebuild_and_the_training_record(
    rebuilt: Path, committed: Path
) -> None:
    # given
    ours = json.loads((committed / "manifest.json").read_text())
    theirs = json.loads((rebuilt / "manifest.json").read_text())
    record = json.loads((TOOLS / "model.json").read_text())
    # when
    manifest = decode_manifest((committed / "manifest.json").read_bytes())
    # then
    assert ours == theirs, "manifest.json is what export.py writes"
    assert manifest.stage.threshold == record["threshold"], "threshold chosen on validation"
    assert manifest.image_classes.names == ("anomaly", "normal"), "LFV class names"
    assert manifest.stage.class_normal_ids == (1,), "normal is class 1"
    assert manifest.pixel_classes.names == LABEL_NAMES, "pixel classes are the generator's labels"
    assert manifest.stage.input_shape == INPUT_SHAPE, "256×256 RGB input"


def test_graph_and_params_match_the_rebuild_and_the_weights(rebuilt: Path, committed: Path) -> None:
    # given
    stage, fresh = committed / "mochi", rebuilt / "mochi"
    # when
    graph = parse_graph((stage / "compiled_model.json").read_bytes())
    params = decode_params((stage / "compiled.params").read_bytes())
    fresh_params = decode_params((fresh / "compiled.params").read_bytes())
    # then
    assert json.loads((stage / "compiled_model.json").read_text()) == json.loads(
        (fresh / "compiled_model.json").read_text()
    ), "graph JSON is what the builder writes"
    assert graph.output_shapes() == [(1, len(LABEL_NAMES), 256, 256), (1, 2)], "mask, then score"
    assert list(params) == list(fresh_params), "same weights in the same order"
    with np.load(TOOLS / "weights.npz") as weights:
        for name, stored in params.items():
            array = stored.to_numpy()
            assert np.array_equal(array, fresh_params[name].to_numpy()), f"{name} differs"
            layer, _, kind = name.rpartition("_")
            assert np.array_equal(array, weights[f"{layer}.{kind}"]), f"{name} is weights.npz's"
    assert (stage / "compiled.so").read_bytes()[:4] == b"\x7fELF", "kernels are an ELF library"


def test_committed_and_rebuilt_models_agree_through_dlr(rebuilt: Path, committed: Path) -> None:
    # given
    manifest = decode_manifest((committed / "manifest.json").read_bytes())
    prepare = Preprocessor(manifest.stage)
    samples = [generate_sample(seed, surface, defect) for seed, surface, defect in
               [(1, "metal", None), (2, "wood", "crack"), (3, "pcb", "stain")]]  # fmt: skip
    tensors = [prepare(s.image_rgb, "rgb").copy() for s in samples]
    # when
    ours = _run(committed / "mochi", tensors)
    theirs = _run(rebuilt / "mochi", tensors)
    # then
    for a, b in zip(ours, theirs, strict=True):
        mask, score = a
        assert mask.shape == (1, len(LABEL_NAMES), 256, 256), "mask output first"
        assert score.shape == (1, 2), "class probabilities second"
        assert np.allclose(mask.sum(axis=1), 1.0, atol=1e-5), "mask is a softmax over labels"
        assert abs(float(score.sum()) - 1.0) < 1e-5, "score is a softmax"
        for x, y in zip(a, b, strict=True):
            assert np.max(np.abs(x - y)) <= 1e-6, "rebuilt kernels give the same outputs"


# Test-split images whose scores sit far from the threshold: a numerical change in the
# kernels must not flip them, a broken model must.
VERDICT_CASES = [
    (11, "metal", None),
    (12, "textile", None),
    (13, "wood", None),
    (14, "pcb", None),
    (21, "metal", "dent"),
    (22, "textile", "stain"),
    (23, "wood", "scratch"),
    (24, "pcb", "crack"),
]


def test_demo_package_gets_clear_cases_right(tmp_path: Path) -> None:
    # given
    package = read_model_package(COMMITTED, cache_dir=tmp_path)
    inspector = Inspector.load(package, device="cpu")
    for seed, surface, defect in VERDICT_CASES:
        sample = generate_sample(seed, surface, defect)
        # when
        verdict = inspector.inspect(RawFrame(pixels=sample.image_rgb, order="rgb")).verdict
        # then
        assert verdict.is_anomalous == (defect is not None), (
            f"{surface}/{defect}: score {verdict.score:.4f}"
        )
        assert verdict.mask is not None, "segmentation head"
        assert verdict.mask.shape == sample.mask.shape, "mask resized to the image"
        if defect is not None:
            names = [a.name for a in verdict.anomalies]
            assert defect in names, f"{surface}/{defect}: the mask names the defect, got {names}"
