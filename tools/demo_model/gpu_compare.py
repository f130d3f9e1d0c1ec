"""The demo model on the GPU against the committed CPU package, image by image, on one machine.

    python tools/demo_model/gpu_compare.py --gpu-libdlr GPU_LIBDLR [--n 480] [--report FILE]

Needs an NVIDIA GPU, nvcc and a CUDA build of libdlr.so (docs/gpu.md). Builds the demo
package's GPU twin (export.py --target cuda: same manifest, graph and weights, CUDA kernels),
then runs the demo set (the 12 images `lfv-edge demo` shows, plus `--n` images of the
held-out synthetic test split) through lfv-edge's own pipeline twice: the committed CPU
package on the CPU runtime (TVM on all usable cores) and the GPU package on the GPU. Both
inspectors get the same prepared tensor. Reports the largest output difference, verdict and
mask agreement, accuracy of each against the generator's ground truth, and the model's run
time on each device (median of `Inspector.infer`, same host).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from export import PACKAGE, build

from lfv_edge.demo.synthetic_line import DEFAULT_SIZE, DEFECTS, SURFACES, generate_dataset, generate_sample
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import usable_cpus

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("gpu_compare")


def demo_command_images(count: int = 12, seed: int = 2026, size: int = 384) -> list[tuple[np.ndarray, bool]]:
    """The images of `lfv-edge demo` (its default plan) with their ground truth."""
    kinds = (None, *DEFECTS)
    samples = [
        generate_sample(seed * 1000 + i, SURFACES[i % len(SURFACES)], kinds[i % len(kinds)], size=(size, size))
        for i in range(count)
    ]
    return [(s.image_rgb, s.is_anomalous) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-libdlr", type=Path, required=True, help="CUDA build of libdlr.so")
    parser.add_argument("--n", type=int, default=480, help="test-split images besides the demo's 12")
    parser.add_argument("--seed", type=int, default=0, help="synthetic_line dataset seed")
    parser.add_argument("--report", type=Path, default=Path("gpu-compare.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="lfv-gpu-demo-") as scratch:
        folder = Path(scratch) / "gpu"
        build(Path(scratch) / "gpu.zip", weights=HERE / "weights.npz", model_json=HERE / "model.json",
              folder=folder, target="cuda", libdlr=args.gpu_libdlr)  # fmt: skip
        cpu = Inspector.load(read_model_package(PACKAGE), device="cpu", threads=usable_cpus())
        gpu = Inspector.load(read_model_package(folder), device="gpu")
        images = demo_command_images()
        images += [
            (s.image_rgb, s.is_anomalous)
            for s in generate_dataset(args.n, seed=args.seed, split="test", size=DEFAULT_SIZE)
        ]
        worst = [0.0, 0.0]
        verdicts_equal = masks_identical = 0
        mask_agreement: list[float] = []
        confidence_diff = 0.0
        correct = {"cpu": 0, "gpu": 0}
        run_ms: dict[str, list[float]] = {"cpu": [], "gpu": []}
        for rgb, truth in images:
            prepared = cpu.prepare(RawFrame(rgb, "rgb"))
            cpu_out, cpu_ms = cpu.infer(prepared)
            gpu_out, gpu_ms = gpu.infer(prepared)
            run_ms["cpu"].append(cpu_ms)
            run_ms["gpu"].append(gpu_ms)
            for i, (a, b) in enumerate(zip(cpu_out, gpu_out, strict=True)):
                worst[i] = max(worst[i], float(np.max(np.abs(a.astype(np.float64) - b))))
            va = cpu.finish(prepared, cpu_out, cpu_ms).verdict
            vb = gpu.finish(prepared, gpu_out, gpu_ms).verdict
            verdicts_equal += int(va.is_anomalous == vb.is_anomalous)
            confidence_diff = max(confidence_diff, abs(va.confidence - vb.confidence))
            correct["cpu"] += int(va.is_anomalous == truth)
            correct["gpu"] += int(vb.is_anomalous == truth)
            if va.mask is not None and vb.mask is not None:
                agreement = float(np.mean(va.mask == vb.mask))
                mask_agreement.append(agreement)
                masks_identical += int(agreement == 1.0)
        count = len(images)
        report = {
            "images": {"demo_command": 12, "test_split": args.n, "seed": args.seed, "total": count},
            "gpu_libdlr": {"path": str(args.gpu_libdlr), "dlr_version": gpu.runner.info.dlr_version},  # type: ignore[attr-defined]
            "max_abs_diff": {"mask": worst[0], "score": worst[1]},
            "max_confidence_diff": confidence_diff,
            "verdicts_equal": f"{verdicts_equal}/{count}",
            "masks_identical": f"{masks_identical}/{count}",
            "min_mask_pixel_agreement": min(mask_agreement),
            "accuracy": {k: round(v / count, 4) for k, v in correct.items()},
            "model_run_ms_median": {
                "cpu": round(float(np.median(run_ms["cpu"])), 3),
                "cpu_tvm_threads": usable_cpus(),
                "gpu": round(float(np.median(run_ms["gpu"])), 3),
            },
        }
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
