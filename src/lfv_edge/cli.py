"""The `lfv-edge` command line: parses arguments, installs log handlers, maps errors to exit codes.

Exit codes: 0 success; 1 failure (an image failed in `infer`, a runtime error); 2 usage or
configuration error; 3 the model package cannot be used. Never a traceback: unexpected
errors are reported in one line (the traceback goes to the DEBUG log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lfv_edge import __version__
from lfv_edge.commands import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PACKAGE,
    EXIT_USAGE,
    register_all,
)
from lfv_edge.errors import ConfigError, LfvEdgeError, ModelPackageError
from lfv_edge.service.process import install_logging

logger = logging.getLogger(__name__)


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

    register_all(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lfv-edge` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    install_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"lfv-edge: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelPackageError as exc:
        print(f"lfv-edge: cannot use the model: {exc}", file=sys.stderr)
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
