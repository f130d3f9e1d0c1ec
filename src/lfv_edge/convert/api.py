"""`convert_package`: the whole conversion, as `lfv-edge convert` runs it.

    source (package zip/folder or stage folder)
      → child process: per-kernel verification, assembly, model vs the package's kernels
      → model vs DLR on the same inputs (child process), LFV verdicts on images (packages)
      → OUT.onnx, OUT.report.json, OUT.manifest.json (packages), optionally a copy of the
        package with the model in its stage folder (`into_package`)

Nothing is written at OUT when any kernel is unverified; the report still is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.convert import ConvertError
from lfv_edge.convert.e2e import compare_verdicts, compare_with_dlr
from lfv_edge.convert.harness import STALL_S, run_worker
from lfv_edge.convert.report import ConversionReport
from lfv_edge.convert.stage import load_stage
from lfv_edge.convert.worker import E2E, MODEL, Job
from lfv_edge.errors import LfvEdgeError
from lfv_edge.inspection.pipeline import ImageSource
from lfv_edge.model.onnx_runner import STAGE_MODEL_FILE


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """How thoroughly to check."""

    seed: int = 0
    e2e_runs: int = 3  # random inputs compared end to end (kernels and DLR)
    check_dlr: bool = True
    stall_s: float = STALL_S


def sidecar(out: Path, suffix: str) -> Path:
    """`model.onnx` → `model.report.json` etc."""
    return out.with_name(out.stem + suffix)


def convert_package(
    source: Path,
    out: Path,
    *,
    images: Sequence[tuple[str, ImageSource]] = (),
    options: ConvertOptions = ConvertOptions(),
    into_package: Path | None = None,
) -> ConversionReport:
    """Convert `source` to ONNX at `out` (only if every kernel verifies); return the report.

    Raises:
        ConvertError: the source cannot be converted at all (missing files, another CPU
            architecture, a GPU build), or the child process failed outside any kernel.
    """
    start = time.perf_counter()
    stage = load_stage(source)  # refuse what cannot work before starting a child
    if out.suffix != ".onnx":
        msg = f"{out}: the output file must end in .onnx"
        raise ConvertError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lfv-convert-") as scratch:
        work = Path(scratch)
        report = run_worker(
            Job(str(source), str(work), seed=options.seed, e2e_runs=options.e2e_runs),
            stall_s=options.stall_s,
        )
        report.source = str(source)
        if report.model is not None:
            partial = out.with_name(f".{out.name}.partial")
            shutil.copyfile(work / MODEL, partial)
            partial.replace(out)
            report.model = str(out)
            if stage.manifest_text is not None:
                sidecar(out, ".manifest.json").write_text(stage.manifest_text)
            if options.check_dlr:
                report.vs_dlr, report.dlr_note = compare_with_dlr(
                    stage, out, work / E2E, options.e2e_runs, work
                )
            if images and stage.manifest is not None:
                if report.vs_dlr is None:
                    report.verdict_note = "not compared: DLR did not run this package"
                else:
                    try:
                        report.verdicts, skipped = compare_verdicts(source, out, images)
                        if skipped:
                            report.verdict_note = "images not usable: " + "; ".join(skipped)
                    except LfvEdgeError as exc:
                        report.verdict_note = f"not compared: {exc}"
            elif stage.manifest is None:
                report.verdict_note = "not compared: a bare stage folder has no LFV manifest"
            if into_package is not None:
                if stage.package_root is None:
                    msg = "--into-package needs an LFV package (manifest.json) as the source"
                    raise ConvertError(msg)
                write_package_with_model(stage.package_root, stage.folder.name, out, into_package)
        else:
            out.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    sidecar(out, ".report.json").write_text(report.dumps())
    return report


def write_package_with_model(root: Path, stage_name: str, model: Path, dest: Path) -> Path:
    """A copy of the package at `dest` (folder, or zip when it ends in .zip) with
    `<stage>/model.onnx` added beside the DLR files (which DLR ignores)."""
    if dest.exists():
        msg = f"{dest} already exists"
        raise ConvertError(msg)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    extra = f"{stage_name}/{STAGE_MODEL_FILE}"
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                name = path.relative_to(root).as_posix()
                if name != extra:
                    archive.write(path, name)
            archive.write(model, extra)
        return dest
    shutil.copytree(root, dest)
    shutil.copyfile(model, dest / extra)
    return dest


def load_report(path: Path) -> ConversionReport:
    """A report written by `convert_package`."""
    return ConversionReport.from_json(json.loads(path.read_text()))
