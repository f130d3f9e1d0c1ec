"""`lfv-edge serve`: the inspection service on an MQTT broker (mosquitto, AWS IoT Core).

Settings come from flags and/or a JSON config file (`--config`); flags win. Both become one
raw mapping (the file's, with the flags deep-merged over it) that `config.parse_config`
checks, so a bad value is reported the same way whatever its source. SIGTERM or SIGINT:
stop taking requests, finish and publish what was received, disconnect, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from lfv_edge.commands import Subparsers
from lfv_edge.errors import ConfigError, TransportError
from lfv_edge.service.config import (
    OverflowPolicy,
    ServiceConfig,
    merge_config,
    parse_config,
    read_config_mapping,
)

if TYPE_CHECKING:  # imported for real inside the functions, so `--help` stays instant
    from lfv_edge.agent.server import AgentServer
    from lfv_edge.inspection.imaging import SizeLimits
    from lfv_edge.transports.mqtt import MqttTransport

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 30.0  # Greengrass waits (timeout in the recipe) before SIGKILL


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `serve` to the `lfv-edge` sub-commands."""
    parser = commands.add_parser(
        "serve",
        help="serve inspections over MQTT (requests in, LFV-shaped verdicts out)",
        description="Subscribe to a requests topic, inspect each image with the model package "
        "and publish one reply per request. Settings from flags and/or --config FILE "
        "(flags win). See docs/mqtt.md.",
    )
    source = parser.add_argument_group("model and inputs")
    source.add_argument("--config", metavar="FILE", help="JSON configuration file")
    source.add_argument("--model", metavar="PACKAGE", help="model package zip or folder")
    source.add_argument("--device", choices=("auto", "cpu", "gpu"), help="default: auto")
    source.add_argument(
        "--threads", type=int, help="TVM worker threads (default: usable CPUs − 1, at least 1)"
    )
    source.add_argument("--threshold", type=float, help="override the manifest's threshold")
    source.add_argument(
        "--image-root",
        action="append",
        metavar="DIR",
        help="folder that ImagePath requests may read from (repeatable)",
    )
    source.add_argument("--max-payload-bytes", type=int, help="largest request (default 16 MiB)")
    source.add_argument("--no-mask", action="store_true", help="never include AnomalyMask")
    source.add_argument("--queue-size", type=int, help="requests waiting for the model (default 8)")
    source.add_argument(
        "--overflow",
        choices=[policy.value for policy in OverflowPolicy],
        help="a full queue answers Busy to the newest (reject, default) or the oldest request",
    )
    mqtt = parser.add_argument_group("MQTT")
    mqtt.add_argument("--broker", metavar="URL", help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    mqtt.add_argument("--requests-topic", metavar="TOPIC", help="subscribe here (wildcards ok)")
    mqtt.add_argument("--results-topic", metavar="TOPIC", help="replies go here")
    mqtt.add_argument("--status-topic", metavar="TOPIC", help="retained online/offline status")
    mqtt.add_argument("--stats-topic", metavar="TOPIC", help="periodic stats snapshots")
    mqtt.add_argument("--stats-interval", type=float, metavar="S", help="default 60; 0 = off")
    mqtt.add_argument(
        "--client-id", help="MQTT client id; stable across restarts (default: thing name or host)"
    )
    mqtt.add_argument("--qos", type=int, choices=(0, 1, 2), help="requests and replies (default 1)")
    mqtt.add_argument("--shared-group", metavar="NAME", help="subscribe as $share/NAME/<topic>")
    mqtt.add_argument("--keepalive", type=int, metavar="S", help="default 30")
    mqtt.add_argument(
        "--session-expiry", type=int, metavar="S", help="broker keeps requests this long (3600)"
    )
    mqtt.add_argument("--ca-file", metavar="PEM", help="CA bundle (default: the system's)")
    mqtt.add_argument("--cert-file", metavar="PEM", help="client certificate (mutual TLS)")
    mqtt.add_argument("--key-file", metavar="PEM", help="client private key (mutual TLS)")
    mqtt.add_argument("--username")
    mqtt.add_argument("--password-file", metavar="FILE", help="first line is the password")
    mqtt.add_argument("--spool-dir", metavar="DIR", help="keep unsent replies on disk here")
    mqtt.add_argument("--spool-max-bytes", type=int, help="spool bound (default 64 MiB)")
    mqtt.add_argument(
        "--receive-maximum",
        type=int,
        help="requests the broker may push before we answer them (MQTT 5 Receive Maximum, default 64)",
    )
    run = parser.add_argument_group("process")
    run.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT_S,
        metavar="S",
        help=f"on SIGTERM, time to finish and publish (default {DEFAULT_STOP_TIMEOUT_S:g})",
    )
    run.add_argument(
        "--log-level",
        dest="serve_log_level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="default INFO",
    )
    parser.set_defaults(handler=run_serve)


