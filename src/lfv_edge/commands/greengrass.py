"""`lfv-edge greengrass`: the Run command of the `com.lfvedge.Inspector` Greengrass V2 component."""

from __future__ import annotations

import argparse

from lfv_edge.commands import Subparsers
from lfv_edge.greengrass.component import DEBOUNCE_S, DRAIN_TIMEOUT_S


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `lfv-edge greengrass`."""
    parser = commands.add_parser(
        "greengrass",
        help="run as the com.lfvedge.Inspector Greengrass component (started by the nucleus)",
        description=(
            "Serve inspection requests over Greengrass IPC. Needs the SVCUID and socket path the "
            "nucleus gives its components; the configuration comes from the component's own "
            "configuration (recipe DefaultConfiguration plus deployment MERGEs)."
        ),
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds to answer what was received after SIGTERM (default: the configuration's "
        f"stopTimeoutS, else {DRAIN_TIMEOUT_S:g}; the nucleus kills the process 5 s after SIGTERM)",
    )
    parser.add_argument(
        "--debounce",
        type=float,
        default=DEBOUNCE_S,
        help=f"quiet seconds before a configuration change is applied (default {DEBOUNCE_S})",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.greengrass.component import run_component

    run_component(debounce_s=args.debounce, drain_timeout_s=args.drain_timeout)
