"""Sub-commands that live in their own modules (`serve`, `agent`, `demo`, `bench`, …).

Each module here defines `register(commands)`, which adds its parser to the `lfv-edge`
sub-parsers and sets `handler` (a function `argparse.Namespace -> int` exit code). `cli.py`
registers every module of this package, in name order, so adding a command touches no other
file. Modules import their heavy dependencies inside the handler, keeping `--help` instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

Subparsers = argparse._SubParsersAction

# Exit codes of every command (cli.main maps errors to the last two).
EXIT_OK = 0
EXIT_FAILURE = 1  # an image failed in `infer`, a runtime error
EXIT_USAGE = 2  # usage or configuration error
EXIT_PACKAGE = 3  # the model package cannot be used


def register_all(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Register every command module of this package."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(commands)
