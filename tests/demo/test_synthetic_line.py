"""The synthetic production line: deterministic images, masks that match their labels."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from lfv_edge.demo.synthetic_line import (
    DEFECTS,
    LABEL_NAMES,
    SURFACES,
    generate_dataset,
    generate_sample,
    plan_dataset,
)

SMALL = (96, 128)  # (height, width): small and non-square keeps the suite fast


def test_same_seed_gives_identical_bytes() -> None:
    # given / when
    first = generate_sample(1234, "wood", "crack", SMALL)
    second = generate_sample(1234, "wood", "crack", SMALL)
    # then
    assert first.image_rgb.tobytes() == second.image_rgb.tobytes(), (
        "image is a function of the seed"
    )
    assert first.mask.tobytes() == second.mask.tobytes(), "mask is a function of the seed"
    other = generate_sample(1235, "wood", "crack", SMALL)
    assert other.image_rgb.tobytes() != first.image_rgb.tobytes(), "another seed, another image"


def test_dataset_is_deterministic_prefix_stable_and_split_specific() -> None:
    # given
    runs = [list(generate_dataset(6, seed=7, split="test", size=SMALL)) for _ in range(2)]
    # then
    for a, b in zip(*runs, strict=True):
        assert a.image_rgb.tobytes() == b.image_rgb.tobytes(), (
            f"sample {a.seed} differs between runs"
        )
        assert a.mask.tobytes() == b.mask.tobytes(), f"mask {a.seed} differs between runs"
    assert plan_dataset(6, 7, "test") == plan_dataset(40, 7, "test")[:6], "plans are prefix-stable"
    train_seeds = {spec.seed for spec in plan_dataset(200, 7, "train")}
    test_seeds = {spec.seed for spec in plan_dataset(200, 7, "test")}
    assert not train_seeds & test_seeds, "splits never share a sample"


def test_plan_is_balanced_over_surfaces_and_defects() -> None:
    # when
    plan = plan_dataset(32, seed=0, split="train")
    # then
    pairs = {(spec.surface, spec.defect) for spec in plan if spec.defect is not None}
    assert pairs == set(itertools.product(SURFACES, DEFECTS)), "every surface × defect pair"
    assert sum(spec.defect is None for spec in plan) == 16, "half of the images are normal"


@pytest.mark.parametrize("surface", SURFACES)
def test_normal_images_have_empty_masks(surface: str) -> None:
    # when
    sample = generate_sample(11, surface, None, SMALL)
    # then
    assert sample.image_rgb.shape == (*SMALL, 3), "RGB image of the requested size"
    assert sample.image_rgb.dtype == np.uint8, "uint8 pixels"
    assert sample.mask.shape == SMALL, "mask has the image's size"
    assert not sample.mask.any(), "a normal image has an all-background mask"
    assert not sample.is_anomalous, "normal"


@pytest.mark.parametrize(("surface", "defect"), list(itertools.product(SURFACES, DEFECTS)))
def test_defect_masks_carry_only_their_label(surface: str, defect: str) -> None:
    # when
    sample = generate_sample(21, surface, defect, SMALL)
    # then
    index = LABEL_NAMES.index(defect)
    values = set(np.unique(sample.mask).tolist())
    assert values == {0, index}, f"{defect} mask holds background and label {index}, got {values}"
    assert int((sample.mask == index).sum()) >= 4, "the defect covers a few pixels at least"
    assert sample.label_names[index] == defect, "mask index names the defect"
    assert sample.is_anomalous, "anomalous"


def test_every_defect_kind_appears_in_a_dataset() -> None:
    # when
    samples = list(generate_dataset(32, seed=3, split="validation", size=(64, 64)))
    # then
    seen = {LABEL_NAMES[int(v)] for s in samples for v in np.unique(s.mask) if v}
    assert seen == set(DEFECTS), f"all defect kinds appear in 32 samples, saw {sorted(seen)}"
    for s in samples:
        assert s.mask.any() == s.is_anomalous, f"seed {s.seed}: mask agrees with the label"


def test_label_names_follow_lfv_rules() -> None:
    assert LABEL_NAMES[0] == "background", "index 0 is background"
    for name in LABEL_NAMES:
        assert re.fullmatch(r"[a-zA-Z0-9]+", name), f"{name!r} is a valid LFV label name"


@pytest.mark.parametrize(
    ("surface", "defect", "size"),
    [("glass", None, SMALL), ("wood", "hole", SMALL), ("wood", None, (32, 32))],
)
def test_bad_arguments_are_rejected(
    surface: str, defect: str | None, size: tuple[int, int]
) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate_sample(0, surface, defect, size)
