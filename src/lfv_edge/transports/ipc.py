"""Greengrass IPC: requests in and replies out through the nucleus, and the component configuration.

Owns the one connection to the nucleus (`IpcConnection`), the request/reply transport over it
(`IpcTransport`) and the component configuration (`IpcComponentConfig`: read, validate, watch).
The only module that imports `awsiot`; no certificates or broker settings live in our process.

    local pub/sub  ── SubscribeToTopic(localRequestsTopic) ──▶ ┐
    AWS IoT Core   ── SubscribeToIoTCore(iotCoreRequestsTopic) ─▶ ├─ handler (enqueue only)
    reply: PublishToTopic(localResultsTopic, binary) or PublishToIoTCore(iotCoreResultsTopic, QoS 1)

Rules taken from the SDK and nucleus (docs/greengrass.md):

- One `GreengrassCoreIPCClientV2` with a single-worker executor: stream events run there, one at
  a time and in arrival order (the default pool reorders them). Callbacks only enqueue.
- Every call is `*_async(...).result(timeout=...)`: the SDK's synchronous calls wait forever
  when the nucleus does not answer.
- There is no reconnect: a lost connection (`on_disconnect`, `ConnectionClosedError`) means the
  nucleus went away or restarts, so it is fatal and the nucleus restarts us.
- IoT Core replies stay within the nucleus's default 128 KB message limit (`ReplyRoute.max_bytes`:
  the service drops the mask and says so); local pub/sub has no such limit.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from awscrt.exceptions import AwsCrtError
from awsiot.eventstreamrpc import (
    ConnectionClosedError,
    EventStreamError,
    EventStreamOperationError,
    LifecycleHandler,
    StreamClosedError,
)
from awsiot.greengrasscoreipc import connect
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    ConfigurationValidityReport,
    ConfigurationValidityStatus,
    PublishMessage,
    ReceiveMode,
    UnauthorizedError,
)

from lfv_edge.errors import ConfigError, TransportError
from lfv_edge.service.config import IpcConfig, ServiceConfig, parse_config
from lfv_edge.service.ports import FatalHandler, IncomingMessage, MessageHandler, ReplyRoute

logger = logging.getLogger(__name__)

TRANSPORT_NAME = "ipc"
LOCAL = "local"
IOT_CORE = "iot-core"
# The nucleus refuses PublishToIoTCore payloads above mqtt.maxMessageSizeInBytes, 131072 by
# default: AWS IoT Core's 128 KB message limit.
IOT_CORE_MAX_PAYLOAD_BYTES = 128 * 1024
SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"  # noqa: S105 - the variable's name, not a token
ACCESS_CONTROL = "accessControl"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Lifecycle(LifecycleHandler):  # type: ignore[misc]  # awsiot is untyped
    """Connection events; the SDK calls these on its event-loop thread, so they only record."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        super().__init__()
        self._on_lost = on_lost

    def on_disconnect(self, reason: Exception | None) -> None:
        self._on_lost(f"IPC connection lost: {_describe(reason) if reason else 'closed'}")

    def on_error(self, error: Exception) -> bool:
        logger.error("IPC connection error: %s", _describe(error))
        return True  # close: the nucleus restarts us, which is cleaner than limping on


