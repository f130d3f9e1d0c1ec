"""`lfv-edge demo`: table, sample images, overlays and contact sheet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from lfv_edge.inspection.overlay import contact_sheet, render_overlay
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb


def test_demo_writes_samples_overlays_and_a_contact_sheet(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    package = make_package(PackageSpec(image_width=96, image_height=96, segmentation_head=True))
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "demo", "--model", str(package), "--out", str(tmp_path / "out"), "--count", "5", "--size", "128"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line[:2].isdigit()]
    assert [row.split()[0] for row in rows] == [
        "01-metal-normal",
        "02-textile-scratch",
        "03-wood-stain",
        "04-pcb-crack",
        "05-metal-dent",
    ], run.stdout
    assert "verdicts match the ground truth" in run.stdout, "a summary line"
    overlays = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(overlays) == 5, "one overlay per image"
    assert len(list((tmp_path / "out" / "samples").glob("*.png"))) == 5, (
        "the samples are kept for `infer`"
    )
    sheet = cv2.imread(str(tmp_path / "out" / "contact-sheet.png"))
    assert sheet is not None, "the contact sheet is a PNG"
    assert sheet.shape[1] > 4 * 300, "four overlays per row"


def test_an_overlay_shows_the_mask_in_its_colour_and_a_legend(make_package: PackageFactory) -> None:
    inspector = Inspector.load(
        read_model_package(
            make_package(PackageSpec(image_width=96, image_height=96, segmentation_head=True))
        ),
        device="cpu",
    )
    image = solid_rgb(200, 200, (128, 128, 128))
    image[50:150, 50:150] = (250, 10, 10)  # the segmenter's "scratch" (class 1)
    verdict = inspector.inspect(RawFrame(image, "rgb")).verdict
    tile = render_overlay(image, verdict, "test", width=200)
    body = tile[34 : 34 + 200]  # below the header
    scratch = np.array([0x23, 0xA4, 0x36])
    center = body[100, 100].astype(int)
    assert np.abs(center - (0.55 * np.array([250, 10, 10]) + 0.45 * scratch)).max() <= 3, (
        "mask blended over the defect"
    )
    assert body[10, 10].tolist() == [128, 128, 128], "background pixels untouched"
    assert tile.shape[0] > 34 + 200, "legend below the image"
    assert contact_sheet([tile, tile, tile], "t").shape[1] == 10 + 3 * (200 + 10), "grid width"


def test_the_readme_demo_runs_on_the_embedded_package(tmp_path: Path) -> None:
    # `lfv-edge demo` with no arguments is the end of the README's first command
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "demo", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = next(
        line for line in run.stdout.splitlines() if "verdicts match the ground truth" in line
    )
    matched = int(summary.split("/")[0])
    assert matched >= 10, f"the trained demo model tells good parts from bad ones: {summary}"
    assert (tmp_path / "out" / "contact-sheet.png").is_file(), (
        "the contact sheet is written where asked"
    )
