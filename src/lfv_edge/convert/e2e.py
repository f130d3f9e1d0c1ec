"""Whole-model checks of a converted model against DLR: raw outputs and LFV verdicts.

* Raw outputs: the inputs of the child's end-to-end runs go through DLR itself, in a child
  process (`python -m lfv_edge.convert.e2e STAGE LIBDLR IN.npz OUT.npz`; a package that
  crashes DLR cannot take the converter down), and through the converted model in ONNX
  Runtime. Both are compared, and DLR with the package's kernels as the converter ran them.
* Verdicts (LFV packages, with images): each image goes through lfv-edge's pipeline twice —
  manifest-driven pre-processing, the model, LFV post-processing — once with `DlrRunner`, once
  with `OnnxRunner`; anomaly decisions, confidences and mask labels are compared.

A `--system-lib` library cannot be loaded by DLR at all; its reference is the package's own
kernels (what the child already compared).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lfv_edge.convert.report import EndToEnd, VerdictCheck
from lfv_edge.convert.stage import StageModel
from lfv_edge.convert.verify import Difference, difference
from lfv_edge.errors import InputError, LfvEdgeError
from lfv_edge.inspection.pipeline import ImageSource, Inspector
from lfv_edge.model import cpu_runtime
from lfv_edge.model.device import DeviceChoice
from lfv_edge.model.elf import ElfError
from lfv_edge.model.onnx_runner import OnnxRunner, OnnxSession
from lfv_edge.model.package import read_model_package
from lfv_edge.model.preflight import check_libdlr, find_stage_files
from lfv_edge.model.runner import DlrRunner, configure_threads, run_dlr_once

_DLR_TIMEOUT_S = 900


def dlr_library(stage: StageModel) -> tuple[Path | None, str]:
    """The libdlr.so to check against (the package's own, else the CPU runtime), or why none."""
    files = find_stage_files(stage.folder)
    if files.libdlr is not None:
        try:
            return check_libdlr(files.libdlr).path, "the package's libdlr.so"
        except (LfvEdgeError, ElfError) as exc:
            return None, f"the package's libdlr.so cannot be used here: {exc}"
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        return None, "no DLR runtime installed (lfv-edge runtime install)"
    return runtime.library, f"DLR {cpu_runtime.DLR_WHEEL_REQUIREMENT.split('==')[1]} CPU runtime"


def compare_with_dlr(
    stage: StageModel, model: Path, e2e_npz: Path, runs: int, work: Path
) -> tuple[EndToEnd | None, str]:
    """(converted model vs DLR, a note); None with the reason when DLR cannot run it."""
    if stage.system_lib:
        return (
            None,
            "not run: DLR cannot load a --system-lib kernel library (its TVMBackend* functions are undefined); the package's own kernels are the reference",
        )
    library, what = dlr_library(stage)
    if library is None:
        return None, f"not run: {what}"
    out = work / "dlr.npz"
    command = [
        sys.executable,
        "-m",
        "lfv_edge.convert.e2e",
        str(stage.folder),
        str(library),
        str(e2e_npz),
        str(out),
        str(runs),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_DLR_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"not run: DLR did not finish within {_DLR_TIMEOUT_S} s"
    if completed.returncode != 0:
        reason = (completed.stderr.strip().splitlines() or [f"exit {completed.returncode}"])[-1]
        return None, f"DLR failed on this package: {reason}"
    dlr = np.load(out)
    kernels = np.load(e2e_npz)
    session = OnnxSession(model, threads=None)
    worst: list[list[Difference]] = [[] for _ in stage.output_names]
    kernels_vs_dlr: list[Difference] = []
    for run in range(runs):
        feeds = {name: kernels[f"in{run}_{name}"] for name in stage.input_names}
        got = session.run(feeds)
        for k in range(len(stage.output_names)):
            reference = dlr[f"out{run}_{k}"]
            worst[k].append(difference(got[k], reference))
            kernels_vs_dlr.append(difference(kernels[f"out{run}_{k}"], reference))
    outputs = EndToEnd.per_output(stage.output_names, stage.graph.output_shapes(), worst)
    same = Difference.worst(kernels_vs_dlr)
    note = f"{what}; the converter's run of the package kernels vs DLR: " + (
        "identical" if same.identical else f"max abs {same.max_abs:.3g}"
    )
    return EndToEnd(f"DLR ({what})", runs, outputs), note


def compare_verdicts(
    source: Path, model: Path, images: Sequence[tuple[str, ImageSource]]
) -> tuple[list[VerdictCheck], list[str]]:
    """Each image through the LFV pipeline with DLR and with the converted model; also the
    images that could not be used (and why).

    Raises:
        ModelPackageError: the package is not one lfv-edge serves (not an LFV package).
    """
    package = read_model_package(source)
    configure_threads(None)
    choice = DeviceChoice("cpu", "conversion check")
    dlr = Inspector(
        package,
        DlrRunner.load(
            package.stage_dir, library=package.library.path, input_shape=package.stage.input_shape
        ),
        device=choice,
    )
    onnx = Inspector(package, OnnxRunner.load(package, model=model, provider="cpu"), device=choice)
    checks = []
    skipped = []
    for label, image in images:
        try:
            a = dlr.inspect(image).verdict
            b = onnx.inspect(image).verdict
        except InputError as exc:
            skipped.append(f"{label}: {exc}")
            continue
        differing = 0
        if a.mask is not None and b.mask is not None:
            differing = int(np.count_nonzero(a.mask != b.mask))
        checks.append(
            VerdictCheck(
                label, a.is_anomalous, b.is_anomalous, a.confidence, b.confidence, differing
            )
        )
    return checks, skipped


def _dlr_main(argv: Sequence[str]) -> int:
    """Child: run DLR on the saved inputs; write out<run>_<k> arrays."""
    stage_dir, library, inputs, outputs, runs = (
        Path(argv[0]),
        Path(argv[1]),
        Path(argv[2]),
        Path(argv[3]),
        int(argv[4]),
    )
    saved = np.load(inputs)
    configure_threads(None)
    result: dict[str, np.ndarray] = {}
    try:
        for run in range(runs):
            prefix = f"in{run}_"
            feeds = {
                key[len(prefix) :]: saved[key] for key in saved.files if key.startswith(prefix)
            }
            for k, array in enumerate(run_dlr_once(stage_dir, library=library, feeds=feeds)):
                result[f"out{run}_{k}"] = array
    except LfvEdgeError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 3
    np.savez(outputs, **result)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(_dlr_main(sys.argv[1:]))
