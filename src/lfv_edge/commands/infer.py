"""`lfv-edge infer`: run a package on image files; one JSON line per image on stdout.

An unreadable image gives an `Error` line and the run goes on (exit code 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO, cast

from lfv_edge.commands import EXIT_FAILURE, EXIT_OK, Subparsers
from lfv_edge.errors import ConfigError, InputError
from lfv_edge.service.config import add_config_flags, raw_from_flags

INFER_KEYS = (
    "model.path", "model.device", "model.threads", "model.thresholdOverride", "model.probe",
    "model.runtime", "model.onnxModel",
)  # fmt: skip
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `infer` to the sub-commands."""
    infer = commands.add_parser(
        "infer", help="run a package on images; one JSON line per image on stdout"
    )
    infer.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    # The model's keys, with their flags, as declared in the configuration schema.
    add_config_flags(infer, paths=INFER_KEYS)
    infer.add_argument(
        "--colors",
        action="append",
        default=[],
        metavar="LABEL=#RRGGBB|FILE.json",
        help="mask colour of a label (repeatable) or a JSON file of them",
    )
    infer.add_argument("--no-mask", action="store_true", help="omit AnomalyMask from the output")
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
    from lfv_edge.inspection.pipeline import ImageFile
    from lfv_edge.service.config import parse_config
    from lfv_edge.service.messages import ModelIdentity, encode_verdict
    from lfv_edge.service.wiring import load_inspector

    raw = raw_from_flags(args)
    model = cast(dict[str, object], raw.setdefault("model", {}))
    model.setdefault("path", str(embedded_package()))
    if args.colors:
        model["colors"] = _parse_colors(args.colors)
    settings = parse_config(raw).model
    assert settings is not None  # noqa: S101 - model.path was set above
    inspector = load_inspector(settings, serving=False)
    identity = ModelIdentity(inspector.package.name, inspector.package.version)
    choice = inspector.device
    if choice.device == "gpu":  # the CPU is the quiet default; running on the GPU says why
        print(f"lfv-edge: device gpu ({choice.reason})", file=sys.stderr, flush=True)
    images = list(_iter_images(args.images))
    progress = _Progress(len(images), sys.stderr)
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image in images:
        try:
            inspection = inspector.inspect(ImageFile(Path(image)))
        except InputError as exc:
            failures += 1
            error = {"Image": image, "Error": {"Code": exc.code, "Message": str(exc)}}
            line = json.dumps(error, separators=(",", ":")).encode()
        else:
            tail: dict[str, object] = {}
            rgb = inspection.verdict.mask_rgb() if mask_dir is not None else None
            if mask_dir is not None and rgb is not None:
                from lfv_edge.inspection.imaging import encode_png

                target = mask_dir / (Path(image).stem + ".mask.png")
                target.write_bytes(encode_png(rgb))
                tail["MaskFile"] = str(target)
            line = encode_verdict(
                inspection,
                identity,
                head={"Image": image},
                tail=tail,
                include_mask=not args.no_mask,
                timestamp=False,
            )
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()
        progress.step()
    return EXIT_FAILURE if failures else EXIT_OK
