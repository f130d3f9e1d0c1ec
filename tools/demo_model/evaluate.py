"""Evaluate the demo package through the real DLR runtime on the held-out synthetic test split.

    .venv/bin/python tools/demo_model/evaluate.py [--package ZIP] [--n 480]

Every image goes through lfv-edge's own pipeline, exactly as `lfv-edge infer` runs it:
`read_model_package` (zip → checked package) → `Inspector` (LFV pre-processing in
lfv_edge.inspection.preprocess, the real libdlr.so via lfv_edge.model.runner.DlrRunner, LFV post-processing
in lfv_edge.inspection.postprocess: 4-decimal threshold rule, argmax mask resized nearest-neighbour to
the image size). Torch is not involved. Reports image-level accuracy and confusion counts,
recall per defect kind and surface, and per-label IoU of the masks against the generator's
full-size ground truth; writes the numbers to tools/demo_model/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lfv_edge.model.package import read_model_package
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.demo.synthetic_line import DEFAULT_SIZE, LABEL_NAMES, generate_dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = REPO / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
logger = logging.getLogger("evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", type=Path, default=PACKAGE)
    parser.add_argument("--n", type=int, default=480, help="test images (balanced plan)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic_line dataset seed")
    parser.add_argument("--threads", type=int, default=None, help="TVM worker threads")
    parser.add_argument("--report", type=Path, default=HERE / "evaluation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    package = read_model_package(args.package)
    inspector = Inspector.load(package, device="cpu", threads=args.threads)
    names = package.manifest.pixel_classes.names
    if tuple(names) != LABEL_NAMES:
        msg = f"package pixel classes {names} are not the generator's {LABEL_NAMES}"
        raise SystemExit(msg)
    logger.info(
        "package %s (%s), libdlr %s (%s), threshold %.4f",
        package.name, package.version, package.library.path, package.library_origin,
        inspector.postprocessor.threshold,
    )  # fmt: skip

    confusion = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_surface: dict[str, list[bool]] = defaultdict(list)
    ious: dict[str, list[float]] = defaultdict(list)
    inter = np.zeros(len(LABEL_NAMES), dtype=np.int64)
    union = np.zeros(len(LABEL_NAMES), dtype=np.int64)
    clean_normal_masks = 0
    run_ms: list[float] = []
    started = time.perf_counter()
    for sample in generate_dataset(args.n, seed=args.seed, split="test", size=DEFAULT_SIZE):
        inspection = inspector.inspect(RawFrame(pixels=sample.image_rgb, order="rgb"))
        run_ms.append(inspection.timings.run_ms)
        verdict = inspection.verdict
        assert verdict.mask is not None  # noqa: S101 - the demo package has a mask head
        correct = verdict.is_anomalous == sample.is_anomalous
        key = ("t" if correct else "f") + ("p" if verdict.is_anomalous else "n")
        confusion[key] += 1
        by_kind[sample.defect or "normal"].append(correct)
        by_surface[sample.surface].append(correct)
        if not sample.is_anomalous and not verdict.mask.any():
            clean_normal_masks += 1
        for label in range(1, len(LABEL_NAMES)):
            pred, truth = verdict.mask == label, sample.mask == label
            i, u = int(np.logical_and(pred, truth).sum()), int(np.logical_or(pred, truth).sum())
            inter[label] += i
            union[label] += u
            if truth.any():
                ious[LABEL_NAMES[label]].append(i / u)
    elapsed = time.perf_counter() - started

    n = args.n
    accuracy = (confusion["tp"] + confusion["tn"]) / n
    report = {
        "package": str(args.package.relative_to(REPO) if args.package.is_relative_to(REPO) else args.package),
        "package_version": package.version,
        "runtime": {"libdlr": package.library_origin, "sha256": package.library_sha256},
        "test_set": {"generator": "lfv_edge.demo.synthetic_line", "split": "test", "seed": args.seed,
                     "images": n, "image_size": list(DEFAULT_SIZE)},
        "threshold": inspector.postprocessor.threshold,
        "image_level": {"accuracy": accuracy, "confusion": confusion,
                        "accuracy_by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
                        "accuracy_by_surface": {k: float(np.mean(v)) for k, v in sorted(by_surface.items())}},
        "pixel_level": {
            "mean_iou": {k: float(np.mean(v)) for k, v in ious.items()},
            "dataset_iou": {LABEL_NAMES[i]: float(inter[i] / union[i]) for i in range(1, len(LABEL_NAMES)) if union[i]},
            "normal_images_with_empty_mask": clean_normal_masks / max(1, confusion["tn"] + confusion["fp"]),
        },
        "timing_ms": {"run_median": float(np.median(run_ms)), "total_seconds": round(elapsed, 1)},
    }  # fmt: skip
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("image-level accuracy %.4f on %d test images, confusion %s", accuracy, n, confusion)
    logger.info("accuracy by kind: %s", report["image_level"]["accuracy_by_kind"])  # type: ignore[index]
    logger.info("mean IoU per label: %s", report["pixel_level"]["mean_iou"])  # type: ignore[index]
    logger.info("DLR run median %.1f ms; wrote %s", float(np.median(run_ms)), args.report)


if __name__ == "__main__":
    main()
