"""`lfv-edge agent`: the LFV Edge Agent gRPC API on a Unix socket, as a stand-alone process.

    lfv-edge agent --model com.example.PartsModel=/models/parts.zip --start com.example.PartsModel

Models come from `--model NAME=PACKAGE` (repeatable) and/or the `agent` section of `--config`;
`--socket` and `--start` override and extend it. SIGTERM or SIGINT: stop accepting calls,
finish the ones in flight, stop the models, remove the socket, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import replace
from pathlib import Path

from lfv_edge.commands import Subparsers
from lfv_edge.errors import ConfigError
from lfv_edge.service.config import (
    DEFAULT_AGENT_SOCKET,
    AgentConfig,
    AgentModelConfig,
    ServiceConfig,
    read_config_file,
)

logger = logging.getLogger(__name__)

STOP_GRACE_S = (
    10.0  # in-flight calls get this long after SIGTERM (Greengrass waits 20 s by default)
)


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the `agent` sub-command."""
    parser = commands.add_parser(
        "agent",
        help="serve the LFV Edge Agent gRPC API (AWS.LookoutVision.EdgeAgent) on a Unix socket",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--socket",
        help=f"unix:///path or a path (default: the agent section's, else {DEFAULT_AGENT_SOCKET})",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PACKAGE",
        help="a model component name and its package zip or folder (repeatable)",
    )
    parser.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="NAME",
        help="start this model at launch (repeatable); clients may also call StartModel",
    )
    parser.add_argument("--config", help="JSON configuration file; its `agent` section is used")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None)
    parser.add_argument("--threads", type=int, help="TVM worker threads per model")
    parser.set_defaults(handler=run_agent)


def _parse_models(values: list[str]) -> dict[str, AgentModelConfig]:
    models: dict[str, AgentModelConfig] = {}
    for value in values:
        name, sep, package = value.partition("=")
        if not sep or not name or not package:
            msg = f"--model {value!r}: expected NAME=PACKAGE"
            raise ConfigError(msg)
        models[name] = AgentModelConfig(path=Path(package).expanduser())
    return models


def agent_settings(args: argparse.Namespace) -> tuple[ServiceConfig | None, AgentConfig]:
    """The agent configuration the command line and `--config` describe together.

    Raises:
        ConfigError: no models, or `--start` names a model that is not configured.
    """
    service = read_config_file(Path(args.config)) if args.config else None
    agent = (service.agent if service is not None else None) or AgentConfig()
    models = {**agent.models, **_parse_models(args.model)}
    start = tuple(dict.fromkeys((*agent.start_models, *args.start)))
    agent = replace(agent, socket=args.socket or agent.socket, models=models, start_models=start)
    if not agent.models:
        msg = "no models: give --model NAME=PACKAGE or agent.models in --config"
        raise ConfigError(msg)
    for name in agent.start_models:
        if name not in agent.models:
            msg = f"--start {name}: not a configured model (configured: {', '.join(agent.models)})"
            raise ConfigError(msg)
    return service, agent


def run_agent(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    from lfv_edge.agent.server import AgentServer
    from lfv_edge.service.process import on_stop_signals
    from lfv_edge.service.wiring import serving_threads

    service, agent = agent_settings(args)
    config = replace(service or ServiceConfig(), agent=agent)
    threads = serving_threads(args.threads or (config.model.threads if config.model else None))
    server = AgentServer.from_service_config(config, device=args.device, threads=threads)
    stop = threading.Event()
    with on_stop_signals(lambda _name: stop.set()):
        try:
            server.start()
            print(f"lfv-edge agent: serving on unix://{server.socket_path}", flush=True)
            stop.wait()
        finally:
            server.stop(STOP_GRACE_S)
    return 0
