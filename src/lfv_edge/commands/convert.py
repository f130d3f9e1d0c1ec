"""`lfv-edge convert`: a compiled LFV/DLR package → an ONNX model, verified kernel by kernel.

Prints the report (or `--json`); writes OUT.onnx only when every kernel is verified, and
OUT.report.json always. Exit codes: 0 converted, 1 not converted (the report says which
kernels), 3 the package cannot be read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from lfv_edge.commands import EXIT_FAILURE, EXIT_OK, Subparsers
from lfv_edge.commands.infer import IMAGE_SUFFIXES


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `convert` to the sub-commands."""
    convert = commands.add_parser(
        "convert",
        help="turn a compiled LFV/DLR package into an ONNX model, verified kernel by kernel",
    )
    convert.add_argument("package", help="package zip or folder, or a DLR stage folder")
    convert.add_argument("output", help="the ONNX model to write (…/model.onnx)")
    convert.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="IMAGE_OR_DIR",
        help="images for the DLR-vs-ONNX verdict check (default: synthetic demo images)",
    )
    convert.add_argument(
        "--demo-images",
        type=int,
        default=8,
        help="how many synthetic images when no --images (0: none)",
    )
    convert.add_argument(
        "--runs", type=int, default=3, help="random inputs for the end-to-end checks"
    )
    convert.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    convert.add_argument("--no-dlr", action="store_true", help="skip the comparison with DLR")
    convert.add_argument(
        "--into-package",
        metavar="OUT",
        help="also write a copy of the package (folder, or .zip) with the model in its stage folder",
    )
    convert.add_argument("--json", action="store_true", help="print the report as JSON")
    convert.add_argument("--verbose", "-v", action="store_true", help="one line per kernel")
    convert.set_defaults(handler=_run)


def _image_files(arguments: Sequence[str]) -> Iterator[Path]:
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            yield from (p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.convert.api import ConvertOptions, convert_package
    from lfv_edge.convert.stage import load_stage
    from lfv_edge.inspection.pipeline import ImageFile, ImageSource, RawFrame

    source, out = Path(args.package), Path(args.output)
    images: list[tuple[str, ImageSource]] = [
        (str(p), ImageFile(p)) for p in _image_files(args.images)
    ]
    if not images and args.demo_images > 0 and load_stage(source).manifest is not None:
        from lfv_edge.demo.synthetic_line import generate_dataset

        for index, sample in enumerate(
            generate_dataset(args.demo_images, seed=args.seed, split="test")
        ):
            label = f"synthetic #{index} ({sample.surface}, {sample.defect or 'normal'})"
            images.append((label, RawFrame(sample.image_rgb, "rgb")))
    options = ConvertOptions(seed=args.seed, e2e_runs=args.runs, check_dlr=not args.no_dlr)
    into = Path(args.into_package) if args.into_package else None
    report = convert_package(source, out, images=images, options=options, into_package=into)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=float))
    else:
        print(report.to_text(verbose=args.verbose))
    return EXIT_OK if report.model else EXIT_FAILURE
