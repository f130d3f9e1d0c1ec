"""LFV-style packages: layout, manifest content, .meta, zip, read-back checks, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import DlrRunner
from lfv_edge.model.tvm_params import encode_params
from lfv_edge.modelbuild import BuildError, networks
from lfv_edge.modelbuild.cli import main
from lfv_edge.modelbuild.package import (
    PackageSpec,
    build_lfv_package,
    verify_dlr_model,
    zip_package,
)

STAGE_FILES = {
    "compiled.so",
    "compiled_model.json",
    "compiled.params",
    "compiled.meta",
    "libdlr.so",
}


def _build(tmp_path: Path, kernels: Path, libdlr: Path | None, **fields: Any) -> Path:
    return build_lfv_package(
        tmp_path / "package", PackageSpec(**fields), libdlr=libdlr, kernels=kernels
    )


def _manifest(package: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((package / "manifest.json").read_text())
    return loaded


def _red_image(height: int, width: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 255
    return image


def test_package_has_exactly_the_lfv_layout(tmp_path: Path, kernels: Path, libdlr: Path) -> None:
    # when
    package = _build(tmp_path, kernels, libdlr)
    # then
    assert sorted(p.name for p in package.iterdir()) == ["manifest.json", "mochi"], "top level"
    assert {p.name for p in (package / "mochi").iterdir()} == STAGE_FILES, "stage folder"
    assert (package / "mochi/libdlr.so").read_bytes() == libdlr.read_bytes(), "runtime copy"


@pytest.mark.parametrize(
    ("names", "normal_ids", "anomaly_index"),
    [(("anomaly", "normal"), (1,), 0), (("normal", "anomaly"), (0,), 1)],
)
def test_both_class_orders_give_consistent_manifest_and_outputs(
    tmp_path: Path,
    kernels: Path,
    libdlr: Path,
    names: tuple[str, str],
    normal_ids: tuple[int],
    anomaly_index: int,
) -> None:
    # given
    package = _build(
        tmp_path, kernels, libdlr, image_width=48, image_height=32,
        class_names=names, class_normal_ids=normal_ids, threshold=0.7021560668945312,
    )  # fmt: skip
    # when
    manifest = _manifest(package)
    runner = DlrRunner.load(
        package / "mochi", library=package / "mochi/libdlr.so", input_shape=(1, 3, 32, 48)
    )
    (probabilities,) = runner.run(networks.to_model_input(_red_image(32, 48)))
    # then
    graph = manifest["model_graph"]
    stage = graph["stages"][0]
    assert graph["model_graph_type"] == "single_stage_model_graph", "graph type"
    assert graph["image_level_classes"] == {"names": list(names), "normal_ids": list(normal_ids)}
    assert stage["class_normal_ids"] == list(normal_ids), "stage copy of the normal ids"
    assert stage["threshold"] == 0.7021560668945312, "threshold kept exactly"
    assert (stage["image_width"], stage["image_height"]) == (48, 32), "non-square size"
    assert stage["input_shape"] == [1, 3, 32, 48], "NCHW input shape"
    anomaly_score = sum(
        float(p) for i, p in enumerate(probabilities[0]) if i not in stage["class_normal_ids"]
    )
    assert anomaly_score > 0.999, f"LFV's score (sum of non-normal classes) {probabilities}"
    assert probabilities[0, anomaly_index] == pytest.approx(anomaly_score), "anomaly index"


def test_manifest_carries_every_stage_key(tmp_path: Path, kernels: Path) -> None:
    # given
    extra = {"seg_recall_bias": 0.25, "raw_image_shape": [120, 160], "interpolation": 1,
             "classification_logic": "cls_or_seg"}  # fmt: skip
    # when
    package = _build(
        tmp_path, kernels, None, segmentation_head=True, extra_stage_keys=extra,
        normalize=False, image_range_scale=True,
    )  # fmt: skip
    manifest = _manifest(package)
    # then
    stage = manifest["model_graph"]["stages"][0]
    assert stage["type"] == "mochi", "stage type is the folder name"
    assert {k: stage[k] for k in extra} == extra, "extra keys copied verbatim"
    assert stage["classification_head_enabled"] is True, "both heads"
    assert stage["segmentation_head_enabled"] is True, "both heads"
    assert stage["normalize"] is False, "normalize flag"
    assert stage["image_range_scale"] is True, "range scale flag"
    assert stage["seg_normal_ids"] == [0], "background is normal"
    assert manifest["model_graph"]["pixel_level_classes"] == {
        "names": ["background", "scratch", "dent"],
        "normal_ids": [0],
    }, "pixel classes, background first"
    assert manifest["compilable_models"] == [
        {"filename": "mochi.pt", "data_input_config": {"input": [1, 3, 64, 64]},
         "framework": "PYTORCH"}
    ], "compilable_models as in real packages"  # fmt: skip
    assert manifest["dataset"] == {"image_width": 64, "image_height": 64}, "dataset size"
    assert not (package / "mochi/libdlr.so").exists(), "libdlr=None ships no runtime"


def test_meta_names_outputs_in_lfv_order(tmp_path: Path, kernels: Path) -> None:
    # when
    package = _build(tmp_path, kernels, None, segmentation_head=True)
    meta = json.loads((package / "mochi/compiled.meta").read_text())
    # then
    assert meta["Requirements"]["TargetDeviceType"] == "cpu", "device type DLR checks"
    assert [o["name"] for o in meta["Model"]["Outputs"]] == ["mask", "probabilities"], "order"
    assert [o["shape"] for o in meta["Model"]["Outputs"]] == [[1, 3, 64, 64], [1, 2]], "shapes"


def test_gpu_meta_is_refused_by_dlr_on_cpu(tmp_path: Path, kernels: Path, libdlr: Path) -> None:
    # given
    package = _build(tmp_path, kernels, None, meta_device="gpu")
    # then
    with pytest.raises(ModelPackageError, match='requires device type "gpu" but user gave "cpu"'):
        DlrRunner.load(package / "mochi", library=libdlr, input_shape=(1, 3, 64, 64))


def test_package_without_meta_still_runs(tmp_path: Path, kernels: Path, libdlr: Path) -> None:
    # given
    package = _build(tmp_path, kernels, None, meta_device=None)
    # when
    runner = DlrRunner.load(package / "mochi", library=libdlr, input_shape=(1, 3, 64, 64))
    (probabilities,) = runner.run(np.zeros((1, 3, 64, 64), dtype=np.float32))
    # then
    assert not (package / "mochi/compiled.meta").exists(), "meta_device=None writes no .meta"
    assert probabilities.shape == (1, 2), "runs without metadata"


def test_the_package_reader_accepts_built_packages(
    tmp_path: Path, kernels: Path, libdlr: Path
) -> None:
    # given
    package = _build(tmp_path, kernels, libdlr, segmentation_head=True)
    # when
    opened = read_model_package(package)
    # then
    assert opened.manifest.stage.segmentation_head, "reader sees the segmentation head"
    assert opened.manifest.pixel_classes.names == ("background", "scratch", "dent"), "classes"
    assert opened.stage.input_shape == (1, 3, 64, 64), "reader's input shape"


def test_zip_is_deterministic_and_keeps_the_layout(
    tmp_path: Path, kernels: Path, libdlr: Path
) -> None:
    # given
    first = build_lfv_package(tmp_path / "a", PackageSpec(), libdlr=libdlr, kernels=kernels)
    second = build_lfv_package(tmp_path / "b", PackageSpec(), libdlr=libdlr, kernels=kernels)
    # when
    zip_a = zip_package(first, tmp_path / "a.zip")
    zip_b = zip_package(second, tmp_path / "b.zip")
    # then
    assert zip_a.read_bytes() == zip_b.read_bytes(), "same package → same zip bytes"
    with zipfile.ZipFile(zip_a) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    assert names == sorted(names), "entries in sorted order"
    assert set(names) == {"manifest.json"} | {f"mochi/{f}" for f in STAGE_FILES}, "layout"
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}, "fixed timestamps"
    opened = read_model_package(zip_a, cache_dir=tmp_path / "zip-cache")
    assert opened.manifest.stage.type == "mochi", "the reader opens the zip"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classification_head": False}, "at least one head"),
        ({"class_normal_ids": (2,)}, "distinct indices below 2"),
        ({"class_normal_ids": (0, 1)}, "at least one anomalous class"),
        ({"segmentation_head": True, "pixel_class_names": ("scratch", "dent")}, "background"),
        ({"segmentation_head": True, "pixel_class_names": ("background", "a")}, "3 pixel classes"),
        ({"class_names": ("a", "b", "c"), "class_normal_ids": (0,)}, "2 classes"),
        ({"network": "reference", "segmentation_head": True}, "no segmentation head"),
        ({"extra_stage_keys": {"threshold": 0.1}}, "would replace"),
        ({"threshold": float("nan")}, "finite"),
        ({"network": networks.reference_classifier(32, 32)}, "spec input"),
    ],
)
def test_inconsistent_specs_are_rejected(
    tmp_path: Path, kernels: Path, fields: dict[str, Any], message: str
) -> None:
    # then
    with pytest.raises(BuildError, match=message):
        _build(tmp_path, kernels, None, **fields)
    assert not (tmp_path / "package").exists(), "nothing is written for a bad spec"


def test_explicit_network_with_three_classes(tmp_path: Path, kernels: Path, libdlr: Path) -> None:
    # given
    network = networks.reference_classifier(40, 30, num_classes=3)
    # when
    package = _build(
        tmp_path, kernels, libdlr, image_width=30, image_height=40, network=network,
        class_names=("good", "scratch", "dent"), class_normal_ids=(0,),
    )  # fmt: skip
    # then
    stage = _manifest(package)["model_graph"]["stages"][0]
    assert stage["class_normal_ids"] == [0], "one normal class of three"
    assert stage["input_shape"] == [1, 3, 40, 30], "portrait input"


def test_existing_non_empty_destination_is_refused(tmp_path: Path, kernels: Path) -> None:
    # given
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "keep.txt").write_text("mine")
    # then
    with pytest.raises(BuildError, match="not an empty folder"):
        _build(tmp_path, kernels, None)


def test_read_back_check_catches_a_reshaped_weight(tmp_path: Path, kernels: Path) -> None:
    # given: same byte size, different shape — DLR would load it silently
    network = networks.reference_classifier(32, 32)
    package = build_lfv_package(
        tmp_path / "p", PackageSpec(image_width=32, image_height=32, network=network),
        libdlr=None, kernels=kernels,
    )  # fmt: skip
    params = dict(network.params())
    params["p_conv_weight"] = params["p_conv_weight"].reshape(8, 3, 9)
    (package / "mochi/compiled.params").write_bytes(encode_params(params))
    # then
    with pytest.raises(BuildError, match="p_conv_weight"):
        verify_dlr_model(package / "mochi", network)


def test_cli_builds_a_zip(tmp_path: Path, libdlr: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # when
    code = main(
        [str(tmp_path / "demo.zip"), "--heads", "both", "--width", "80", "--height", "60",
         "--classes", "normal,anomaly", "--normal-ids", "0", "--libdlr", str(libdlr),
         "--stage-key", "seg_recall_bias=0.5", "--stage-key", "classification_logic=cls_or_seg"]
    )  # fmt: skip
    # then
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo.zip"), "prints the path"
    with zipfile.ZipFile(tmp_path / "demo.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
    stage = manifest["model_graph"]["stages"][0]
    assert stage["seg_recall_bias"] == 0.5, "JSON stage value"
    assert stage["classification_logic"] == "cls_or_seg", "bare-word stage value"
    assert manifest["model_graph"]["image_level_classes"]["names"] == ["normal", "anomaly"]


def test_cli_reports_build_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # when
    code = main([str(tmp_path / "out"), "--heads", "seg", "--pixel-classes", "a,b", "--no-libdlr"])
    # then
    assert code == 1, "build errors exit 1"
    assert "background" in capsys.readouterr().err, "the message names the problem"


def test_module_entry_point_builds_a_folder(tmp_path: Path, kernels: Path) -> None:
    # given: the session's kernel cache, so the child does not compile again
    env = {**os.environ, "LFV_EDGE_KERNEL_CACHE": str(kernels.parent)}
    dest = tmp_path / "reference-package"
    # when
    completed = subprocess.run(
        [sys.executable, "-m", "lfv_edge.modelbuild", str(dest), "--network", "reference",
         "--width", "50", "--height", "30", "--meta", "none", "--no-libdlr"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    # then
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == str(dest), "prints where the package went"
    assert {p.name for p in (dest / "mochi").iterdir()} == {
        "compiled.so", "compiled_model.json", "compiled.params"
    }, "no .meta, no libdlr.so"  # fmt: skip