# Key paths that have a flag: an error about one names the flag too.
_FLAGS = {
    "model.path": "--model", "model.device": "--device", "model.threads": "--threads",
    "model.thresholdOverride": "--threshold", "imageRoots": "--image-root",
    "limits.maxPayloadBytes": "--max-payload-bytes", "queue.size": "--queue-size",
    "queue.overflow": "--overflow", "statsIntervalS": "--stats-interval",
    "logLevel": "--log-level", "mqtt.broker": "--broker", "mqtt.requestsTopic": "--requests-topic",
    "mqtt.resultsTopic": "--results-topic", "mqtt.statusTopic": "--status-topic",
    "mqtt.statsTopic": "--stats-topic", "mqtt.clientId": "--client-id", "mqtt.qos": "--qos",
    "mqtt.sharedGroup": "--shared-group", "mqtt.keepaliveS": "--keepalive",
    "mqtt.sessionExpiryS": "--session-expiry", "mqtt.caFile": "--ca-file",
    "mqtt.certFile": "--cert-file", "mqtt.keyFile": "--key-file", "mqtt.username": "--username",
    "mqtt.passwordFile": "--password-file", "mqtt.spoolDir": "--spool-dir",
    "mqtt.spoolMaxBytes": "--spool-max-bytes",
    "mqtt.receiveMaximum": "--receive-maximum",
}  # fmt: skip


def _path(value: str | None) -> str | None:
    return None if value is None else str(value)


def raw_from_flags(args: argparse.Namespace) -> dict[str, object]:
    """The configuration mapping the given flags stand for (flags not given are left out)."""
    raw: dict[str, object] = {}

    def put(section: str | None, key: str, value: object) -> None:
        if value is None:
            return
        target: dict[str, object] = raw
        if section is not None:
            nested = raw.setdefault(section, {})
            assert isinstance(nested, dict)  # noqa: S101 - only this function fills raw
            target = nested
        target[key] = value

    put("model", "path", _path(args.model))
    put("model", "device", args.device)
    put("model", "threads", args.threads)
    put("model", "thresholdOverride", args.threshold)
    put(None, "imageRoots", args.image_root)
    put("limits", "maxPayloadBytes", args.max_payload_bytes)
    put("results", "includeMask", False if args.no_mask else None)
    put("queue", "size", args.queue_size)
    put("queue", "overflow", args.overflow)
    put(None, "statsIntervalS", args.stats_interval)
    put(None, "logLevel", args.serve_log_level)
    for key, value in (
        ("broker", args.broker),
        ("requestsTopic", args.requests_topic),
        ("resultsTopic", args.results_topic),
        ("statusTopic", args.status_topic),
        ("statsTopic", args.stats_topic),
        ("clientId", args.client_id),
        ("qos", args.qos),
        ("sharedGroup", args.shared_group),
        ("keepaliveS", args.keepalive),
        ("sessionExpiryS", args.session_expiry),
        ("caFile", _path(args.ca_file)),
        ("certFile", _path(args.cert_file)),
        ("keyFile", _path(args.key_file)),
        ("username", args.username),
        ("passwordFile", _path(args.password_file)),
        ("spoolDir", _path(args.spool_dir)),
        ("spoolMaxBytes", args.spool_max_bytes),
        ("receiveMaximum", args.receive_maximum),
    ):
        put("mqtt", key, value)
    return raw


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServiceConfig:
    """The file's mapping with the flags merged over it, parsed and checked for `serve`.

    Raises:
        ConfigError: names the key path (or the missing flag).
    """
    base = read_config_mapping(Path(args.config)) if args.config else {}
    try:
        config = parse_config(merge_config(base, raw_from_flags(args)), environ)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        flag = _FLAGS.get(key)
        if flag is None:
            raise
        raise ConfigError(f"{exc} (flag {flag})") from exc
    if config.mqtt is None:
        missing = [
            flag
            for flag, value in (
                ("--broker", args.broker),
                ("--requests-topic", args.requests_topic),
                ("--results-topic", args.results_topic),
            )
            if value is None
        ]
        raise ConfigError(
            f"mqtt: required: give {', '.join(missing) or 'the mqtt flags'} "
            "(or an mqtt section in --config)"
        )
    if config.model is None:
        raise ConfigError("model.path: required: give --model (or model.path in --config)")
    return config


