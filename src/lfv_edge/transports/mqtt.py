"""`MqttTransport`: requests and replies over an MQTT 5 broker (mosquitto, AWS IoT Core). The only paho user.

Delivery, in short (docs/mqtt.md is the user-facing version):

* Requests are subscribed with QoS `qos` (default 1) in a persistent session: clean start off
  and a Session Expiry Interval, so the broker keeps requests published while we are away.
  The subscription is made in `on_connect`, so every reconnect resubscribes.
* Manual acknowledgement: a request is acknowledged (PUBACK) only once the service has
  finished it *and* its reply is safe, i.e. acknowledged by the broker or durably spooled.
  A crash before that means the broker redelivers it and it is processed again: at-least-once,
  and a duplicate reply carries the same RequestId. A redelivery (after a reconnect) of a
  request still in our pipeline is recognised by its packet id and not processed twice.
* Replies go to the results topic, or to the request's MQTT 5 Response Topic with its
  Correlation Data. While the broker is unreachable they go to the spool (transports/spool.py)
  and are published after the reconnect, a window at a time; each is removed on its PUBACK.
* Availability: a retained JSON status (`online` once subscribed, `offline` on a clean
  close) and a retained last will `offline` for a crash or a lost connection.

Threads: paho's network thread runs the callbacks; they enqueue (the service's handler) and
update bookkeeping, nothing slow. Lock order: paho's internal locks, then `self._lock`; paho
is never called while `self._lock` is held (paho calls `on_publish` holding its own lock).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lfv_edge.errors import ConfigError, TransportError
from lfv_edge.service.config import MqttConfig
from lfv_edge.service.messages import utc_timestamp
from lfv_edge.service.ports import (
    FatalHandler,
    IncomingMessage,
    MessageHandler,
    ReplyRoute,
)
from lfv_edge.service.schema import topic_problem
from lfv_edge.service.stats import RateLimitedLog
from lfv_edge.transports.spool import DiskSpool, MemorySpool, Spool

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(f"{__name__}.paho")  # paho's own lines, a level of their own
_PAHO_LEVELS: dict[int, int] = {
    paho.MQTT_LOG_DEBUG: logging.DEBUG,
    paho.MQTT_LOG_INFO: logging.INFO,
    paho.MQTT_LOG_NOTICE: logging.INFO,
    paho.MQTT_LOG_WARNING: logging.WARNING,
    paho.MQTT_LOG_ERR: logging.ERROR,
}

# CONNACK reason codes that no retry can fix: bad protocol version, client id refused,
# bad user name or password, not authorised, banned, bad authentication method, bad will
# topic, payload format, retain or QoS not supported.
_PERMANENT_CONNACK = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x90, 0x99, 0x9A, 0x9B})
_SESSION_TAKEN_OVER = 0x8E
_DRAIN_WINDOW = 16  # spooled replies handed to paho at a time (paho keeps 20 in flight)
_PROPERTY_OVERHEAD = 512  # bytes of a reply packet besides payload and topic (properties, header)
_RECONNECT_MAX_DELAY_S = 30
# An unknown PUBACK is kept this long for the publish() about to register it; older ones are
# QoS 0 messages lost with a connection and must not match a reused packet id later.
_EARLY_TTL_S = 10.0


@dataclass(eq=False, slots=True)
class _Request:
    """A received QoS > 0 request, waiting for its acknowledgement."""

    mid: int
    qos: int
    session: int  # the connection generation in which its packet id is valid
    done: bool = False  # the service called ack(): its reply was published
    reply_safe: bool = False  # the reply was acknowledged by the broker or durably spooled


@dataclass(frozen=True, slots=True)
class _MqttRoute(ReplyRoute):
    """A reply route that remembers the request, so its PUBACK can wait for the reply."""

    request: _Request | None = field(default=None, compare=False)


@dataclass(eq=False, slots=True)
class _Outgoing:
    """One message handed (or about to be handed) to paho."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    correlation_data: bytes | None = None
    request: _Request | None = None
    spool_seq: int | None = None
    done: threading.Event | None = None  # set when the broker acknowledged it (status)


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho-mqtt 2.x wraps the broker connection and runs the TLS handshake itself inside
    `connect()`; when the handshake raises (an untrusted certificate, say) it keeps no
    reference and does not close the socket, so the descriptor lingers until collected.
    `SSLContext.sslsocket_class` is the standard library's documented way to have the context
    make this class instead of `ssl.SSLSocket`.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not a failure: a non-blocking handshake goes on later
        except BaseException:
            self.close()
            raise


