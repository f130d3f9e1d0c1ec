"""Build the demo LFV package from weights.npz + model.json (no torch, no retraining).

    .venv/bin/python tools/demo_model/export.py [--out ZIP] [--folder DIR]
    .venv/bin/python tools/demo_model/export.py --target cuda --out GPU.zip [--libdlr GPU_LIBDLR]

Uses lfv_edge.modelbuild: our C kernels compiled with gcc, the graph JSON and `.params` of
the demo network (demo_network.py), and an LFV manifest (single-stage `mochi`, both heads,
class names ["anomaly", "normal"] with normal_ids [1], the validation threshold, pixel
classes background/scratch/stain/crack/dent). No libdlr.so goes into the package: lfv-edge
runs it on the CPU runtime fetched at set-up. The zip has sorted entries and fixed
timestamps, so the same weights and compiler give the same bytes.

`--target cuda` builds the GPU twin of the package instead (same manifest, graph and weights;
CUDA kernels compiled by nvcc, `.meta` TargetDeviceType gpu, and `--libdlr` copied into the
stage as LFV GPU packages carry their own runtime). It is never the committed artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from pathlib import Path

from architecture import CLASS_NAMES, INPUT_HEIGHT, INPUT_WIDTH, NORMAL_IDS
from demo_network import build_network, read_weights

from lfv_edge.modelbuild.package import PackageSpec, Target, build_lfv_package, zip_package
from lfv_edge.demo.synthetic_line import LABEL_NAMES

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = REPO / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
logger = logging.getLogger("export")


def package_spec(weights_path: Path, model_json: Path, target: Target = "cpu") -> PackageSpec:
    """The PackageSpec of the demo model: its network, threshold and class names."""
    summary = json.loads(model_json.read_text())
    if tuple(summary["pixel_class_names"]) != LABEL_NAMES:
        msg = f"{model_json}: pixel classes {summary['pixel_class_names']} != {LABEL_NAMES}"
        raise ValueError(msg)
    if tuple(summary["class_names"]) != CLASS_NAMES or tuple(summary["normal_ids"]) != NORMAL_IDS:
        msg = f"{model_json}: classes {summary['class_names']}/{summary['normal_ids']} != {CLASS_NAMES}/{NORMAL_IDS}"
        raise ValueError(msg)
    return PackageSpec(
        image_width=INPUT_WIDTH,
        image_height=INPUT_HEIGHT,
        class_names=CLASS_NAMES,
        class_normal_ids=NORMAL_IDS,
        threshold=float(summary["threshold"]),
        normalize=True,
        image_range_scale=True,
        classification_head=True,
        segmentation_head=True,
        pixel_class_names=LABEL_NAMES,
        seg_normal_ids=(0,),
        meta_device="gpu" if target == "cuda" else "cpu",
        network=build_network(read_weights(weights_path)),
        target=target,
    )


def build(
    out: Path,
    *,
    weights: Path,
    model_json: Path,
    folder: Path | None = None,
    target: Target = "cpu",
    libdlr: Path | None = None,
) -> Path:
    """Build the package folder (in `folder`, else a temporary one) and zip it to `out`."""
    spec = package_spec(weights, model_json, target)
    with tempfile.TemporaryDirectory(prefix="lfv-demo-") as scratch:
        dest = folder if folder is not None else Path(scratch) / "package"
        build_lfv_package(dest, spec, libdlr=libdlr)
        return zip_package(dest, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PACKAGE, help="the package zip to write")
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="also keep the unzipped package here (must be empty)",
    )
    parser.add_argument("--weights", type=Path, default=HERE / "weights.npz")
    parser.add_argument("--model-json", type=Path, default=HERE / "model.json")
    parser.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--libdlr", type=Path, help="runtime to put into the stage (cuda builds)")
    args = parser.parse_args()
    if args.target == "cuda" and args.out.resolve() == PACKAGE.resolve():
        parser.error("--target cuda needs its own --out: the committed artifact is the CPU package")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    zip_path = build(
        args.out, weights=args.weights, model_json=args.model_json, folder=args.folder,
        target=args.target, libdlr=args.libdlr,
    )  # fmt: skip
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    logger.info("wrote %s (%d bytes, sha256 %s)", zip_path, zip_path.stat().st_size, digest)


if __name__ == "__main__":
    main()