def _describe(error: BaseException) -> str:
    """A one-line reason: modeled IPC errors carry `.message`, awscrt errors `.name`."""
    message = getattr(error, "message", None)
    if isinstance(message, str) and message:
        return f"{type(error).__name__}: {message}"
    name = getattr(error, "name", None)
    if isinstance(name, str) and name:
        return f"{type(error).__name__}: {name}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class IpcConnection:
    """The IPC client, every call bounded by a timeout, and the news that the nucleus went away."""

    def __init__(self, client: Any, *, timeout_s: float = 10.0) -> None:  # noqa: ANN401 - awsiot is untyped
        self.client = client  # a GreengrassCoreIPCClientV2 (tests may inject another one)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._lost_reason: str | None = None
        self._closing = False
        self._listeners: list[Callable[[str], None]] = []

    @classmethod
    def connect(
        cls, environ: Mapping[str, str] = os.environ, *, timeout_s: float = 10.0
    ) -> IpcConnection:
        """Connect to the nucleus with the socket and token it gave this component.

        Raises:
            TransportError: not started by a nucleus, or the nucleus refused or did not answer.
        """
        socket_path, token = environ.get(SOCKET_ENV), environ.get(TOKEN_ENV)
        if not socket_path or not token:
            msg = f"{SOCKET_ENV} and {TOKEN_ENV} are not set: run this as a Greengrass component"
            raise TransportError(msg)
        holder: list[IpcConnection] = []

        def lost(reason: str) -> None:
            if holder:
                holder[0].mark_lost(reason)

        try:
            raw = connect(
                ipc_socket=socket_path,
                authtoken=token,
                lifecycle_handler=_Lifecycle(lost),
                timeout=timeout_s,
            )
        except (EventStreamOperationError, EventStreamError, AwsCrtError, OSError) as exc:
            # A refused token surfaces as AccessDeniedError or, racing the nucleus's close, as
            # AwsCrtError AWS_IO_SOCKET_CLOSED.
            msg = f"cannot connect to the Greengrass nucleus at {socket_path}: {_describe(exc)}"
            raise TransportError(msg) from exc
        except concurrent.futures.TimeoutError as exc:
            msg = f"the Greengrass nucleus at {socket_path} did not answer within {timeout_s} s"
            raise TransportError(msg) from exc
        # One worker: stream events (requests, configuration events) stay in arrival order.
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lfv-ipc"
        )
        connection = cls(
            GreengrassCoreIPCClientV2(client=raw, executor=executor), timeout_s=timeout_s
        )
        holder.append(connection)
        return connection

    @property
    def lost_reason(self) -> str | None:
        """Why the connection ended unexpectedly, or None while it is up."""
        with self._lock:
            return self._lost_reason

    def on_lost(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` once if the connection ends without `close()` (any thread)."""
        with self._lock:
            reason = self._lost_reason
            if reason is None:
                self._listeners.append(listener)
        if reason is not None:
            listener(reason)

    def mark_lost(self, reason: str) -> None:
        """Record that the nucleus went away and tell the listeners (unless we are closing)."""
        with self._lock:
            if self._closing or self._lost_reason is not None:
                return
            self._lost_reason = reason
            listeners = list(self._listeners)
        logger.error("%s", reason)
        for listener in listeners:
            listener(reason)

    def call(self, what: str, start: Callable[[], Any], timeout_s: float | None = None) -> Any:  # noqa: ANN401 - awsiot is untyped
        """Run one IPC call: `start()` returns the SDK future; wait for it, bounded.

        Raises:
            TransportError: denied, refused, unanswered, or the connection is gone (which also
                marks the connection lost).
        """
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return start().result(timeout=wait_s)
        except concurrent.futures.TimeoutError as exc:
            msg = f"{what}: no answer from the nucleus within {wait_s} s"
            raise TransportError(msg) from exc
        except UnauthorizedError as exc:
            msg = f"{what}: denied by accessControl ({_describe(exc)})"
            raise TransportError(msg) from exc
        except (ConnectionClosedError, StreamClosedError) as exc:
            if isinstance(exc, ConnectionClosedError):
                self.mark_lost(f"IPC connection lost: {_describe(exc)}")
            msg = f"{what}: {_describe(exc)}"
            raise TransportError(msg) from exc
        except (EventStreamOperationError, EventStreamError, AwsCrtError, RuntimeError) as exc:
            msg = f"{what}: {_describe(exc)}"
            raise TransportError(msg) from exc

    def subscribe(self, what: str, start: Callable[[], tuple[Any, Any]]) -> Any:  # noqa: ANN401 - awsiot is untyped
        """Open a subscription stream; returns the SDK operation (close it to unsubscribe).

        Raises:
            TransportError: as `call`.
        """
        operations: list[Any] = []

        def first() -> Any:  # noqa: ANN401 - awsiot is untyped
            future, operation = start()
            operations.append(operation)
            return future

        self.call(what, first)
        return operations[0]

    def close_stream(self, what: str, operation: Any) -> None:  # noqa: ANN401 - awsiot is untyped
        """Close a subscription stream; failures only matter for the log."""
        try:
            self.call(f"closing {what}", operation.close)
        except TransportError as exc:
            logger.debug("%s", exc)

    def update_state(self, state: str) -> None:
        """Report RUNNING or ERRORED to the nucleus (best effort when the connection is gone).

        Raises:
            TransportError: the nucleus refused or did not answer.
        """
        self.call(f"UpdateState {state}", lambda: self.client.update_state_async(state=state))
        logger.info("reported %s to the nucleus", state)

    def close(self) -> None:
        """Disconnect on purpose (no `on_lost`); never waits on a stuck callback."""
        with self._lock:
            self._closing = True
        try:
            self.client.close(executor_wait=False)
        except (AwsCrtError, RuntimeError) as exc:
            logger.debug("closing the IPC client: %s", exc)


@dataclass(frozen=True, slots=True)
class _Channel:
    """One request subscription and where its replies go."""

    kind: str  # LOCAL or IOT_CORE
    requests_topic: str
    results_topic: str


def _channels(config: IpcConfig) -> dict[str, _Channel]:
    channels: dict[str, _Channel] = {}
    if config.local_requests_topic and config.local_results_topic:
        channels[LOCAL] = _Channel(LOCAL, config.local_requests_topic, config.local_results_topic)
    if config.iot_core_requests_topic and config.iot_core_results_topic:
        channels[IOT_CORE] = _Channel(
            IOT_CORE, config.iot_core_requests_topic, config.iot_core_results_topic
        )
    return channels


class IpcTransport:
    """Requests from local pub/sub and AWS IoT Core, replies on the matching results topic."""

    name = TRANSPORT_NAME

    def __init__(self, connection: IpcConnection, config: IpcConfig) -> None:
        self._connection = connection
        self._config = config
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._streams: dict[str, Any] = {}  # channel kind -> open subscription operation
        self._handler: MessageHandler | None = None
        self._on_fatal: FatalHandler | None = None
        self._receiving = False
        self._topic_streams: dict[str, Any] = {}  # subscribe_topic's (capture triggers)

    @property
    def config(self) -> IpcConfig:
        """The topics and timeout in effect (after a failed update: what is still subscribed)."""
        with self._lock:
            return self._config

    def start(self, handler: MessageHandler, on_fatal: FatalHandler) -> None:
        """Subscribe to the request topics.

        Raises:
            TransportError: a subscription was denied or failed (names the topic).
        """
        self._handler, self._on_fatal = handler, on_fatal
        self._connection.on_lost(on_fatal)
        self._receiving = True
        for channel in _channels(self._config).values():
            self._subscribe(channel)

    def update(self, config: IpcConfig) -> None:
        """Apply new topics and timeout between messages: subscribe new topics, then drop old ones.

        Raises:
            TransportError: a new subscription failed; that channel keeps its old topics and
                everything else is applied.
        """
        self._connection.timeout_s = config.timeout_s
        wanted = _channels(config)
        failures: list[str] = []
        for kind in (LOCAL, IOT_CORE):
            old, new = self._channels.get(kind), wanted.get(kind)
            if old == new:
                continue
            if new is not None and (old is None or new.requests_topic != old.requests_topic):
                stream = self._streams.get(kind)
                try:
                    self._subscribe(new)
                except TransportError as exc:
                    failures.append(str(exc))
                    continue
                if stream is not None:
                    self._connection.close_stream(f"{kind} subscription", stream)
                logger.info("%s requests now from %s (was %s)", kind, new.requests_topic,
                            old.requests_topic if old else "none")  # fmt: skip
            elif new is None and old is not None:
                stream = self._streams.pop(kind, None)
                if stream is not None:
                    self._connection.close_stream(f"{kind} subscription", stream)
                logger.info("%s requests: unsubscribed from %s", kind, old.requests_topic)
            with self._lock:
                if new is None:
                    self._channels.pop(kind, None)
                else:
                    self._channels[kind] = new
        with self._lock:
            self._config = _config_of(self._channels, config)
        if failures:
            raise TransportError("; ".join(failures))

    def _subscribe(self, channel: _Channel) -> None:
        if channel.kind == LOCAL:
            stream = self._connection.subscribe(
                f"SubscribeToTopic {channel.requests_topic}",
                lambda: self._connection.client.subscribe_to_topic_async(
                    topic=channel.requests_topic,
                    # our own replies never come back as requests, even on a shared topic
                    receive_mode=ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS,
                    on_stream_event=self._on_local_event,
                    on_stream_error=self._stream_error(channel),
                ),
            )
        else:
            stream = self._connection.subscribe(
                f"SubscribeToIoTCore {channel.requests_topic}",
                lambda: self._connection.client.subscribe_to_iot_core_async(
                    topic_name=channel.requests_topic,
                    qos=QOS.AT_LEAST_ONCE,
                    on_stream_event=self._on_iot_core_event,
                    on_stream_error=self._stream_error(channel),
                ),
            )
        with self._lock:
            self._streams[channel.kind] = stream
            self._channels[channel.kind] = channel
        logger.info("subscribed to %s requests on %s", channel.kind, channel.requests_topic)

    def _stream_error(self, channel: _Channel) -> Callable[[Exception], bool]:
        def on_stream_error(error: Exception) -> bool:
            # Runs on the SDK's event-loop thread: no IPC calls here, only the fatal flag.
            reason = f"{channel.kind} subscription to {channel.requests_topic} failed: {_describe(error)}"
            if self._on_fatal is not None and self._receiving:
                self._on_fatal(reason)
            return True

        return on_stream_error

    # --- stream events: the single executor worker, in arrival order ----------------------

    def _on_local_event(self, event: Any) -> None:  # noqa: ANN401 - awsiot is untyped
        try:
            if event.binary_message is not None:
                payload = bytes(event.binary_message.message or b"")
            elif event.json_message is not None:
                payload = json.dumps(event.json_message.message).encode()
            else:
                logger.warning("local request without a message ignored")
                return
            self._deliver(LOCAL, payload, None)
        except Exception:  # an exception here would only be printed by the SDK
            logger.exception("local request dropped")

    def _on_iot_core_event(self, event: Any) -> None:  # noqa: ANN401 - awsiot is untyped
        try:
            message = event.message
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            correlation = message.correlation_data
            if isinstance(correlation, str):
                correlation = correlation.encode()
            self._deliver(IOT_CORE, bytes(payload or b""), correlation)
        except Exception:  # see _on_local_event
            logger.exception("IoT Core request dropped")

    def _deliver(self, kind: str, payload: bytes, correlation: bytes | None) -> None:
        with self._lock:
            channel = self._channels.get(kind)
        if not self._receiving or channel is None or self._handler is None:
            logger.debug("%s request after unsubscribing: not handled", kind)
            return
        route = ReplyRoute(
            topic=channel.results_topic,
            transport=self.name,
            channel=kind,
            correlation_data=correlation,
            max_bytes=IOT_CORE_MAX_PAYLOAD_BYTES if kind == IOT_CORE else None,
        )
        # IoT Core requests came at QoS 1 and their senders wait for the reply: they may wait
        # here too (the nucleus does not redeliver them). Local pub/sub has no such sender.
        self._handler(IncomingMessage(payload, route, can_wait=kind == IOT_CORE))

    # --- other topics (capture triggers) ---------------------------------------------------

    def subscribe_topic(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Also hand each local pub/sub message on `topic` to `handler` (executor thread: it
        must only enqueue). The recipe's accessControl must allow SubscribeToTopic on it.

        Raises:
            TransportError: denied by accessControl, refused, or unanswered.
        """

        def on_event(event: Any) -> None:  # noqa: ANN401 - awsiot is untyped
            try:
                if event.binary_message is not None:
                    payload = bytes(event.binary_message.message or b"")
                elif event.json_message is not None:
                    payload = json.dumps(event.json_message.message).encode()
                else:
                    return
                handler(payload)
            except Exception:  # an exception here would only be printed by the SDK
                logger.exception("message on %s dropped", topic)

        def on_error(error: Exception) -> bool:
            logger.error("subscription to %s failed: %s", topic, _describe(error))
            return True

        client = self._connection.client
        stream = self._connection.subscribe(
            f"SubscribeToTopic {topic}",
            lambda: client.subscribe_to_topic_async(
                topic=topic,
                receive_mode=ReceiveMode.RECEIVE_MESSAGES_FROM_OTHERS,
                on_stream_event=on_event,
                on_stream_error=on_error,
            ),
        )
        with self._lock:
            old = self._topic_streams.pop(topic, None)
            self._topic_streams[topic] = stream
        if old is not None:
            self._connection.close_stream(f"subscription to {topic}", old)
        logger.info("also subscribed to local topic %s", topic)

    def unsubscribe_topic(self, topic: str) -> None:
        """Close the subscription `subscribe_topic` opened."""
        with self._lock:
            stream = self._topic_streams.pop(topic, None)
        if stream is not None:
            self._connection.close_stream(f"subscription to {topic}", stream)

    # --- replies -----------------------------------------------------------------------------

    def publish(self, route: ReplyRoute, payload: bytes) -> None:
        """Publish a reply on its route's topic (IoT Core: QoS 1, i.e. spooled by the nucleus).

        Raises:
            TransportError: denied by accessControl, refused, or unanswered.
        """
        client = self._connection.client
        if route.channel == IOT_CORE:
            extra: dict[str, object] = {}
            if route.correlation_data is not None:
                extra["correlation_data"] = route.correlation_data
            self._connection.call(
                f"PublishToIoTCore {route.topic}",
                lambda: client.publish_to_iot_core_async(
                    topic_name=route.topic, qos=QOS.AT_LEAST_ONCE, payload=payload, **extra
                ),
            )
        else:
            self._connection.call(
                f"PublishToTopic {route.topic}",
                lambda: client.publish_to_topic_async(
                    topic=route.topic,
                    publish_message=PublishMessage(binary_message=BinaryMessage(message=payload)),
                ),
            )

    def results_route(self) -> ReplyRoute | None:
        """Local pub/sub's results topic when configured, else IoT Core's (128 KB limit)."""
        with self._lock:
            channels = dict(self._channels)
        for kind in (LOCAL, IOT_CORE):
            channel = channels.get(kind)
            if channel is not None:
                limit = IOT_CORE_MAX_PAYLOAD_BYTES if kind == IOT_CORE else None
                return ReplyRoute(channel.results_topic, self.name, kind, None, limit)
        return None

    @property
    def connected(self) -> bool:
        """Subscribed and the nucleus connection is up (it has no reconnect: lost is final)."""
        return self._receiving and self._connection.lost_reason is None

    def publish_stats(self, payload: bytes) -> None:
        """Publish a stats snapshot to IoT Core at QoS 0 (stale stats are worth nothing offline)."""
        topic = self.config.stats_topic
        if topic is None:
            return
        client = self._connection.client
        self._connection.call(
            f"PublishToIoTCore {topic}",
            lambda: client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_MOST_ONCE, payload=payload
            ),
        )

    def stop_receiving(self) -> None:
        """Close the request subscriptions; later events are not handed to the service."""
        self._receiving = False
        with self._lock:
            streams = list(self._streams.items())
            self._streams.clear()
        for kind, stream in streams:
            self._connection.close_stream(f"{kind} subscription", stream)

    def close(self, timeout_s: float) -> None:
        """Nothing is pending (every publish waited for its answer); the connection's owner closes it."""
        self._receiving = False


def _config_of(channels: Mapping[str, _Channel], wanted: IpcConfig) -> IpcConfig:
    local, iot = channels.get(LOCAL), channels.get(IOT_CORE)
    return IpcConfig(
        local_requests_topic=local.requests_topic if local else None,
        local_results_topic=local.results_topic if local else wanted.local_results_topic,
        iot_core_requests_topic=iot.requests_topic if iot else None,
        iot_core_results_topic=iot.results_topic if iot else wanted.iot_core_results_topic,
        stats_topic=wanted.stats_topic,
        timeout_s=wanted.timeout_s,
    )


# --- component configuration ----------------------------------------------------------------


def without_access_control(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration minus `accessControl` (the nucleus's business, not ours; any case)."""
    return {key: value for key, value in raw.items() if key.lower() != ACCESS_CONTROL.lower()}


def _expand_environment(value: object, where: str, environ: Mapping[str, str]) -> object:
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        found = environ.get(name)
        if not found:
            msg = (
                f"{where}: ${{{name}}} is not set in the component's environment "
                "(the recipe's Setenv provides it when the component depends on that model)"
            )
            raise ConfigError(msg)
        return found

    return _ENV_REFERENCE.sub(replace, value)


def to_service_config(
    raw: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> ServiceConfig:
    """The component configuration as a `ServiceConfig`.

    Drops `accessControl` and expands `${NAME}` in `model.path` from the environment (the
    recipe's Setenv puts a dependency's artifact folder there, because recipe variables are
    interpolated in the lifecycle only). Requires an `ipc` section; `mqtt` is refused (inside
    Greengrass, IoT Core goes through the nucleus, with no certificates in our process).

    Raises:
        ConfigError: names the key path.
    """
    config = dict(without_access_control(raw))
    model = config.get("model")
    if isinstance(model, Mapping) and "path" in model:
        config["model"] = {
            **model,
            "path": _expand_environment(model["path"], "model.path", environ),
        }
    for section in ("mqtt", "agent"):
        if config.get(section) not in (None, ""):
            msg = f"{section}: not used by the Greengrass component (requests come over IPC)"
            raise ConfigError(msg, key=section)
    parsed = parse_config(config, environ)
    if parsed.ipc is None:
        msg = "ipc: required: set localRequestsTopic and/or iotCoreRequestsTopic"
        raise ConfigError(msg, key="ipc")
    return parsed


@dataclass(frozen=True, slots=True)
class ValidationRequest:
    """A deployment asking whether its configuration is acceptable."""

    deployment_id: str
    configuration: Mapping[str, Any]


class IpcComponentConfig:
    """Our component's configuration over IPC: read it, watch it, answer validation requests."""

    def __init__(self, connection: IpcConnection, environ: Mapping[str, str] = os.environ) -> None:
        self._connection = connection
        self._environ = environ
        self._streams: list[Any] = []

    def read_raw(self) -> dict[str, Any]:
        """The whole configuration, `accessControl` included.

        Raises:
            TransportError: the nucleus refused or did not answer.
        """
        response = self._connection.call(
            "GetConfiguration",
            lambda: self._connection.client.get_configuration_async(key_path=[]),
        )
        value = response.value
        return dict(value) if isinstance(value, Mapping) else {}

    def read(self) -> ServiceConfig:
        """GetConfiguration, minus `accessControl`, through `parse_config`.

        Raises:
            ConfigError: invalid configuration (names the key path).
            TransportError: the nucleus refused or did not answer.
        """
        return to_service_config(self.read_raw(), self._environ)

    def check(self, candidate: Mapping[str, Any]) -> ServiceConfig:
        """Parse a proposed configuration as `read` would.

        Raises:
            ConfigError: names the key path.
        """
        return to_service_config(candidate, self._environ)

    def watch(self, on_change: Callable[[tuple[str, ...]], None]) -> None:
        """Call `on_change(key_path)` for every changed leaf (executor thread; must not block).

        Raises:
            TransportError: the subscription failed.
        """

        def on_event(event: Any) -> None:  # noqa: ANN401 - awsiot is untyped
            update = event.configuration_update_event
            key_path = tuple(update.key_path or ()) if update is not None else ()
            on_change(key_path)

        self._streams.append(
            self._connection.subscribe(
                "SubscribeToConfigurationUpdate",
                lambda: self._connection.client.subscribe_to_configuration_update_async(
                    key_path=[], on_stream_event=on_event, on_stream_error=self._stream_error
                ),
            )
        )

    def watch_validation(self, on_request: Callable[[ValidationRequest], None]) -> None:
        """Call `on_request` when a deployment asks to validate (executor thread; must not block).

        Answer with `report_validity` within the deployment's wait (default 20 s).

        Raises:
            TransportError: the subscription failed.
        """

        def on_event(event: Any) -> None:  # noqa: ANN401 - awsiot is untyped
            request = event.validate_configuration_update_event
            if request is None or request.deployment_id is None:
                return
            on_request(
                ValidationRequest(str(request.deployment_id), dict(request.configuration or {}))
            )

        self._streams.append(
            self._connection.subscribe(
                "SubscribeToValidateConfigurationUpdates",
                lambda: self._connection.client.subscribe_to_validate_configuration_updates_async(
                    on_stream_event=on_event, on_stream_error=self._stream_error
                ),
            )
        )

    def report_validity(self, deployment_id: str, problem: str | None) -> None:
        """ACCEPTED when `problem` is None, else REJECTED with `problem` as the message.

        Raises:
            TransportError: the nucleus refused or did not answer.
        """
        report = ConfigurationValidityReport(
            status=ConfigurationValidityStatus.ACCEPTED
            if problem is None
            else ConfigurationValidityStatus.REJECTED,
            deployment_id=deployment_id,
            message=problem,
        )
        self._connection.call(
            "SendConfigurationValidityReport",
            lambda: self._connection.client.send_configuration_validity_report_async(
                configuration_validity_report=report
            ),
        )

    def _stream_error(self, error: Exception) -> bool:
        # Event-loop thread: log only; losing the connection itself is reported by on_lost.
        logger.error("configuration stream failed: %s", _describe(error))
        return True

    def stop(self) -> None:
        """Close the configuration streams."""
        streams, self._streams = self._streams, []
        for stream in streams:
            self._connection.close_stream("configuration subscription", stream)
