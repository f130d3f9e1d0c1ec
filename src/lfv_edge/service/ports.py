"""The transport port: how requests arrive and replies leave (MQTT, Greengrass IPC, memory).

A transport subscribes to request topics and calls the service's handler for each message
on its own network thread; the handler only enqueues (house rule: a callback that blocks can
deadlock paho's loop or the IPC client). Replies go back through `publish` on the route the
message came with. Adapters: `mqtt.MqttTransport`, `ipc.IpcTransport`, `memory.MemoryTransport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where the reply to one message goes."""

    topic: str
    transport: str  # name of the transport that publishes the reply
    channel: str = ""  # e.g. "local" or "iot-core" within a transport: for logs
    correlation_data: bytes | None = None  # MQTT 5 correlation data, echoed back
    max_bytes: int | None = None  # e.g. AWS IoT Core's 128 KB message limit


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One received request payload and where to answer it."""

    payload: bytes
    reply: ReplyRoute
    received_at: float = field(default_factory=time.perf_counter)
    # Called once the reply is published (or safely spooled), never before: a transport with
    # manual acknowledgement acks the request here, so a crash before it means redelivery.
    ack: Callable[[], None] | None = None


MessageHandler = Callable[[IncomingMessage], None]
FatalHandler = Callable[[str], None]  # the transport cannot go on (e.g. the nucleus went away)


class Transport(Protocol):
    """A source of requests and a sink of replies."""

    name: str

    def start(self, handler: MessageHandler, on_fatal: FatalHandler) -> None:
        """Connect and subscribe; `handler` runs on a transport thread and must not block."""
        ...

    def publish(self, route: ReplyRoute, payload: bytes) -> None:
        """Send a reply. Raises TransportError when it cannot be sent or kept for later."""
        ...

    def publish_stats(self, payload: bytes) -> None:
        """Send a stats snapshot (no-op without a stats topic)."""
        ...

    def stop_receiving(self) -> None:
        """Unsubscribe: after it returns, no new message reaches the handler."""
        ...

    def close(self, timeout_s: float) -> None:
        """Deliver what is pending (within `timeout_s`), mark offline and disconnect."""
        ...
