"""`python -m lfv_edge.modelbuild`: build an LFV-style model package from flags.

    python -m lfv_edge.modelbuild demo-package/ --network controllable --heads both
    python -m lfv_edge.modelbuild bench.zip --network bench --width 1000 --height 1000
    python -m lfv_edge.modelbuild gpu-package/ --target cuda --libdlr /path/to/gpu/libdlr.so

A destination ending in `.zip` gets a deterministic zip; anything else becomes a folder. By
default a CPU package carries a copy of the installed CPU `libdlr.so`, as LFV packages carry
their own (`--no-libdlr` leaves it out). A `--target cuda` package (GPU kernels, needs nvcc)
carries `--libdlr`, else `$LFV_EDGE_GPU_LIBDLR`, else none. Exit codes: 0 built, 1 build
error, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lfv_edge.errors import LfvEdgeError
from lfv_edge.model.cpu_runtime import find_cpu_runtime
from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.gpu import DEFAULT_CUDA_TARGETS
from lfv_edge.modelbuild.package import (
    DEFAULT_PIXEL_CLASSES,
    DeviceType,
    NetworkChoice,
    PackageSpec,
    Target,
    build_lfv_package,
    zip_package,
)

GPU_LIBDLR_ENV = "LFV_EDGE_GPU_LIBDLR"

EXIT_OK = 0
EXIT_FAILURE = 1


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in _csv(text))
    except ValueError as exc:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


def _stage_key(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"expected KEY=JSON, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word such as cls_or_seg is taken as a string


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m lfv_edge.modelbuild`."""
    parser = argparse.ArgumentParser(
        prog="python -m lfv_edge.modelbuild",
        description="Build an LFV-style model package (manifest.json + mochi/) on our DLR kernels.",
    )
    parser.add_argument("dest", type=Path, help="package folder, or a path ending in .zip")
    parser.add_argument(
        "--network", choices=("controllable", "reference", "bench"), default="controllable"
    )
    parser.add_argument("--width", type=int, default=64, help="model input width (default 64)")
    parser.add_argument("--height", type=int, default=64, help="model input height (default 64)")
    parser.add_argument("--heads", choices=("cls", "seg", "both"), default="cls")
    parser.add_argument("--classes", type=_csv, default=("anomaly", "normal"), help="a,b")
    parser.add_argument("--normal-ids", type=_ids, default=(1,), help="e.g. 1")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--no-normalize", action="store_true", help="manifest normalize=false")
    parser.add_argument(
        "--no-range-scale", action="store_true", help="manifest image_range_scale=false"
    )
    parser.add_argument("--pixel-classes", type=_csv, default=DEFAULT_PIXEL_CLASSES)
    parser.add_argument("--seg-normal-ids", type=_ids, default=(0,))
    parser.add_argument(
        "--stage-key",
        type=_stage_key,
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra stage key, e.g. seg_recall_bias=0.1 (repeatable)",
    )
    parser.add_argument(
        "--target",
        choices=("cpu", "cuda"),
        default="cpu",
        help="kernels for the CPU (gcc) or the GPU (CUDA, needs nvcc); default cpu",
    )
    parser.add_argument(
        "--cuda-targets",
        type=_csv,
        default=DEFAULT_CUDA_TARGETS,
        metavar="LIST",
        help=f"fatbin entries of a cuda build (default {','.join(DEFAULT_CUDA_TARGETS)})",
    )
    parser.add_argument(
        "--meta",
        choices=("cpu", "gpu", "none"),
        help=".meta TargetDeviceType (default: cpu, or gpu for --target cuda)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    runtime = parser.add_mutually_exclusive_group()
    runtime.add_argument("--libdlr", type=Path, help="libdlr.so to copy into mochi/")
    runtime.add_argument("--no-libdlr", action="store_true", help="ship no libdlr.so")
    return parser


def _libdlr(args: argparse.Namespace) -> Path | None:
    if args.no_libdlr:
        return None
    if args.libdlr is not None:
        return Path(args.libdlr)
    if args.target == "cuda":  # the CPU runtime cannot run a GPU build
        configured = os.environ.get(GPU_LIBDLR_ENV)
        return Path(configured) if configured else None
    runtime = find_cpu_runtime()
    if runtime is None:
        msg = "no CPU libdlr.so installed: run `lfv-edge runtime install`, pass --libdlr or --no-libdlr"
        raise BuildError(msg)
    return runtime.library


def spec_from_args(args: argparse.Namespace) -> PackageSpec:
    """The `PackageSpec` the parsed flags describe."""
    target: Target = args.target
    chosen: str = args.meta or ("gpu" if target == "cuda" else "cpu")
    meta: DeviceType | None = "gpu" if chosen == "gpu" else "cpu" if chosen == "cpu" else None
    network: NetworkChoice = args.network
    return PackageSpec(
        image_width=args.width,
        image_height=args.height,
        class_names=args.classes,
        class_normal_ids=args.normal_ids,
        threshold=args.threshold,
        normalize=not args.no_normalize,
        image_range_scale=not args.no_range_scale,
        classification_head=args.heads in ("cls", "both"),
        segmentation_head=args.heads in ("seg", "both"),
        pixel_class_names=args.pixel_classes,
        seg_normal_ids=args.seg_normal_ids,
        extra_stage_keys=dict(args.stage_key),
        meta_device=meta,
        network=network,
        seed=args.seed,
        target=target,
        cuda_targets=args.cuda_targets,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the package; returns the exit code."""
    args = build_parser().parse_args(argv)
    dest: Path = args.dest
    try:
        spec = spec_from_args(args)
        libdlr = _libdlr(args)
        if dest.suffix == ".zip":
            with tempfile.TemporaryDirectory(prefix="lfv-package-") as scratch:
                folder = build_lfv_package(Path(scratch) / "package", spec, libdlr=libdlr)
                zip_package(folder, dest)
        else:
            build_lfv_package(dest, spec, libdlr=libdlr)
    except LfvEdgeError as exc:
        print(f"lfv_edge.modelbuild: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(dest)
    return EXIT_OK