def default_client_id(environ: Mapping[str, str] = os.environ) -> str:
    """The Greengrass/IoT thing name when set (IoT Core policies often require it), else per host."""
    return environ.get("AWS_IOT_THING_NAME") or f"lfv-edge-{socket.gethostname()}"


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Certificate verification on (system CAs unless `caFile`), client certificate for mutual TLS.

    Raises:
        ConfigError: a CA, certificate or key file cannot be loaded.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file) if config.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.caFile: cannot load {config.ca_file}: {exc}") from exc
    if config.cert_file is not None and config.key_file is not None:
        try:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"mqtt.certFile: cannot load {config.cert_file} with {config.key_file}: {exc}"
            ) from exc
    if config.port == 443:
        # AWS IoT Core serves MQTT with X.509 on 443 only to clients that ask for this ALPN.
        context.set_alpn_protocols(["x-amzn-mqtt-ca"])
    context.sslsocket_class = _ClosingSSLSocket
    return context


def read_password(config: MqttConfig) -> str | None:
    """The password from `passwordFile` (first line; never logged).

    Raises:
        ConfigError: the file cannot be read.
    """
    if config.password_file is None:
        return None
    try:
        text = config.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"mqtt.passwordFile: cannot read {config.password_file}: {exc.strerror or exc}"
        ) from exc
    return text.splitlines()[0] if text else ""


