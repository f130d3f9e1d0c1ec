"""The `lfv-edge` command line: parses arguments, installs log handlers, maps errors to exit codes.

The only module that calls `sys.exit` (through `main`'s return value) or installs log handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lfv_edge import __version__, cpu_runtime
from lfv_edge.errors import LfvEdgeError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


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
    commands = parser.add_subparsers(dest="command", required=True)

    runtime = commands.add_parser("runtime", help="install or show the CPU DLR runtime")
    runtime_commands = runtime.add_subparsers(dest="runtime_command", required=True)
    install = runtime_commands.add_parser(
        "install", help="fetch libdlr.so from PyPI's dlr==1.6.0 wheel and verify it"
    )
    install.add_argument("--wheel", help="use this downloaded dlr-1.6.0 wheel (offline install)")
    runtime_commands.add_parser("status", help="show where the CPU runtime is")
    runtime.set_defaults(handler=_cmd_runtime)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lfv-edge` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except LfvEdgeError as exc:
        print(f"lfv-edge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code
