"""`lfv-edge serve`: the inspection service on an MQTT broker (mosquitto, AWS IoT Core).

Settings come from flags and/or a JSON config file (`--config`); flags win. The flags are
declared with their keys (service/config.py); both become one raw mapping (the file's, with
the flags deep-merged over it) that `parse_config` checks, so a bad value is reported the same
way whatever its source. SIGTERM or SIGINT: stop taking requests, finish and publish what was
received, disconnect, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from lfv_edge.commands import Subparsers
from lfv_edge.errors import ConfigError, TransportError
from lfv_edge.service.config import (
    ServiceConfig,
    add_config_flags,
    flag_of,
    merge_config,
    parse_config,
    raw_from_flags,
    read_config_mapping,
)

logger = logging.getLogger(__name__)


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `serve` to the `lfv-edge` sub-commands."""
    parser = commands.add_parser(
        "serve",
        help="serve inspections over MQTT (requests in, LFV-shaped verdicts out)",
        description="Subscribe to a requests topic, inspect each image with the model package "
        "and publish one reply per request. Settings from flags and/or --config FILE "
        "(flags win); each flag names its configuration key. See docs/mqtt.md.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON configuration file")
    add_config_flags(parser)
    parser.set_defaults(handler=run_serve)


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServiceConfig:
    """The file's mapping with the flags merged over it, parsed and checked for `serve`.

    Raises:
        ConfigError: names the key path (and the flag standing for it).
    """
    base = read_config_mapping(Path(args.config)) if args.config else {}
    try:
        config = parse_config(merge_config(base, raw_from_flags(args)), environ)
    except ConfigError as exc:
        flag = flag_of(exc.key) if exc.key else None
        if flag is None:
            raise
        raise ConfigError(f"{exc} (flag {flag})", key=exc.key) from exc
    if config.mqtt is None:
        missing = [
            flag
            for flag, path in (
                ("--broker", "broker"),
                ("--requests-topic", "requestsTopic"),
                ("--results-topic", "resultsTopic"),
            )
            if getattr(args, f"config__mqtt__{path}", None) is None
        ]
        raise ConfigError(
            f"mqtt: required: give {', '.join(missing) or 'the mqtt flags'} "
            "(or an mqtt section in --config)",
            key="mqtt",
        )
    if config.model is None:
        raise ConfigError(
            "model.path: required: give --model (or model.path in --config)", key="model.path"
        )
    return config


def run_serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal transport error (TransportError, exit 1)."""
    from lfv_edge.host import build_companions, start_companions, stop_companions
    from lfv_edge.service.messages import environment_identity
    from lfv_edge.service.process import exit_now, on_stop_signals
    from lfv_edge.service.wiring import build_service, load_inspector
    from lfv_edge.transports.mqtt import MqttTransport

    environ = os.environ
    if getattr(args, "config__logLevel", None) is None and args.log_level.upper() != "WARNING":
        args.config__logLevel = args.log_level.upper()  # `lfv-edge --log-level X serve`
    config = build_config(args, environ)
    logging.getLogger().setLevel(config.log_level)
    assert config.model is not None  # noqa: S101 - build_config checked
    assert config.mqtt is not None  # noqa: S101 - build_config checked
    inspector = load_inspector(config.model, config.limits, environ=environ)
    package = inspector.package
    transport = MqttTransport.from_config(
        config.mqtt,
        status_fields={
            "Model": {"Name": package.name, "Version": package.version},
            **environment_identity(environ),
        },
        environ=environ,
    )
    service = build_service(config, inspector, [transport], environ)
    companions = build_companions(config, service, transport, environ)
    logger.info(
        "serve model=%s version=%s queue=%d overflow=%s broker=%s requests=%s",
        package.name,
        package.version,
        config.queue.size,
        config.queue.overflow.value,
        config.mqtt.broker,
        config.mqtt.requests_topic,
    )
    stop = threading.Event()
    with on_stop_signals(lambda _name: stop.set()):
        try:
            service.start()
        except TransportError:
            service.stop(1.0)
            raise

        # A fatal transport error stops the service by itself; wake the main thread then.
        def watch() -> None:
            service.wait()
            stop.set()

        threading.Thread(target=watch, name="lfv-serve-watch", daemon=True).start()
        try:
            start_companions(companions)
        except BaseException:
            service.stop(config.stop_timeout_s)
            raise
        stop.wait()
        stop_companions(companions, config.stop_timeout_s / 4)
        drained = service.stop(config.stop_timeout_s)
    if service.fatal_reason is not None:
        exit_now(1, f"lfv-edge: {service.fatal_reason}")
    if not drained:
        exit_now(
            1,
            f"lfv-edge serve: requests still in flight after stopTimeoutS {config.stop_timeout_s:g} s",
        )
    exit_now(0)
