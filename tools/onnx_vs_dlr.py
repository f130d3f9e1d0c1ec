"""ONNX Runtime ÷ DLR: the same model's inference time in both runtimes, measured in one run.

    .venv/bin/python tools/onnx_vs_dlr.py [--threads N] [--reps 30] [--json out.json] [STAGE_OR_PACKAGE …]

Default models: the committed demo package (256×256 U-Net, mask + score), the builder's
"reference" and "bench" networks at 1000×1000 (the P2 packages of `lfv-edge bench`), and,
when the real third-party folders sit beside the checkout (../shared/realmodels), InsightFace
(112×112) and RetinaFace (1024×1057). Each is converted with `lfv-edge convert` first (every
kernel verified), then DLR (`libdlr.so` 1.6.0, `TVM_NUM_THREADS=N`) and ONNX Runtime
(CPUExecutionProvider, `intra_op_num_threads=N`) run the same float32 input, interleaved
(A B, B A, …) so both see the same machine load; reported: medians, and the median of the
per-repetition ratios ONNX/DLR (below 1: ONNX Runtime is faster). Only `runner.run` is
timed (no pre-processing). Not a unit test: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from lfv_edge.bench.timing import interleaved_ms, paired_ratio, summarize
from lfv_edge.convert.api import ConvertOptions, convert_package
from lfv_edge.convert.stage import load_stage
from lfv_edge.model import cpu_runtime
from lfv_edge.model.onnx_runner import OnnxSession
from lfv_edge.model.runner import DlrRunner, configure_threads, usable_cpus
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
REAL = ROOT.parent / "shared" / "realmodels"


def _default_models(work: Path) -> list[tuple[str, Path]]:
    models = [("demo package (256×256 U-Net)", DEMO)]
    for network in ("reference", "bench"):
        folder = work / f"{network}1000"
        spec = PackageSpec(image_width=1000, image_height=1000, network=network)
        build_lfv_package(folder, spec, libdlr=None)
        models.append((f"builder {network} network, 1000×1000", folder))
    for name in ("tvm-insightface-x86", "tvm-retinaface-x86"):
        if (REAL / name).is_dir():
            models.append((f"{name} (real TVM build)", REAL / name))
    return models


def measure(label: str, source: Path, work: Path, threads: int, reps: int) -> dict[str, object]:
    out = work / f"{abs(hash(str(source)))}.onnx"
    report = convert_package(source, out, options=ConvertOptions(e2e_runs=1, check_dlr=False))
    if report.model is None:
        return {"model": label, "error": report.refused}
    stage = load_stage(source)
    name = stage.input_names[0]
    shape = stage.input_shape(name)
    runtime = cpu_runtime.require_cpu_runtime()
    dlr = DlrRunner.load(stage.folder, library=runtime.library, input_shape=shape)
    onnx = OnnxSession(out, threads=threads)
    tensor = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    a = dlr.run(tensor)
    b = onnx.run({name: tensor})
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    samples = interleaved_ms(
        {"dlr": lambda: dlr.run(tensor), "onnx": lambda: onnx.run({name: tensor})},
        repetitions=reps,
        warmup=3,
    )
    ratio = paired_ratio(samples["onnx"], samples["dlr"])
    return {
        "model": label,
        "input": list(shape),
        "kernels_verified": f"{report.verified}/{len(report.kernels)}",
        "dlr_ms": summarize(samples["dlr"]).to_dict(),
        "onnx_ms": summarize(samples["onnx"]).to_dict(),
        "onnx_over_dlr": ratio.to_dict(3),
        "max_abs_difference": diff,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="packages or stage folders (default: see above)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="onnx-vs-dlr-") as scratch:
        work = Path(scratch)
        models = [(str(p), Path(p)) for p in args.models] or _default_models(work)
        for label, source in models:
            result = measure(label, source, work, args.threads, args.reps)
            results.append(result)
            if "error" in result:
                print(f"{label}: not converted: {result['error']}", flush=True)
                continue
            dlr_ms, onnx_ms, ratio = result["dlr_ms"], result["onnx_ms"], result["onnx_over_dlr"]
            print(
                f"{label}: DLR {dlr_ms['median']} ms, ONNX Runtime {onnx_ms['median']} ms, "  # type: ignore[index]
                f"ONNX/DLR {ratio['median']} (p10 {ratio['p10']}, p90 {ratio['p90']})",  # type: ignore[index]
                flush=True,
            )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": usable_cpus(),
        "threads": args.threads,
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
