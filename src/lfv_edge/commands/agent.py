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
from typing import TYPE_CHECKING

from lfv_edge.commands import Subparsers
from lfv_edge.errors import ConfigError
from lfv_edge.service.config import (
    DEFAULT_AGENT_SOCKET,
    AgentConfig,
    AgentModelConfig,
    ServiceConfig,
    add_config_flags,
    merge_config,
    parse_config,
    raw_from_flags,
    read_config_mapping,
)

if TYPE_CHECKING:
    from lfv_edge.agent.server import AgentServer
    from lfv_edge.web.view import WebView

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
    # The web view (health, metrics of the calls, their verdicts): the `http` keys' own flags.
    add_config_flags(parser, paths=("http.listen", "http.tokenFile", "http.historySize"))
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
    flags = raw_from_flags(args)  # --http …
    raw = read_config_mapping(Path(args.config)) if args.config else {}
    service = parse_config(merge_config(raw, flags)) if args.config or flags else None
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
    serving: list[AgentServer] = []  # the server once it listens (the web view reads it)
    view = _web_view(config, serving)
    server = AgentServer.from_service_config(
        config,
        device=args.device,
        threads=threads,
        on_verdict=view.on_verdict if view is not None else None,
    )
    stop = threading.Event()
    with on_stop_signals(lambda _name: stop.set()):
        try:
            server.start()
            serving.append(server)
            print(f"lfv-edge agent: serving on unix://{server.socket_path}", flush=True)
            if view is not None:
                view.start()
                print(f"lfv-edge agent: web view on {view.url}", flush=True)
            stop.wait()
        finally:
            if view is not None:
                view.stop(STOP_GRACE_S)
            server.stop(STOP_GRACE_S)
    return 0


def _web_view(config: ServiceConfig, serving: list[AgentServer]) -> WebView | None:
    """The web view of the agent's calls (`http` section or --http), or None."""
    if config.http is None:
        return None
    from lfv_edge.web.view import WebView

    def models() -> list[dict[str, str]]:
        return [
            {"Component": info.name, "Status": info.status.name, "Name": info.package_name,
             "Version": info.package_version}
            for server in serving for info in server.registry.list()
        ]  # fmt: skip

    def up() -> bool:
        return any(not server.stopping.is_set() for server in serving)

    return WebView.for_agent(config.http, models, up)
