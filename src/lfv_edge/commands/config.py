"""`lfv-edge config`: check a configuration file, or list every configuration key.

lfv-edge config check serve.json     # exit 0 and a summary, or exit 2 naming the key path
lfv-edge config keys                 # the table of keys, defaults, flags and meanings
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lfv_edge.commands import EXIT_OK, Subparsers


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `config` to the sub-commands."""
    parser = commands.add_parser(
        "config", help="check a configuration file, or list every configuration key"
    )
    actions = parser.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="parse a JSON configuration file as serve would")
    check.add_argument("file", help="JSON configuration file")
    check.add_argument("--json", action="store_true", help="print the error as JSON")
    actions.add_parser("keys", help="print the Markdown table of every key (as in the README)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lfv_edge.errors import ConfigError
    from lfv_edge.service.config import read_config_file, reference_table

    if args.config_command == "keys":
        print(reference_table())
        return EXIT_OK
    try:
        config = read_config_file(Path(args.file), os.environ)
    except ConfigError as exc:
        if not args.json:
            raise
        print(json.dumps({"Valid": False, "Key": exc.key, "Message": str(exc)}))
        return 2
    sections = [
        name for name in ("model", "mqtt", "ipc", "agent", "sources") if getattr(config, name)
    ]
    if args.json:
        print(json.dumps({"Valid": True, "Sections": sections}))
    else:
        print(f"{args.file}: valid ({', '.join(sections) or 'defaults only'})")
    return EXIT_OK
