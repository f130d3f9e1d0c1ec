"""`lfv-edge inspect`: describe a model package or a bare DLR model folder; `--probe` runs it once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lfv_edge.commands import EXIT_OK, Subparsers


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `inspect` to the sub-commands."""
    inspect = commands.add_parser(
        "inspect",
        help="describe a model package (classes, threshold, input, heads, runtime) or a bare "
        "DLR model folder (inputs, outputs, kernels, modules, runtime)",
    )
    inspect.add_argument(
        "package",
        nargs="?",
        help="package zip or folder, or a DLR model folder (default: the demo package)",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    inspect.add_argument(
        "--probe",
        action="store_true",
        help="also load the model in a child process, run it once on zeros and report each "
        "output's shape, sum and L2 norm",
    )
    inspect.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.demo.embedded import embedded_package
    from lfv_edge.inspection.report import describe, format_description

    path = Path(args.package) if args.package else embedded_package()
    description = describe(path, probe=args.probe)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    return EXIT_OK
