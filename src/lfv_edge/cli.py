"""The `lfv-edge` command line: parses arguments, installs log handlers, maps errors to exit codes.

Exit codes: 0 success; 1 failure (an image failed in `infer`, a runtime error); 2 usage or
configuration error; 3 the model package cannot be used. Never a traceback: unexpected
errors are reported in one line (the traceback goes to the DEBUG log).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from lfv_edge import __version__
from lfv_edge.commands import register_all
from lfv_edge.demo.embedded import embedded_package
from lfv_edge.errors import (
    ConfigError,
    InputError,
    LfvEdgeError,
    ModelPackageError,
)
from lfv_edge.model import cpu_runtime

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PACKAGE = 3
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MODEL_ENV = "LFV_EDGE_DEFAULT_MODEL"
# The embedded demo package, as a Greengrass model-component artifact in the source tree.
EMBEDDED_PACKAGE = Path(
    "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


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


def _cmd_runtime(args: argparse.Namespace) -> int:
    if args.runtime_command == "install":
        wheel = Path(args.wheel) if args.wheel else None
        runtime = cpu_runtime.install_cpu_runtime(wheel=wheel)
        print(f"CPU runtime: {runtime.library} (sha256 {runtime.sha256})")
        return EXIT_OK
    found = cpu_runtime.find_cpu_runtime()
    if found is None:
        print(f"CPU runtime: not installed (expected at {cpu_runtime.default_runtime_dir()})")
        return EXIT_FAILURE
    print(f"CPU runtime: {found.library} (sha256 {found.sha256})")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from lfv_edge.inspection.report import describe_package, format_description

    path = Path(args.package) if args.package else embedded_package()
    description = describe_package(path)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    return EXIT_OK


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


def _cmd_infer(args: argparse.Namespace) -> int:
    from lfv_edge.inspection.pipeline import ImageFile, Inspector
    from lfv_edge.model.package import read_model_package

    model = Path(args.model) if args.model else embedded_package()
    package = read_model_package(model)
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `lfv-edge` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="lfv-edge",
        description="Run Amazon Lookout for Vision edge model packages without the LFV service.",
    )
    parser.add_argument("--version", action="version", version=f"lfv-edge {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", help="describe a model package: classes, threshold, input, heads, runtime"
    )
    inspect.add_argument(
        "package", nargs="?", help="package zip or folder (default: the demo package)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    inspect.set_defaults(handler=_cmd_inspect)

    infer = commands.add_parser(
        "infer", help="run a package on images; one JSON line per image on stdout"
    )
    infer.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    infer.add_argument("--model", help="package zip or folder (default: the demo package)")
    infer.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
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
    infer.set_defaults(handler=_cmd_infer)

    runtime = commands.add_parser("runtime", help="install or show the CPU DLR runtime")
    runtime_commands = runtime.add_subparsers(dest="runtime_command", required=True)
    install = runtime_commands.add_parser(
        "install", help="fetch libdlr.so from PyPI's dlr==1.6.0 wheel and verify it"
    )
    install.add_argument("--wheel", help="use this downloaded dlr-1.6.0 wheel (offline install)")
    runtime_commands.add_parser("status", help="show where the CPU runtime is")
    runtime.set_defaults(handler=_cmd_runtime)
    register_all(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lfv-edge` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"lfv-edge: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelPackageError as exc:
        print(f"lfv-edge: cannot use the model package: {exc}", file=sys.stderr)
        return EXIT_PACKAGE
    except LfvEdgeError as exc:
        print(f"lfv-edge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK  # `lfv-edge infer … | head` closed our stdout: not an error
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        print(f"lfv-edge: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code
