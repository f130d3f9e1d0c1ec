"""Builder-made packages through the real libdlr.so: verdicts checked against a numpy reference."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lfv_edge.inspection.pipeline import EncodedImage, ImageFile, Inspector, RawFrame
from lfv_edge.inspection.postprocess import is_anomalous_score
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.networks import (
    controllable_probability,
    expected_pixel_classes,
    red_mean_for_probability,
)
from lfv_edge.modelbuild.package import PackageSpec, network_for, zip_package
from lfv_edge.modelbuild.reference import forward
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb, write_image
from tests.inspection.test_preprocess_parity import reference as reference_preprocess


def _red_image(height: int, width: int, probability: float) -> np.ndarray:
    red = round(red_mean_for_probability(probability) * 255)
    return solid_rgb(height, width, (red, 90, 60))


@pytest.mark.parametrize(
    ("names", "normal_ids"), [(("anomaly", "normal"), (1,)), (("normal", "anomaly"), (0,))]
)
@pytest.mark.parametrize("size", [(64, 64), (96, 48)], ids=["square", "non-square"])
def test_classifier_verdicts_match_the_numpy_reference(
    make_package: PackageFactory,
    tmp_path: Path,
    names: tuple[str, str],
    normal_ids: tuple[int],
    size: tuple[int, int],
) -> None:
    # given a controllable classifier package and images on both sides of the threshold
    spec = PackageSpec(
        image_width=size[0],
        image_height=size[1],
        class_names=names,
        class_normal_ids=normal_ids,
        threshold=0.5,
    )
    package = read_model_package(make_package(spec))
    inspector = Inspector.load(package, device="cpu")
    network = network_for(spec)
    for probability in (0.1, 0.45, 0.9):
        image = _red_image(120, 160, probability)
        path = write_image(tmp_path / f"p{probability}.png", image)
        # when
        verdict = inspector.inspect(ImageFile(path)).verdict
        # then: the reference runs float64 pre-processing and the float64 network
        tensor = reference_preprocess(image[:, :, ::-1].copy(), "bgr", package.manifest.stage)
        probabilities = forward(network, tensor)[0][0]
        score = float(sum(p for i, p in enumerate(probabilities) if i not in normal_ids))
        assert abs(verdict.score - score) <= 1e-5, f"score {verdict.score} vs reference {score}"
        assert verdict.is_anomalous is is_anomalous_score(score, 0.5), (
            f"p={probability}: verdict as LFV decides"
        )
        assert abs(score - controllable_probability(image[..., 0].mean() / 255)) < 1e-3, (
            "the model is what we think"
        )


def test_sources_zip_and_folder_agree(make_package: PackageFactory, tmp_path: Path) -> None:
    folder = make_package(PackageSpec(image_width=64, image_height=64))
    archive = zip_package(folder, tmp_path / "pkg.zip")
    image = _red_image(100, 100, 0.8)
    png = write_image(tmp_path / "a.png", image)
    results: list[float] = []
    for source in (folder, archive):
        inspector = Inspector.load(read_model_package(source), device="auto")
        sources = (
            ImageFile(png),
            EncodedImage(png.read_bytes()),
            RawFrame(image, "rgb"),
            RawFrame(image[:, :, ::-1].copy(), "bgr"),
        )
        results.extend(inspector.inspect(item).verdict.score for item in sources)
    assert max(results) - min(results) == 0.0, (
        f"every source kind and package form agree exactly: {results}"
    )


def test_libdlr_origin_package_then_cpu_runtime(make_package: PackageFactory) -> None:
    own = read_model_package(make_package(PackageSpec(), with_libdlr=True))
    fallback = read_model_package(make_package(PackageSpec(), with_libdlr=False))
    assert own.library_origin == "package", "a package's own libdlr.so is preferred"
    assert fallback.library_origin == "cpu-runtime", "without one, the fetched CPU runtime is used"
    assert (
        Inspector.load(fallback, device="cpu")
        .inspect(RawFrame(_red_image(64, 64, 0.9), "rgb"))
        .verdict.is_anomalous
    ), "it runs"


def test_segmentation_mask_areas_and_png(make_package: PackageFactory, tmp_path: Path) -> None:
    # given a segmenter and a 200×300 grey image with a red block and a blue block
    spec = PackageSpec(image_width=96, image_height=64, segmentation_head=True, threshold=0.5)
    image = solid_rgb(200, 300, (120, 120, 120))
    image[20:80, 30:130] = (250, 10, 10)
    image[120:180, 200:260] = (10, 10, 250)
    inspector = Inspector.load(read_model_package(make_package(spec)), device="cpu")
    # when
    inspection = inspector.inspect(RawFrame(image, "rgb"))
    verdict = inspection.verdict
    lfv = verdict.to_lfv()
    # then
    anomalies = lfv["Anomalies"]
    assert isinstance(anomalies, list)
    assert [a["Name"] for a in anomalies] == ["background", "scratch", "dent"], "background first"
    areas = [a["PixelAnomaly"]["TotalPercentageArea"] for a in anomalies]
    assert abs(sum(areas) - 1.0) < 1e-9, "areas sum to 1"
    resized = cv2.resize(image, (96, 64), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(
        expected_pixel_classes(resized).astype(np.uint8),
        (300, 200),
        interpolation=cv2.INTER_NEAREST,
    )
    assert verdict.mask is not None
    agreement = float(np.mean(verdict.mask == expected))
    assert agreement > 0.995, f"mask agrees with the known per-pixel rule ({agreement:.4f})"
    assert abs(areas[1] - 6000 / 60000) < 0.01, f"red area ≈ 10 %: {areas[1]}"
    png = base64.b64decode(str(lfv["AnomalyMask"]))
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (200, 300, 3), "the PNG mask has the input image's size"
    assert verdict.is_anomalous, "16 % defect area is anomalous"


def test_infer_cli_prints_one_json_line_per_image(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    package = make_package(PackageSpec(image_width=64, image_height=64))
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a_bad.png", _red_image(80, 80, 0.95))
    write_image(images / "b_good.png", _red_image(80, 80, 0.05))
    (images / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(package), str(images)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(line["Image"]).name for line in lines] == [
        "a_bad.png",
        "b_good.png",
        "c_broken.png",
    ], run.stderr
    assert lines[0]["DetectAnomalyResult"]["IsAnomalous"] is True, "anomalous image"
    assert lines[1]["DetectAnomalyResult"]["IsAnomalous"] is False, "normal image"
    assert lines[2]["Error"]["Code"] == "ImageUnreadable", "a broken image gives a coded error line"
    assert run.returncode == 1, "exit 1 when some image failed, after processing all of them"
    assert "Traceback" not in run.stderr, "no traceback"
