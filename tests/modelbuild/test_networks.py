"""Ready-made networks through the real libdlr.so: parity, and the controllable formulas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from lfv_edge.modelbuild import networks, reference
from tests.modelbuild.harness import DlrHarness, max_abs_diff

TOLERANCE = 1e-5
FLAGS = [(True, True), (True, False), (False, True), (False, False)]


def _random_image(height: int, width: int, seed: int = 0) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width", "classes"), [(224, 224, 2), (97, 143, 3)])
def test_reference_classifier_matches_reference_and_is_not_saturated(
    dlr: DlrHarness, height: int, width: int, classes: int
) -> None:
    # given
    network = networks.reference_classifier(height, width, num_classes=classes)
    data = networks.to_model_input(_random_image(height, width))
    # when
    (probabilities,) = dlr.run(network, data)
    # then
    diff = max_abs_diff([probabilities], reference.forward(network, data))
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g}"
    assert probabilities.shape == (1, classes), "one probability per class"
    assert probabilities.min() > 0.05, f"softmax not saturated: {probabilities}"
    assert probabilities.max() < 0.95, f"softmax not saturated: {probabilities}"


@pytest.mark.parametrize(("normalize", "range_scale"), FLAGS)
@pytest.mark.parametrize("anomaly_index", [0, 1])
def test_controllable_classifier_follows_its_formula(
    dlr: DlrHarness, normalize: bool, range_scale: bool, anomaly_index: int
) -> None:
    # given: images from clearly normal (black) to clearly anomalous (pure red), non-square
    network = networks.controllable_classifier(
        40, 56, anomaly_index=anomaly_index, normalize=normalize, image_range_scale=range_scale
    )
    runner = dlr.load(network)
    rng = np.random.default_rng(5)
    for red in (0, 60, 128, 200, 255):
        image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        image[..., 0] = np.clip(rng.normal(red, 20, (40, 56)), 0, 255).astype(np.uint8)
        data = networks.to_model_input(image, normalize=normalize, image_range_scale=range_scale)
        # when
        (probabilities,) = runner.run(data)
        # then
        expected = networks.controllable_probability(float(image[..., 0].mean()) / 255.0)
        got = float(probabilities[0, anomaly_index])
        assert abs(got - expected) <= TOLERANCE, f"red {red}: P(anomaly) {got} != {expected}"
        assert abs(probabilities.sum() - 1) < 1e-6, "two-class softmax"


def test_controllable_classifier_extremes_are_clear_verdicts(dlr: DlrHarness) -> None:
    # given
    runner = dlr.load(networks.controllable_classifier(32, 32))
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 255
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    # when
    (anomalous,) = runner.run(networks.to_model_input(red))
    (normal,) = runner.run(networks.to_model_input(black))
    # then
    assert anomalous[0, 0] > 0.9999, f"a pure red image is clearly anomalous: {anomalous}"
    assert normal[0, 0] < 0.0001, f"a black image is clearly normal: {normal}"


def test_red_mean_for_probability_inverts_the_formula() -> None:
    # then
    for probability in (0.01, 0.3, 0.5, 0.7021, 0.99):
        red = networks.red_mean_for_probability(probability)
        back = networks.controllable_probability(red)
        assert abs(back - probability) < 1e-12, f"{probability} → {red} → {back}"


def _defect_image(height: int, width: int) -> NDArray[np.uint8]:
    image = np.full((height, width, 3), 128, dtype=np.uint8)  # grey: background
    image[4:14, 5:25] = (230, 20, 20)  # red scratch: 200 px
    image[20:30, 30:36] = (15, 25, 240)  # blue dent: 60 px
    image[0:3, 0:3] = (255, 255, 255)  # white: background
    image[-3:, -3:] = (150, 40, 30)  # dull red below the margin: background
    return image


@pytest.mark.parametrize(("normalize", "range_scale"), FLAGS)
def test_controllable_segmenter_masks_follow_pixel_colour(
    dlr: DlrHarness, normalize: bool, range_scale: bool
) -> None:
    # given
    height, width = 36, 44
    network = networks.controllable_segmenter(
        height, width, normalize=normalize, image_range_scale=range_scale
    )
    image = _defect_image(height, width)
    data = networks.to_model_input(image, normalize=normalize, image_range_scale=range_scale)
    # when
    mask, score = dlr.run(network, data)
    # then
    classes = mask[0].argmax(axis=0)
    expected = networks.expected_pixel_classes(image)
    assert np.array_equal(classes, expected), "argmax class is determined by pixel colour"
    assert [int((classes == c).sum()) for c in range(3)] == [height * width - 260, 200, 60], "areas"
    fraction = 1.0 - float(mask[0, 0].mean())
    assert abs(fraction - 260 / (height * width)) < 1e-3, "soft area ≈ anomalous fraction"
    expected_score = networks.segmenter_probability(fraction)
    assert abs(float(score[0, 0]) - expected_score) <= TOLERANCE, "score head formula"
    diff = max_abs_diff([mask, score], reference.forward(network, data))
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g}"


def test_segmentation_only_variant_has_just_the_mask(dlr: DlrHarness) -> None:
    # given
    network = networks.controllable_segmenter(36, 44, classification_head=False)
    data = networks.to_model_input(_defect_image(36, 44))
    # when
    outputs = dlr.run(network, data)
    # then
    assert [o.shape for o in outputs] == [(1, 3, 36, 44)], "one output: the mask"
    assert max_abs_diff(outputs, reference.forward(network, data)) <= TOLERANCE, "parity"


def test_segmenter_score_is_at_the_anomaly_index(dlr: DlrHarness) -> None:
    # given: class order ["normal", "anomaly"]
    network = networks.controllable_segmenter(36, 44, anomaly_index=1)
    clean = networks.to_model_input(np.full((36, 44, 3), 128, dtype=np.uint8))
    defect = networks.to_model_input(_defect_image(36, 44))
    # when
    _, clean_score = dlr.run(network, clean)
    _, defect_score = dlr.run(network, defect)
    # then
    assert clean_score[0, 1] < 0.1, f"a clean image is normal: {clean_score}"
    assert defect_score[0, 1] > 0.9, f"16% defect area is anomalous: {defect_score}"


@pytest.mark.parametrize("segmentation", [False, True], ids=["cls", "seg+cls"])
def test_bench_network_matches_reference(dlr: DlrHarness, segmentation: bool) -> None:
    # given
    network = networks.bench_network(96, 128, segmentation_head=segmentation)
    data = networks.to_model_input(_random_image(96, 128, seed=3))
    # when
    outputs = dlr.run(network, data)
    # then
    diff = max_abs_diff(outputs, reference.forward(network, data))
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g}"
    assert outputs[-1].min() > 0.05, f"class softmax not saturated: {outputs[-1]}"


def test_bench_network_runs_at_1000x1000(dlr: DlrHarness) -> None:
    # given
    network = networks.bench_network(segmentation_head=True)
    data = networks.to_model_input(_random_image(1000, 1000, seed=4))
    # when
    mask, probabilities = dlr.run(network, data)
    # then
    assert mask.shape == (1, 3, 1000, 1000), "mask at input resolution"
    assert probabilities.shape == (1, 2), "two classes"
    assert np.abs(mask.sum(axis=1) - 1).max() < 1e-5, "per-pixel softmax"
    assert abs(float(probabilities.sum()) - 1) < 1e-6, "class softmax"


_RUN_IN_CHILD = """
import sys
from pathlib import Path
import numpy as np
from lfv_edge.model.runner import DlrRunner
folder, library, data_file, out_file = map(Path, sys.argv[1:5])
data = np.load(data_file)
outputs = DlrRunner.load(folder, library=library, input_shape=data.shape).run(data)
np.savez(out_file, *outputs)
"""


def test_results_do_not_depend_on_the_thread_count(dlr: DlrHarness, tmp_path: Path) -> None:
    # given: TVM reads TVM_NUM_THREADS once per process, so other counts run in children
    network = networks.bench_network(96, 128, segmentation_head=True)
    folder = dlr.write(network)
    data = networks.to_model_input(_random_image(96, 128, seed=9))
    np.save(tmp_path / "data.npy", data)
    in_process = dlr.run(network, data)
    for threads in ("1", "3"):
        env = {**os.environ, "TVM_NUM_THREADS": threads, "TVM_BIND_THREADS": "0"}
        out_file = tmp_path / f"out{threads}.npz"
        # when
        subprocess.run(
            [sys.executable, "-c", _RUN_IN_CHILD, str(folder), str(dlr.libdlr),
             str(tmp_path / "data.npy"), str(out_file)],
            check=True, env=env, timeout=60,
        )  # fmt: skip
        # then
        with np.load(out_file) as saved:
            child = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for got, want in zip(child, in_process, strict=True):
            assert np.array_equal(got, want), f"{threads} thread(s): results differ bitwise"
