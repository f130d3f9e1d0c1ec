"""What runs beside the service in a serving process: the one place `serve` and the component build it.

    ServiceConfig ─build_companions─▶ [AgentServer (agent section),
                                       CaptureSources (sources list, capture section),
                                       WebView (http section)]
        each started after the service, stopped before it (so what they hand the service
        is still answered), each built by its own package's factory from the configuration

A companion is anything with `start()` and `stop(timeout_s)`: the Edge Agent socket, capture
sources, the web view. `serve` (MQTT) and the Greengrass component (IPC) call
`build_companions` with their transport, so a new companion is added here once, not in each
entry point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from lfv_edge.service.config import ServiceConfig
from lfv_edge.service.core import Service
from lfv_edge.service.ports import Transport

logger = logging.getLogger(__name__)


class Companion(Protocol):
    """Runs beside the service: started after it, stopped before it."""

    def start(self) -> None:
        """Begin (bind sockets, open cameras, …); raises an LfvEdgeError when it cannot."""
        ...

    def stop(self, timeout_s: float, /) -> None:
        """Stop taking work, finish what is in flight within `timeout_s`, release resources."""
        ...


def build_companions(
    config: ServiceConfig,
    service: Service,
    transport: Transport,
    environ: Mapping[str, str] = os.environ,
) -> list[Companion]:
    """The companions the configuration asks for (none when it asks for none).

    `transport` is the process's main transport: where the agent's published verdicts go.
    """
    companions: list[Companion] = []
    if config.agent is not None:
        from lfv_edge.agent.server import AgentServer, verdict_publisher

        route = transport.results_route()
        on_verdict = (
            verdict_publisher(transport, route.topic)
            if config.agent.publish_results and route is not None
            else None
        )
        companions.append(AgentServer.from_service_config(config, on_verdict=on_verdict))
    if config.sources:
        from lfv_edge.capture import CaptureSources

        companions.append(CaptureSources.from_config(config, service, transport, environ))
    if config.http is not None:
        from lfv_edge.web.backends import SourceStatus
        from lfv_edge.web.view import WebView

        # Last: started after the others, stopped first; capture sources show on the page.
        sources = [c for c in companions if isinstance(c, SourceStatus)]
        companions.append(WebView.for_service(config.http, service, sources=sources))
    return companions


def reconfigure_companions(
    companions: Sequence[Companion],
    config: ServiceConfig,
    service: Service,
    transport: Transport,
    environ: Mapping[str, str] = os.environ,
) -> list[Companion]:
    """Hand a new configuration to the companions that take one; start capture sources that
    appear (the first `sources` entry of a live update). Returns the companions now running."""
    from lfv_edge.capture import CaptureSources
    from lfv_edge.errors import LfvEdgeError

    running = list(companions)
    for companion in running:
        if isinstance(companion, CaptureSources):
            try:
                companion.reconfigure(config)
            except LfvEdgeError as exc:
                logger.error("capture sources not fully applied: %s", exc)
    if config.sources and not any(isinstance(c, CaptureSources) for c in running):
        capture = CaptureSources.from_config(config, service, transport, environ)
        try:
            capture.start()
        except LfvEdgeError as exc:
            logger.error("capture sources not started: %s", exc)
            capture.stop(5.0)
        else:
            running.append(capture)
    return running


def start_companions(companions: Sequence[Companion]) -> None:
    """Start each; if one fails, stop the ones already started and raise."""
    started: list[Companion] = []
    try:
        for companion in companions:
            companion.start()
            started.append(companion)
    except BaseException:
        stop_companions(started, 5.0)
        raise


def stop_companions(companions: Sequence[Companion], timeout_s: float) -> None:
    """Stop each, newest first (errors are logged: the service still has to drain)."""
    for companion in reversed(companions):
        try:
            companion.stop(timeout_s)
        except Exception:  # a companion failing to stop must not keep the service from draining
            logger.exception("stopping %s failed", type(companion).__name__)