def run_serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal transport error (TransportError, exit 1)."""
    from lfv_edge.inspection.imaging import SizeLimits
    from lfv_edge.inspection.pipeline import Inspector, serving_threads
    from lfv_edge.model.package import read_model_package
    from lfv_edge.service.core import Service, ServiceSettings
    from lfv_edge.service.messages import environment_identity
    from lfv_edge.transports.mqtt import MqttTransport

    environ = os.environ
    if args.serve_log_level is None and args.log_level.upper() != "WARNING":
        args.serve_log_level = args.log_level.upper()  # `lfv-edge --log-level X serve`
    config = build_config(args, environ)
    logging.getLogger().setLevel(config.log_level)
    assert config.model is not None  # noqa: S101 - build_config checked
    assert config.mqtt is not None  # noqa: S101 - build_config checked
    package = read_model_package(config.model.path)
    threads = serving_threads(config.model.threads, environ)
    inspector = Inspector.load(
        package,
        device=config.model.device,
        threads=threads,
        colors=config.model.colors,
        threshold=config.model.threshold_override,
        limits=SizeLimits(
            min_side=config.limits.min_image_side,
            max_side=config.limits.max_image_side,
            max_encoded_bytes=config.limits.max_payload_bytes,
        ),
        probe=config.model.probe,
    )
    identity = environment_identity(environ)
    transport = MqttTransport.from_config(
        config.mqtt,
        status_fields={"Model": {"Name": package.name, "Version": package.version}, **identity},
        environ=environ,
    )
    service = Service(
        inspector,
        [transport],
        settings=ServiceSettings(
            image_roots=config.image_roots,
            max_payload_bytes=config.limits.max_payload_bytes,
            include_mask=config.results.include_mask,
            overflow=config.queue.overflow,
            extra_reply_fields=dict(identity),
        ),
        queue_size=config.queue.size,
        stats_interval_s=config.stats_interval_s,
    )
    agent = _agent_beside(config, transport, limits=inspector.limits, threads=threads)
    logger.info(
        "serve model=%s version=%s threads=%d queue=%d overflow=%s broker=%s requests=%s",
        package.name,
        package.version,
        threads,
        config.queue.size,
        config.queue.overflow.value,
        config.mqtt.broker,
        config.mqtt.requests_topic,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
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
        if agent is not None:
            agent.start()
        stop.wait()
        if agent is not None:
            agent.stop(grace_s=args.stop_timeout)
        drained = service.stop(args.stop_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.fatal_reason is not None:
        _exit_now(1, f"lfv-edge: {service.fatal_reason}")
    if not drained:
        _exit_now(
            1,
            f"lfv-edge serve: requests still in flight after --stop-timeout {args.stop_timeout:g} s",
        )
    _exit_now(0)


def _agent_beside(
    config: ServiceConfig, transport: MqttTransport, *, limits: SizeLimits, threads: int
) -> AgentServer | None:
    """The Edge Agent gRPC socket in this process, when the config has an `agent` section.

    With `agent.publishResults`, each gRPC verdict is also published on the results topic.
    """
    if config.agent is None:
        return None
    from lfv_edge.agent.registry import package_loader
    from lfv_edge.agent.server import AgentServer, verdict_publisher

    assert config.model is not None  # noqa: S101 - build_config checked
    assert config.mqtt is not None  # noqa: S101 - build_config checked
    on_verdict = (
        verdict_publisher(transport, config.mqtt.results_topic)
        if config.agent.publish_results
        else None
    )
    loader = package_loader(
        device=config.model.device,
        threads=threads,
        limits=limits,
        colors=config.model.colors,
        probe=config.model.probe,
    )
    return AgentServer.from_config(
        config.agent, loader=loader, limits=limits, on_verdict=on_verdict
    )


def _exit_now(code: int, message: str | None = None) -> NoReturn:
    """Exit without C++ static destructors, once everything is answered and closed.

    libdlr's TVM thread pools can still be winding down as the process exits, and that race
    aborts the process (SIGABRT, "terminate called without an active exception"; about 1 exit
    in 20 on a loaded 2-core machine, seen by the Greengrass command), which a supervisor
    would count as a crash after a clean drain.
    """
    if message is not None:
        print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
