"""The service's ports: how requests arrive and replies leave, and who watches the results.

`Transport`: subscribes to request topics and calls the service's handler for each message
on its own network thread; the handler only enqueues (house rule: a callback that blocks can
deadlock paho's loop or the IPC client). Replies go back through `publish` on the route the
message came with; `results_route()` is where results nobody asked for go (captured frames).
Adapters: `transports.mqtt.MqttTransport`, `transports.ipc.IpcTransport`,
`transports.memory.MemoryTransport`.

`InspectionObserver`: sees every finished reply (verdict or error) on the finish thread, e.g.
the web view's history and metrics or the capture sources' image keeping; it only enqueues.

Producers inside the process (capture sources) hand the service an already parsed request
(`IncomingMessage.request`) with extra top-level reply fields (`reply_fields`, e.g. `Capture`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from lfv_edge.inspection.pipeline import Inspection
    from lfv_edge.service.messages import ModelIdentity, Request


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
    request: Request | None = None  # already parsed (a producer in this process): no JSON
    reply_fields: Mapping[str, object] = field(default_factory=dict)  # extra top-level fields
    source: str = ""  # who produced it, for observers (a transport, or a capture source id)
    # May wait beyond the queue's count, bounded by bytes, instead of being answered Busy: its
    # sender keeps waiting for the answer (MQTT QoS ≥ 1, AWS IoT Core through Greengrass).
    can_wait: bool = False
    # Left unanswered (at a stop that runs out of time), the broker delivers it again later
    # (MQTT QoS ≥ 1 in a persistent session, not yet acknowledged).
    redelivered_if_unanswered: bool = False


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

    def results_route(self) -> ReplyRoute | None:
        """Where results that answer no request go (captured frames); None if nowhere."""
        ...

    @property
    def connected(self) -> bool:
        """True while requests can arrive and replies leave (readiness: /readyz)."""
        ...


@dataclass(frozen=True, slots=True)
class InspectionRecord:
    """One finished reply, as observers see it."""

    request_id: str | None
    payload: bytes  # the reply exactly as published (JSON)
    model: ModelIdentity
    source: str  # IncomingMessage.source, else the transport's name
    received_at: float  # time.perf_counter() when the request arrived
    finished_at: float  # time.time() when the reply was published (or failed to be)
    published: bool  # False: the transport refused it (counted as a publish failure)
    inspection: Inspection | None = None  # None for an error reply
    error_code: str | None = None
    pixels: NDArray[np.uint8] | None = None  # the decoded image, for observers that want it
    channel_order: str = "rgb"  # of `pixels`: "rgb" or "bgr"
    reply_fields: Mapping[str, object] = field(default_factory=dict)


class InspectionObserver(Protocol):
    """Sees every reply the service publishes; runs on the finish thread, so must not block."""

    wants_pixels: bool  # keep the decoded image of each request for `observe` (costs memory)

    def observe(self, record: InspectionRecord) -> None:
        """Take note of one reply (enqueue; never raise, never block)."""
        ...