class MqttTransport:
    """Requests from an MQTT topic, replies to the results (or response) topic."""

    def __init__(
        self,
        client: paho.Client,
        config: MqttConfig,
        *,
        spool: Spool | None = None,
        status_fields: Mapping[str, object] | None = None,
        name: str = "mqtt",
        client_id: str | None = None,  # the id `client` was made with (for status and logs)
    ) -> None:
        self.name = name
        self.config = config
        self.spool: Spool = spool if spool is not None else MemorySpool(config.spool_max_bytes)
        self._client = client
        self._status_fields = dict(status_fields or {})
        self._client_id = client_id or config.client_id or default_client_id()
        self._subscription = (
            f"$share/{config.shared_group}/{config.requests_topic}"
            if config.shared_group
            else config.requests_topic
        )
        self._handler: MessageHandler | None = None
        self._on_fatal: FatalHandler | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ready = threading.Event()
        self._started = False
        self._closing = False
        self._receiving = False
        self._connected = False
        self._session = 0  # connection generation; a packet id is valid within its session
        self._requests: dict[int, _Request] = {}  # unacknowledged requests by packet id
        self._resume_acked: set[int] = set()  # acknowledged right after a session resumed
        self._inflight: dict[int, _Outgoing] = {}  # paho mid → message awaiting its PUBACK
        self._early: dict[int, float] = {}  # mid → when its PUBACK beat publish()'s return
        self._spooled: dict[int, _Outgoing] = {}  # spool seq → this process's reply
        self._drain_cursor = 0  # spool entries up to this seq were handed to paho
        self._draining = 0  # spooled entries handed and not yet acknowledged
        self._max_reply_bytes: int | None = None
        self._subscribe_mid: int | None = None
        self._topics: dict[str, Callable[[bytes], None]] = {}  # subscribe_topic's (triggers)
        self._fatal_reason: str | None = None
        self._disconnect_log = RateLimitedLog(30.0)
        self._drop_log = RateLimitedLog(10.0)
        self._ignored_log = RateLimitedLog(10.0)
        self.dropped_replies = 0
        client.on_connect = self._on_connect
        client.on_socket_open = _no_delay
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        if config.status_topic is not None:
            client.will_set(
                config.status_topic,
                self._status_payload("offline", reason="connection lost", timestamp=False),
                qos=1,
                retain=True,
            )

    @classmethod
    def from_config(
        cls,
        config: MqttConfig,
        *,
        status_fields: Mapping[str, object] | None = None,
        environ: Mapping[str, str] = os.environ,
        name: str = "mqtt",
    ) -> MqttTransport:
        """Build the paho client (TLS, credentials, reconnect backoff) and the spool.

        Raises:
            ConfigError: unreadable TLS or password files.
            TransportError: the spool folder cannot be used.
        """
        client_id = config.client_id or default_client_id(environ)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=_RECONNECT_MAX_DELAY_S)
        if config.tls:
            client.tls_set_context(tls_context(config))
        if config.username is not None or config.password_file is not None:
            client.username_pw_set(config.username or "", read_password(config))
        spool: Spool = (
            DiskSpool.open(config.spool_dir, config.spool_max_bytes)
            if config.spool_dir is not None
            else MemorySpool(config.spool_max_bytes)
        )
        return cls(
            client,
            config,
            spool=spool,
            status_fields=status_fields,
            name=name,
            client_id=client_id,
        )

    # --- the Transport port ----------------------------------------------------------

    def start(self, handler: MessageHandler, on_fatal: FatalHandler) -> None:
        """Connect (first attempt synchronous), then let paho's thread keep the connection.

        A broker that cannot be reached is retried in the background with backoff (requests
        wait in the broker, replies in the spool). A TLS certificate the broker or we refuse
        is a configuration problem, not an outage.

        Raises:
            TransportError: TLS verification failed.
        """
        self._handler, self._on_fatal = handler, on_fatal
        with self._lock:
            self._receiving = True
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.receive_maximum
        cfg = self.config
        try:
            self._client.connect(
                cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
            )
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"TLS with {cfg.broker}: the broker's certificate is not trusted: "
                f"{exc.verify_message or exc}"
            ) from exc
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError) as exc:
            self._retry_in_background(exc, properties)
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {cfg.broker} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            self._retry_in_background(exc, properties)
        self._started = True
        self._client.loop_start()

    def _retry_in_background(self, exc: OSError, properties: Properties) -> None:
        cfg = self.config
        logger.warning(
            "mqtt broker=%s unreachable (%s); retrying in the background", cfg.broker, exc
        )
        self._client.connect_async(
            cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
        )

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until connected and subscribed (True), or `timeout_s` passed (False)."""
        return self._ready.wait(timeout_s)

    def wait_disconnected(self, timeout_s: float) -> bool:
        """Block until the connection is down (True), or `timeout_s` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._connected, timeout=timeout_s)

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is up."""
        with self._lock:
            return self._connected

    def publish(self, route: ReplyRoute, payload: bytes) -> None:
        """Hand a reply to the broker, or spool it while the broker is unreachable.

        Raises:
            TransportError: the reply can neither be sent nor kept (too large for the spool,
                the spool cannot be written, an invalid topic).
        """
        request = route.request if isinstance(route, _MqttRoute) else None
        out = _Outgoing(
            route.topic,
            payload,
            self.config.qos,
            correlation_data=route.correlation_data,
            request=request,
        )
        with self._lock:
            direct = self._connected and not self.spool.after(self._drain_cursor, 1)
        if direct and self._hand(out):
            return
        try:
            self._spool_reply(out)
        except TransportError:
            if request is not None:
                self._forget(request)  # unacknowledged: a redelivery must be processed anew
            raise
        self._drain()

    def results_route(self) -> ReplyRoute:
        """The results topic, within the broker's packet size limit (as replies are)."""
        with self._lock:
            max_bytes = self._max_reply_bytes
        return ReplyRoute(self.config.results_topic, self.name, "results-topic", None, max_bytes)

    def publish_stats(self, payload: bytes) -> None:
        """Publish a stats snapshot (QoS 0, not kept while disconnected)."""
        if self.config.stats_topic is None or not self.connected:
            return
        self._hand(_Outgoing(self.config.stats_topic, payload, 0))

    def stop_receiving(self) -> None:
        """Hand no more requests to the service.

        Requests that still arrive are left unacknowledged, so the broker redelivers them to
        the next session. The subscription itself stays (the persistent session keeps
        collecting requests while we are down), except in a shared group, where leaving lets
        the other members take the whole stream.
        """
        with self._lock:
            self._receiving = False
            leave = self.config.shared_group is not None and self._connected
        if leave:
            self._client.unsubscribe(self._subscription)

    def close(self, timeout_s: float) -> None:
        """Wait for outstanding PUBACKs (up to `timeout_s`), publish `offline`, disconnect."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    not self._connected
                    or (
                        not any(out.qos > 0 for out in self._inflight.values())
                        and not self.spool.after(self._drain_cursor, 1)
                    )
                ),
                timeout=max(deadline - time.monotonic(), 0.0),
            )
            connected = self._connected
            unacked = len(self._inflight)
        if connected and self.config.status_topic is not None:
            done = threading.Event()
            self._hand(
                _Outgoing(
                    self.config.status_topic,
                    self._status_payload("offline", reason="stopped"),
                    1,
                    retain=True,
                    done=done,
                )
            )
            done.wait(max(deadline - time.monotonic(), 1.0))
        with self._lock:
            self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        left = len(self.spool)
        if unacked or left:
            kept = "kept in the spool" if self.spool.durable else "lost (no spoolDir)"
            logger.warning(
                "mqtt closed with %d replies unacknowledged and %d spooled replies %s",
                unacked,
                left,
                kept,
            )
        else:
            logger.info("mqtt closed cleanly")

    # --- outgoing ------------------------------------------------------------------------

    def _properties(self, out: _Outgoing) -> Properties:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.PayloadFormatIndicator = 1
        properties.ContentType = "application/json"
        if out.correlation_data is not None:
            properties.CorrelationData = out.correlation_data
        return properties

    def _hand(self, out: _Outgoing) -> bool:
        """Give one message to paho; False when paho did not take it (then it is not sent)."""
        try:
            info = self._client.publish(
                out.topic, out.payload, out.qos, out.retain, self._properties(out)
            )
        except ValueError as exc:  # an invalid topic or an oversized payload
            raise TransportError(f"cannot publish to {out.topic!r}: {exc}") from exc
        # With QoS > 0 paho keeps the message even when the connection just dropped (NO_CONN)
        # and sends it after the reconnect; a QoS 0 message not written is gone.
        taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            out.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        )
        if not taken:
            return False
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None and time.monotonic() - early < _EARLY_TTL_S:
                acks = self._delivered_locked(out)
            else:
                self._inflight[info.mid] = out
                acks = []
        self._send_acks(acks)
        return True

    def _spool_reply(self, out: _Outgoing) -> None:
        appended = self.spool.append(out.topic, out.payload, out.qos, out.correlation_data)
        out.spool_seq = appended.reply.seq
        acks: list[_Request] = []
        with self._lock:
            self._spooled[appended.reply.seq] = out
            for seq in appended.dropped:
                dropped = self._spooled.pop(seq, None)
                self.dropped_replies += 1
                if dropped is not None and dropped.request is not None:
                    self._forget_locked(dropped.request)
            if self.spool.durable and out.request is not None:
                out.request.reply_safe = True
                acks = self._ready_acks_locked(out.request)
        if appended.dropped:
            suppressed = self._drop_log.ready()
            if suppressed is not None:
                logger.warning(
                    "spool full (%d bytes): dropped %d oldest replies (%d total)",
                    self.spool.size_bytes,
                    len(appended.dropped) + suppressed,
                    self.spool.dropped_total,
                )
        self._send_acks(acks)

    def _drain(self) -> None:
        """Hand spooled replies to paho, a window at a time, oldest first."""
        while True:
            with self._lock:
                if not self._connected or self._draining >= _DRAIN_WINDOW:
                    return
                following = self.spool.after(self._drain_cursor, 1)
                if not following:
                    return
                seq = following[0]
                self._drain_cursor = seq
                self._draining += 1
                out = self._spooled.get(seq)
            if out is None:  # spooled by an earlier run of the process
                reply = self.spool.read(seq)
                if reply is None:
                    with self._lock:
                        self._draining -= 1
                    continue
                out = _Outgoing(
                    reply.topic,
                    reply.payload,
                    reply.qos,
                    correlation_data=reply.correlation_data,
                    spool_seq=seq,
                )
            try:
                taken = self._hand(out)
            except TransportError as exc:
                logger.warning("spooled reply %d cannot be published and is dropped: %s", seq, exc)
                taken = False
                self.spool.remove(seq)
            if not taken:
                with self._lock:
                    self._draining -= 1
                    self._drain_cursor = min(self._drain_cursor, seq - 1)  # retry it next time
                return

    def _delivered_locked(self, out: _Outgoing) -> list[_Request]:
        """The broker acknowledged `out` (or, for QoS 0, paho wrote it)."""
        if out.spool_seq is not None:
            self._spooled.pop(out.spool_seq, None)
            self.spool.remove(out.spool_seq)
            self._draining = max(self._draining - 1, 0)
        if out.done is not None:
            out.done.set()
        self._changed.notify_all()
        if out.request is None:
            return []
        out.request.reply_safe = True
        return self._ready_acks_locked(out.request)

    # --- request acknowledgements --------------------------------------------------------

    def _ready_acks_locked(self, request: _Request) -> list[_Request]:
        if (
            request.done
            and request.reply_safe
            and self._connected
            and request.session == self._session
            and self._requests.get(request.mid) is request
        ):
            del self._requests[request.mid]
            return [request]
        return []

    def _send_acks(self, requests: list[_Request]) -> None:
        for request in requests:
            self._client.ack(request.mid, request.qos)

    def _service_done(self, request: _Request) -> None:
        """The service published the reply (IncomingMessage.ack)."""
        with self._lock:
            request.done = True
            acks = self._ready_acks_locked(request)
        self._send_acks(acks)

    def _forget_locked(self, request: _Request) -> None:
        if self._requests.get(request.mid) is request:
            del self._requests[request.mid]
        request.session = -1

    def _forget(self, request: _Request) -> None:
        with self._lock:
            self._forget_locked(request)

    # --- paho callbacks (network thread) ---------------------------------------------

    def _fatal(self, reason: str) -> None:
        with self._lock:
            if self._fatal_reason is not None or self._closing:
                return
            self._fatal_reason = reason
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            if reason_code.value in _PERMANENT_CONNACK:
                self._fatal(
                    f"the broker {self.config.broker} refused the connection: {reason_code}"
                )
            else:
                logger.warning(
                    "mqtt broker=%s refused the connection: %s; retrying",
                    self.config.broker,
                    reason_code,
                )
            return
        maximum = getattr(properties, "MaximumPacketSize", None)
        with self._lock:
            self._session += 1
            self._connected = True
            acks: list[_Request] = []
            if flags.session_present:
                for request in self._requests.values():
                    request.session = self._session
                acks = [r for r in self._requests.values() if r.done and r.reply_safe]
                for request in acks:
                    del self._requests[request.mid]
                self._resume_acked = {r.mid for r in acks}
            else:  # the broker forgot the session: its packet ids mean nothing any more
                for request in self._requests.values():
                    request.session = -1
                self._requests.clear()
                self._resume_acked = set()
            if isinstance(maximum, int) and maximum > 0:
                self._max_reply_bytes = max(
                    maximum - _PROPERTY_OVERHEAD - len(self.config.results_topic.encode()), 1024
                )
        self._send_acks(acks)
        with self._lock:
            left_group = not self._receiving and self.config.shared_group is not None
        if left_group:  # stopping: don't rejoin the group only to leave requests unanswered
            self._drain()
            return
        options = SubscribeOptions(
            qos=self.config.qos,
            # Never receive our own replies as requests when the filter would match them;
            # MQTT 5 forbids No Local on shared subscriptions.
            noLocal=self.config.shared_group is None,
        )
        _, self._subscribe_mid = client.subscribe(self._subscription, options=options)
        self._subscribe_topics()
        logger.info(
            "mqtt connected broker=%s client_id=%s session_present=%s acked_on_resume=%d "
            "in_progress=%d spooled=%d",
            self.config.broker,
            self._client_id,
            flags.session_present,
            len(acks),
            len(self._requests),
            len(self.spool),
        )
        self._drain()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            self._fatal(
                f"the broker refused the subscription to {self._subscription}: {refused[0]}"
            )
            return
        if self.config.status_topic is not None:
            self._hand(
                _Outgoing(self.config.status_topic, self._status_payload("online"), 1, retain=True)
            )
        logger.info("mqtt subscribed topic=%s qos=%d", self._subscription, self.config.qos)
        self._ready.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
            closing = self._closing
            # QoS 0 messages not yet written died with the connection (paho drops them).
            for mid in [mid for mid, out in self._inflight.items() if out.qos == 0]:
                lost = self._inflight.pop(mid)
                if lost.request is not None:
                    self._forget_locked(lost.request)
            self._changed.notify_all()
        self._ready.clear()
        if closing:
            return
        if reason_code.value == _SESSION_TAKEN_OVER:
            self._fatal(
                f"another client connected with client id {self._client_id!r} and took over "
                "the session (give every instance its own --client-id)"
            )
            return
        suppressed = self._disconnect_log.ready()
        if suppressed is not None:
            logger.warning(
                "mqtt disconnected broker=%s reason=%s; reconnecting (%d more since last report)",
                self.config.broker,
                reason_code,
                suppressed,
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            out = self._inflight.pop(mid, None)
            if out is None:  # publish() has not returned yet: it will see this
                now = time.monotonic()
                self._early = {m: t for m, t in self._early.items() if now - t < _EARLY_TTL_S}
                self._early[mid] = now
                return
            acks = self._delivered_locked(out)
            spooled = out.spool_seq is not None
        if reason_code.is_failure:
            suppressed = self._drop_log.ready()
            if suppressed is not None:
                logger.warning("broker refused a reply on %s: %s", out.topic, reason_code)
        self._send_acks(acks)
        if spooled:
            self._drain()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        with self._lock:
            if not self._receiving or self._handler is None:
                suppressed = self._ignored_log.ready()
                if suppressed is not None:
                    logger.info("request left for redelivery: not receiving (stopping)")
                return
            request: _Request | None = None
            if message.qos > 0:
                if message.mid in self._requests:  # redelivered after a reconnect; in our pipeline
                    return
                if message.dup and message.mid in self._resume_acked:
                    self._resume_acked.discard(message.mid)
                    return
                request = _Request(message.mid, message.qos, self._session)
                self._requests[message.mid] = request
            max_bytes = self._max_reply_bytes
            handler = self._handler
        if (
            isinstance(response_topic, str)
            and topic_problem(response_topic, subscribe=False) is None
        ):
            topic, channel = response_topic, "response-topic"
        else:
            if response_topic is not None:
                logger.debug("ignoring an invalid response topic %r", response_topic)
            topic, channel = self.config.results_topic, "results-topic"
        route = _MqttRoute(
            topic,
            self.name,
            channel,
            bytes(correlation) if correlation is not None else None,
            max_bytes,
            request=request,
        )
        ack: Callable[[], None] | None = None
        if request is not None:
            pending = request

            def ack() -> None:
                self._service_done(pending)

        payload = message.payload
        # QoS ≥ 1: its sender waits for the reply, so it may wait here too (late, not never).
        # QoS 1 stays unacknowledged until answered, so the broker delivers it again should we
        # not answer it; paho has acknowledged QoS 2 (PUBREC) before we see it.
        handler(
            IncomingMessage(
                payload if isinstance(payload, bytes) else bytes(payload),
                route,
                ack=ack,
                can_wait=request is not None,
                redelivered_if_unanswered=message.qos == 1,
            )
        )

    def _on_log(self, client: paho.Client, userdata: object, level: int, text: str) -> None:
        severity = _PAHO_LEVELS.get(level, logging.DEBUG)
        if text.startswith("Client is not connected"):
            # paho 2.2 logs this at ERROR on every loop turn without a socket: after our own
            # DISCONNECT and between reconnect attempts. The outage is reported (rate-limited)
            # by _on_disconnect; this line is noise.
            severity = logging.DEBUG
        if _paho_logger.isEnabledFor(severity):
            _paho_logger.log(severity, "%s", text)

    # --- other topics (capture triggers) ---------------------------------------------------

    def subscribe_topic(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Also hand each message on `topic` to `handler` (paho's thread: it must only enqueue).

        QoS 0: a message sent while we are disconnected is not replayed after the reconnect (a
        trigger for a part that has moved on is worth nothing). Subscribed now when connected,
        and again on every reconnect, like the requests topic.
        """

        def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
            payload = message.payload
            handler(payload if isinstance(payload, bytes) else bytes(payload))
            if message.qos > 0:  # the broker may not downgrade; acks are manual for every topic
                client.ack(message.mid, message.qos)

        with self._lock:
            self._topics[topic] = handler
            connected = self._connected
        self._client.message_callback_add(topic, on_message)
        if connected:
            self._client.subscribe(topic, options=SubscribeOptions(qos=0, noLocal=True))
        logger.info("mqtt also subscribed topic=%s (qos 0)", topic)

    def unsubscribe_topic(self, topic: str) -> None:
        """Stop handing `topic`'s messages to its handler."""
        with self._lock:
            known = self._topics.pop(topic, None) is not None
            connected = self._connected
        if not known:
            return
        # Not removed: a message already on its way would fall through to the request handler.
        self._client.message_callback_add(topic, _drop_message)
        if connected:
            self._client.unsubscribe(topic)

    def _subscribe_topics(self) -> None:
        """(Re)subscribe `subscribe_topic`'s topics (paho's thread, on connect)."""
        with self._lock:
            topics = list(self._topics)
        for topic in topics:
            self._client.subscribe(topic, options=SubscribeOptions(qos=0, noLocal=True))

    # --- status ------------------------------------------------------------------------

    def _status_payload(
        self, status: str, *, reason: str | None = None, timestamp: bool = True
    ) -> bytes:
        body: dict[str, object] = {"Status": status, "ClientId": self._client_id}
        if timestamp:
            body["Timestamp"] = utc_timestamp()
        if reason is not None:
            body["Reason"] = reason
        body.update(self._status_fields)
        return json.dumps(body, separators=(",", ":")).encode()


def _drop_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
    """A topic unsubscribed with `unsubscribe_topic`: late messages on it are dropped."""
    if message.qos > 0:
        client.ack(message.mid, message.qos)


def _no_delay(client: paho.Client, userdata: object, sock: object) -> None:
    """Turn Nagle's algorithm off: with it, each request/reply round trip waits ~40 ms for
    delayed ACKs (measured: ~40 ms → ~2 ms per sequential round trip on loopback)."""
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # not TCP (a Unix socket proxy): nothing to tune
            logger.debug("TCP_NODELAY not set: %s", exc)
