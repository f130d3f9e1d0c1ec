"""`lfv-edge infer`: run a package on image files; one JSON line per image on stdout.

An unreadable image gives an `Error` line and the run goes on (exit code 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from lfv_edge.commands import EXIT_FAILURE, EXIT_OK, Subparsers
from lfv_edge.errors import ConfigError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `infer` to the sub-commands."""
    infer = commands.add_parser(
        "infer", help="run a package on images; one JSON line per image on stdout"
    )
    infer.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    infer.add_argument("--model", help="package zip or folder (default: the demo package)")
    infer.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    infer.add_argument(
        "--runtime",
        choices=("dlr", "onnx"),
        default="dlr",
        help="dlr (the package's compiled model) or onnx (its converted model in ONNX Runtime)",
    )
    infer.add_argument(
        "--onnx-model",
        metavar="FILE",
        help="the converted model for --runtime onnx (default: <stage folder>/model.onnx)",
    )
    infer.add_argument("--threads", type=int, help="TVM worker threads (default: all usable CPUs)")
    infer.add_argument("--threshold", type=float, help="override the manifest's threshold")
    infer.add_argument(
        "--colors",
        action="append",
        default=[],
        metavar="LABEL=#RRGGBB|FILE.json",
        help="mask colour of a label (repeatable) or a JSON file of them",
    )
    infer.add_argument("--no-mask", action="store_true", help="omit AnomalyMask from the output")
    infer.add_argument(
        "--probe",
        action="store_true",
        help="load the model in a child process first, so a corrupt package cannot crash this one",
    )
    infer.add_argument("--mask-dir", help="also write each anomaly mask as a PNG here")
    infer.set_defaults(handler=_run)


def _parse_colors(values: Sequence[str]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for value in values:
        path = Path(value)
        if "=" not in value and path.suffix == ".json":
            try:
                loaded = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                msg = f"--colors {value}: cannot read a JSON object of label → colour: {exc}"
                raise ConfigError(msg) from exc
            if not isinstance(loaded, dict):
                msg = f"--colors {value}: expected a JSON object of label → colour"
                raise ConfigError(msg)
            colors.update({str(k): str(v) for k, v in loaded.items()})
            continue
        label, sep, color = value.partition("=")
        if not sep or not label:
            msg = f"--colors {value!r}: expected LABEL=#RRGGBB or a .json file"
            raise ConfigError(msg)
        colors[label] = color
    return colors


def _iter_images(arguments: Sequence[str]) -> Iterator[str]:
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(child)
        else:
            yield argument


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._enabled = total >= 10 and stream.isatty()
        self._done = 0

    def step(self) -> None:
        self._done += 1
        if self._enabled:
            width = 30
            filled = width * self._done // self._total
            bar = "#" * filled + "." * (width - filled)
            self._stream.write(f"\r[{bar}] {self._done}/{self._total}")
            if self._done == self._total:
                self._stream.write("\n")
            self._stream.flush()


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.demo.embedded import embedded_package
    from lfv_edge.inspection.pipeline import ImageFile, Inspector
    from lfv_edge.model.package import read_model_package

    model = Path(args.model) if args.model else embedded_package()
    package = read_model_package(model)
    if args.runtime == "onnx":
        from lfv_edge.model.onnx_runner import load_onnx_runner

        onnx_model = Path(args.onnx_model) if args.onnx_model else None
        runner, choice = load_onnx_runner(
            package, device=args.device, threads=args.threads, model=onnx_model
        )
        inspector = Inspector(
            package,
            runner,
            device=choice,
            colors=_parse_colors(args.colors),
            threshold=args.threshold,
        )
    else:
        inspector = Inspector.load(
            package,
            device=args.device,
            threads=args.threads,
            colors=_parse_colors(args.colors),
            threshold=args.threshold,
            probe=args.probe,
        )
    images = list(_iter_images(args.images))
    progress = _Progress(len(images), sys.stderr)
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image in images:
        line: dict[str, object] = {"Image": image}
        try:
            inspection = inspector.inspect(ImageFile(Path(image)))
        except InputError as exc:
            failures += 1
            line["Error"] = {"Code": exc.code, "Message": str(exc)}
        else:
            verdict = inspection.verdict
            line["DetectAnomalyResult"] = verdict.to_lfv(include_mask=not args.no_mask)
            line["Model"] = {"Name": package.name, "Version": package.version}
            line["Threshold"] = verdict.threshold
            line["Score"] = verdict.score
            line["TimingsMs"] = inspection.timings.to_dict()
            if mask_dir is not None and verdict.mask is not None:
                from lfv_edge.inspection.imaging import encode_png

                rgb = verdict.mask_rgb()
                if rgb is not None:
                    target = mask_dir / (Path(image).stem + ".mask.png")
                    target.write_bytes(encode_png(rgb))
                    line["MaskFile"] = str(target)
        print(json.dumps(line), flush=True)
        progress.step()
    return EXIT_FAILURE if failures else EXIT_OK
