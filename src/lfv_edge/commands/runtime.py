"""`lfv-edge runtime`: install or show the CPU DLR runtime (libdlr.so from PyPI's dlr==1.6.0 wheel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lfv_edge.commands import EXIT_FAILURE, EXIT_OK, Subparsers


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `runtime` to the sub-commands."""
    runtime = commands.add_parser("runtime", help="install or show the CPU DLR runtime")
    runtime_commands = runtime.add_subparsers(dest="runtime_command", required=True)
    install = runtime_commands.add_parser(
        "install", help="fetch libdlr.so from PyPI's dlr==1.6.0 wheel and verify it"
    )
    install.add_argument("--wheel", help="use this downloaded dlr-1.6.0 wheel (offline install)")
    runtime_commands.add_parser("status", help="show where the CPU runtime is")
    runtime.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.model import cpu_runtime

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
