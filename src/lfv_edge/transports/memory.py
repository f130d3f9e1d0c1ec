"""`MemoryTransport`: an in-process transport for tests and embedding, shipped with the port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from lfv_edge.errors import TransportError
from lfv_edge.service.ports import FatalHandler, IncomingMessage, MessageHandler, ReplyRoute


@dataclass(frozen=True, slots=True)
class Published:
    """One message the service published."""

    topic: str
    payload: bytes
    correlation_data: bytes | None


class MemoryTransport:
    """Delivers payloads you hand it and records what the service publishes."""

    name = "memory"

    def __init__(
        self, *, results_topic: str = "results", stats_topic: str | None = "stats"
    ) -> None:
        self.results_topic = results_topic
        self.stats_topic = stats_topic
        self.published: list[Published] = []
        self.fail_publishes = False  # make publish raise, to test failure handling
        self._handler: MessageHandler | None = None
        self._on_fatal: FatalHandler | None = None
        self._receiving = False
        self._changed = threading.Condition()
        self._topics: dict[str, Callable[[bytes], None]] = {}
        self.closed = False
        self.up = True  # set False to play a broker outage (readiness tests)

    def start(self, handler: MessageHandler, on_fatal: FatalHandler) -> None:
        self._handler, self._on_fatal = handler, on_fatal
        self._receiving = True

    def deliver(
        self,
        payload: bytes,
        *,
        correlation_data: bytes | None = None,
        max_bytes: int | None = None,
        can_wait: bool = False,
        redelivered_if_unanswered: bool = False,
    ) -> bool:
        """Hand a request to the service as a transport thread would; False once unsubscribed."""
        if not self._receiving or self._handler is None:
            return False
        route = ReplyRoute(self.results_topic, self.name, self.name, correlation_data, max_bytes)
        self._handler(
            IncomingMessage(
                payload,
                route,
                can_wait=can_wait,
                redelivered_if_unanswered=redelivered_if_unanswered,
            )
        )
        return True

    def subscribe_topic(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Also hand payloads sent to `topic` (with `send`) to `handler` (capture triggers)."""
        self._topics[topic] = handler

    def unsubscribe_topic(self, topic: str) -> None:
        """Stop handing `topic`'s payloads to its handler."""
        self._topics.pop(topic, None)

    def send(self, topic: str, payload: bytes) -> bool:
        """Hand a payload to the handler subscribed to `topic`; False when there is none."""
        handler = self._topics.get(topic)
        if handler is None:
            return False
        handler(payload)
        return True

    def fail(self, reason: str) -> None:
        """Simulate a fatal transport failure."""
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def publish(self, route: ReplyRoute, payload: bytes) -> None:
        if self.fail_publishes:
            raise TransportError("memory transport told to fail")
        with self._changed:
            self.published.append(Published(route.topic, payload, route.correlation_data))
            self._changed.notify_all()

    def results_route(self) -> ReplyRoute:
        return ReplyRoute(self.results_topic, self.name, self.name)

    @property
    def connected(self) -> bool:
        """Started, not closed, and `up`."""
        return self._handler is not None and self.up and not self.closed

    def publish_stats(self, payload: bytes) -> None:
        if self.stats_topic is not None:
            self.publish(ReplyRoute(self.stats_topic, self.name), payload)

    def stop_receiving(self) -> None:
        self._receiving = False

    def close(self, timeout_s: float) -> None:
        self.closed = True

    def wait_for(
        self, count: int, *, topic: str | None = None, timeout_s: float = 10.0
    ) -> list[Published]:
        """Block until `count` messages were published (on `topic`, if given); return them."""

        def matching() -> list[Published]:
            return [p for p in self.published if topic is None or p.topic == topic]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout=timeout_s):
                raise TimeoutError(
                    f"{len(matching())} of {count} messages published within {timeout_s} s"
                )
            return matching()
