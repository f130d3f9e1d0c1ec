"""FakeNucleus: the server side of Greengrass IPC, over a real Unix domain socket.

Owns the socket, one thread per client connection, the CONNECT handshake, the operation
handlers and the test-side API (records, waits, pushes). Wire details live in `eventstream`
and `rpc`; authorization in `authorization`; configuration in `configstore`; topic matching in
`topics`. Every behaviour copies the Java nucleus (`aws-greengrass-nucleus`, IPC agents under
`builtin/services/`); where the fake simplifies, the handler's comment says so.

Threads: an accept thread, one reader thread per connection (handlers run there), and the
test's own thread for the test-side API. All shared state sits behind one `threading.Condition`;
frames are sent outside it, one `sendall` at a time per connection.

    with FakeNucleus("com.example.Lfv", configuration={...}) as nucleus:
        env = nucleus.environ()          # for a subprocess, or connect(ipc_socket=..., authtoken=...)
        ...
        record = nucleus.wait_for_iot_core_publish("lfv/+/verdicts", timeout_s=5)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import itertools
import logging
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_nucleus import authorization
from tests.fake_nucleus.authorization import (
    MQTT_PROXY_SERVICE,
    PUBSUB_SERVICE,
    LookupPolicy,
)
from tests.fake_nucleus.configstore import ConfigStore, KeyPath
from tests.fake_nucleus.eventstream import FrameError, Header, read_message
from tests.fake_nucleus.records import (
    Denial,
    FakeNucleusError,
    IotCorePublish,
    LocalPublish,
    StateReport,
    SubscriptionKind,
    ValidityReport,
)
from tests.fake_nucleus.rpc import (
    CONTENT_TYPE,
    CONTENT_TYPE_JSON,
    MODEL_PREFIX,
    OPERATION,
    VERSION,
    VERSION_STRING,
    MessageFlag,
    MessageType,
    ProtocolError,
    RpcFrame,
    encode_application_error,
    encode_application_message,
    encode_rpc,
    parse_json_object,
    to_rpc_frame,
)
from tests.fake_nucleus.topics import (
    has_mqtt_wildcard,
    iot_core_filter_matches,
    is_wildcard_filter,
    local_filter_matches,
)

__all__ = ["NUCLEUS_VERSION", "FakeNucleus"]

logger = logging.getLogger(__name__)

NUCLEUS_VERSION = "2.14.0"  # GGC_VERSION handed to components; the behaviour copied is 2.6+
MAX_IOT_CORE_MESSAGE_BYTES = 131072  # nucleus mqtt.maxMessageSizeInBytes default (IoT Core 128 KB)
_MAX_TOPIC_SLASHES = 7  # MqttClient.MAX_NUMBER_OF_FORWARD_SLASHES (an IoT Core limit)
_MAX_TOPIC_BYTES = 256  # MqttClient.MAX_LENGTH_OF_TOPIC
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_JOIN_TIMEOUT_S = 5.0

_RECEIVE_ALL = "RECEIVE_ALL_MESSAGES"
_RECEIVE_FROM_OTHERS = "RECEIVE_MESSAGES_FROM_OTHERS"
_REPORTED_STATES = ("RUNNING", "ERRORED")  # model.ReportedLifecycleState
_KEY_NOT_FOUND = "Key not found"  # ConfigStoreIPCEventStreamAgent.KEY_NOT_FOUND_ERROR_MESSAGE


class _IpcError(Exception):
    """A modeled error shape (`aws.greengrass#<shape>`) to send as APPLICATION_ERROR."""

    def __init__(self, shape: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.shape = shape
        self.body: dict[str, Any] = {"message": message, **fields}


def _invalid(message: str) -> _IpcError:
    return _IpcError("InvalidArgumentsError", message)


@dataclass(eq=False)
class _Connection:
    """One client socket; only its reader thread touches `streams` and `last_stream_id`."""

    sock: socket.socket
    number: int
    component: str | None = None
    streams: dict[int, str] = field(default_factory=dict)  # open stream id -> operation
    last_stream_id: int = 0
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    @property
    def caller(self) -> str:
        """The authenticated component; operations only run after CONNECT was accepted."""
        if self.component is None:
            msg = f"connection {self.number}: operation before an accepted CONNECT"
            raise ProtocolError(msg)
        return self.component

    def send(self, frame: bytes) -> bool:
        """Write one whole frame; False if the connection is gone."""
        with self.send_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(frame)
            except OSError:
                self.closed = True
                return False
            return True

    def abort(self) -> None:
        """Wake the reader with EOF and make the peer see the socket close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


@dataclass(eq=False)
class _Subscription:
    kind: SubscriptionKind
    connection: _Connection
    stream_id: int
    component: str  # the subscriber
    topic: str | None = None  # iot_core and local: the filter as requested
    receive_mode: str | None = None  # local: effective mode
    target: str | None = None  # configuration, validate_configuration: whose configuration
    key_path: KeyPath = ()  # configuration: canonical path subscribed to

    def describe(self) -> str:
        where = self.topic if self.topic is not None else "/".join(self.key_path)
        return f"{self.kind}({where!r}) by {self.component}"


@dataclass(eq=False)
class _Component:
    name: str
    svcuid: str
    store: ConfigStore


_Handler = Callable[[_Connection, dict[str, Any]], tuple[dict[str, Any], _Subscription | None]]
_Push = tuple[_Subscription, str, dict[str, Any]]  # subscription, event shape, event body


def _b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _invalid(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise _invalid(f"{what} is not valid base64") from exc


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_path(request: Mapping[str, Any]) -> list[str]:
    value = request.get("keyPath")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise _invalid("keyPath must be a list of strings")
    return value


def _check_iot_topic(topic: str) -> str | None:
    """MqttClient.isValidRequestTopic: IoT Core topic limits; None if the topic is fine."""
    checked = topic
    if topic.lower().startswith("$aws/rules/"):
        # Basic Ingest: the first three levels ($aws/rules/<rule>/) do not count.
        checked = topic.split("/", 3)[3] if topic.count("/") >= 3 else ""
    if checked.count("/") > _MAX_TOPIC_SLASHES:
        return (
            f"The topic of request must have no more than {_MAX_TOPIC_SLASHES} forward slashes (/)."
        )
    if len(checked.encode("utf-8")) > _MAX_TOPIC_BYTES:
        return f"The topic size of request must be no larger than {_MAX_TOPIC_BYTES} bytes"
    return None


def _short_socket_dir() -> str:
    # AF_UNIX paths are limited to 107 bytes; $TMPDIR on CI runners can be long.
    base = "/tmp" if Path("/tmp").is_dir() else None
    return tempfile.mkdtemp(prefix="gg", dir=base)


class FakeNucleus:
    """An in-process Greengrass nucleus speaking the real IPC protocol on a Unix socket.

    Args:
        component_name: the component under test; connections with `svcuid` act as it.
        svcuid: its IPC token (random if omitted); other tokens are refused at CONNECT.
        configuration: its running configuration, `accessControl` included.
        default_configuration: its recipe DefaultConfiguration, which RESET restores;
            defaults to `configuration`.
        thing_name: AWS_IOT_THING_NAME handed to components.
        region: AWS_REGION / AWS_DEFAULT_REGION handed to components.
        max_iot_core_message_bytes: the nucleus `mqtt.maxMessageSizeInBytes`.
        close_on_reject: after a refused CONNECT, close the socket at once as the Java nucleus
            does. The client then races its own close against the EOF and raises either
            AccessDeniedError or AwsCrtError(AWS_IO_SOCKET_CLOSED) (the latter about 3 times
            in 4 here). False waits for the client to close: always AccessDeniedError.
    """

    def __init__(
        self,
        component_name: str,
        svcuid: str | None = None,
        configuration: Mapping[str, Any] | None = None,
        *,
        default_configuration: Mapping[str, Any] | None = None,
        thing_name: str = "fake-thing",
        region: str = "eu-west-1",
        max_iot_core_message_bytes: int = MAX_IOT_CORE_MESSAGE_BYTES,
        close_on_reject: bool = True,
    ) -> None:
        self.component_name = component_name
        self.thing_name = thing_name
        self.region = region
        self.max_iot_core_message_bytes = max_iot_core_message_bytes
        self.close_on_reject = close_on_reject
        self._cond = threading.Condition(threading.RLock())
        self._components: dict[str, _Component] = {}
        self._subscriptions: list[_Subscription] = []
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._iot_core_publishes: list[IotCorePublish] = []
        self._local_publishes: list[LocalPublish] = []
        self._states: list[StateReport] = []
        self._denied: list[Denial] = []
        self._protocol_errors: list[str] = []
        self._unsupported: list[str] = []
        self._rejected_connects = 0
        self._pending_validations: dict[tuple[str, str], ValidityReport | None] = {}
        # wait_for_* hand out each record once, so two waits see two publishes
        self._consumed: dict[str, set[int]] = {"iot_core": set(), "local": set(), "state": set()}
        self._numbers = itertools.count(1)
        self._socket_dir: str | None = None
        self._socket_path: str | None = None
        self._listener: socket.socket | None = None
        self._stopping = False
        self.add_component(component_name, svcuid, configuration, default_configuration)
        self._operations: dict[str, tuple[_Handler, bool]] = {
            "GetConfiguration": (self._get_configuration, False),
            "UpdateConfiguration": (self._update_configuration, False),
            "SubscribeToConfigurationUpdate": (self._subscribe_to_configuration_update, True),
            "SubscribeToValidateConfigurationUpdates": (self._subscribe_to_validate, True),
            "SendConfigurationValidityReport": (self._send_validity_report, False),
            "UpdateState": (self._update_state, False),
            "PublishToIoTCore": (self._publish_to_iot_core, False),
            "SubscribeToIoTCore": (self._subscribe_to_iot_core, True),
            "PublishToTopic": (self._publish_to_topic, False),
            "SubscribeToTopic": (self._subscribe_to_topic, True),
        }

    # ------------------------------------------------------------------ lifecycle

    def add_component(
        self,
        name: str,
        svcuid: str | None = None,
        configuration: Mapping[str, Any] | None = None,
        default_configuration: Mapping[str, Any] | None = None,
    ) -> str:
        """Register another component (e.g. a second client for pub/sub); returns its SVCUID."""
        token = svcuid if svcuid is not None else secrets.token_urlsafe(16)
        with self._cond:
            if name in self._components:
                msg = f"component {name} is already registered"
                raise ValueError(msg)
            if any(c.svcuid == token for c in self._components.values()):
                msg = f"SVCUID of {name} is already used by another component"
                raise ValueError(msg)
            store = ConfigStore(configuration or {}, default_configuration)
            self._components[name] = _Component(name, token, store)
        return token

    def start(self) -> FakeNucleus:
        """Bind the socket and start accepting connections."""
        with self._cond:
            if self._listener is not None or self._stopping:
                msg = "FakeNucleus can be started once"
                raise RuntimeError(msg)
            self._socket_dir = _short_socket_dir()
            path = str(Path(self._socket_dir) / "ipc.socket")
            if len(path.encode()) > _UNIX_PATH_MAX:
                msg = f"socket path {path!r} is longer than {_UNIX_PATH_MAX} bytes"
                raise RuntimeError(msg)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(16)
            self._socket_path = path
            self._listener = listener
            self._spawn(self._accept_loop, "fake-nucleus-accept")
        return self

    def stop(self) -> None:
        """Close everything, join the threads and delete the socket. Idempotent."""
        self._shutdown_sockets()
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT_S)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def kill(self) -> None:
        """Die abruptly, as a crashed nucleus: every client sees its socket close.

        Later connects fail too (nothing listens). Records stay readable; call stop() to clean up.
        """
        self._shutdown_sockets()

    def _shutdown_sockets(self) -> None:
        with self._cond:
            self._stopping = True
            listener, self._listener = self._listener, None
            connections = list(self._connections)
            self._cond.notify_all()
        if listener is not None:
            # shutdown() wakes a thread blocked in accept() on Linux; close() alone does not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for connection in connections:
            connection.abort()

    def __enter__(self) -> FakeNucleus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ environment

    @property
    def socket_path(self) -> str:
        """The IPC socket path (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT)."""
        if self._socket_path is None:
            msg = "FakeNucleus is not started"
            raise RuntimeError(msg)
        return self._socket_path

    def svcuid(self, component: str | None = None) -> str:
        """The IPC token of a component (the one under test by default)."""
        with self._cond:
            return self._component(component).svcuid

    def environ(self, component: str | None = None) -> dict[str, str]:
        """The variables the nucleus sets for a component's lifecycle scripts.

        Merge into `os.environ` for a subprocess; `GreengrassCoreIPCClientV2()` reads the first two.
        """
        return {
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": self.socket_path,
            "SVCUID": self.svcuid(component),
            "AWS_IOT_THING_NAME": self.thing_name,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "GGC_VERSION": NUCLEUS_VERSION,
        }

    def _component(self, name: str | None) -> _Component:
        component = self._components.get(name or self.component_name)
        if component is None:
            msg = f"unknown component {name!r} (known: {sorted(self._components)})"
            raise KeyError(msg)
        return component

    # ------------------------------------------------------------------ records

    @property
    def iot_core_publishes(self) -> list[IotCorePublish]:
        """Every accepted PublishToIoTCore, oldest first."""
        with self._cond:
            return list(self._iot_core_publishes)

    @property
    def local_publishes(self) -> list[LocalPublish]:
        """Every accepted PublishToTopic from a connected client, oldest first."""
        with self._cond:
            return list(self._local_publishes)

    @property
    def states(self) -> list[str]:
        """UpdateState values reported by the component under test, oldest first."""
        with self._cond:
            return [r.state for r in self._states if r.component == self.component_name]

    @property
    def state_reports(self) -> list[StateReport]:
        """UpdateState calls of every component."""
        with self._cond:
            return list(self._states)

    @property
    def denied(self) -> list[Denial]:
        """Operations refused by accessControl, oldest first."""
        with self._cond:
            return list(self._denied)

    @property
    def protocol_errors(self) -> list[str]:
        """Connections dropped for malformed frames or protocol violations (should stay empty)."""
        with self._cond:
            return list(self._protocol_errors)

    @property
    def unsupported_operations(self) -> list[str]:
        """Operations a client called that the fake does not implement."""
        with self._cond:
            return list(self._unsupported)

    @property
    def rejected_connects(self) -> int:
        """CONNECTs refused for a wrong version or an unknown SVCUID."""
        with self._cond:
            return self._rejected_connects

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        """A deep copy of a component's current configuration."""
        with self._cond:
            return self._component(component).store.snapshot()

    # ------------------------------------------------------------------ waits

    def _wait(
        self, ready: Callable[[], bool], timeout_s: float, describe: Callable[[], str]
    ) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout_s):
                msg = f"timed out after {timeout_s}s waiting for {describe()}"
                raise TimeoutError(msg)

    def _take(
        self, kind: str, records: Sequence[Any], matches: Callable[[Any], bool]
    ) -> int | None:
        for index, record in enumerate(records):
            if index not in self._consumed[kind] and matches(record):
                self._consumed[kind].add(index)
                return index
        return None

    def wait_for_iot_core_publish(self, topic: str, timeout_s: float = 5.0) -> IotCorePublish:
        """The next not-yet-waited-for PublishToIoTCore whose topic matches the filter `topic`."""
        found: list[int] = []

        def ready() -> bool:
            index = self._take(
                "iot_core",
                self._iot_core_publishes,
                lambda r: iot_core_filter_matches(topic, r.topic),
            )
            if index is not None:
                found.append(index)
            return bool(found)

        self._wait(
            ready,
            timeout_s,
            lambda: (
                f"a PublishToIoTCore on {topic!r}; seen "
                f"{[r.topic for r in self._iot_core_publishes]}, denied {self._denied}"
            ),
        )
        with self._cond:
            return self._iot_core_publishes[found[0]]

    def wait_for_local_publish(self, topic: str, timeout_s: float = 5.0) -> LocalPublish:
        """The next not-yet-waited-for PublishToTopic whose topic matches the filter `topic`."""
        found: list[int] = []

        def ready() -> bool:
            index = self._take(
                "local", self._local_publishes, lambda r: local_filter_matches(topic, r.topic)
            )
            if index is not None:
                found.append(index)
            return bool(found)

        self._wait(
            ready,
            timeout_s,
            lambda: (
                f"a PublishToTopic on {topic!r}; seen "
                f"{[r.topic for r in self._local_publishes]}, denied {self._denied}"
            ),
        )
        with self._cond:
            return self._local_publishes[found[0]]

    def wait_for_state(
        self, state: str, timeout_s: float = 5.0, *, component: str | None = None
    ) -> StateReport:
        """The next not-yet-waited-for UpdateState(`state`) of a component."""
        name = component or self.component_name
        found: list[int] = []

        def ready() -> bool:
            index = self._take(
                "state", self._states, lambda r: r.component == name and r.state == state
            )
            if index is not None:
                found.append(index)
            return bool(found)

        self._wait(ready, timeout_s, lambda: f"{name} to report {state}; seen {self._states}")
        with self._cond:
            return self._states[found[0]]

    def _has_subscription(self, kind: SubscriptionKind, topic: str | None, component: str) -> bool:
        for sub in self._subscriptions:
            if sub.kind != kind or sub.component != component:
                continue
            if topic is None or kind == "validate_configuration":
                return True
            where = sub.topic if sub.topic is not None else "/".join(sub.key_path)
            if where == topic:
                return True
        return False

    def wait_for_subscription(
        self,
        kind: SubscriptionKind,
        topic: str | None = None,
        timeout_s: float = 5.0,
        *,
        component: str | None = None,
    ) -> None:
        """Until an open subscription of `kind` exists (for `topic` if given).

        `topic` is the filter exactly as requested for iot_core/local, the '/'-joined key path
        for configuration, ignored for validate_configuration.
        """
        name = component or self.component_name
        self._wait(
            lambda: self._has_subscription(kind, topic, name),
            timeout_s,
            lambda: (
                f"{name} to subscribe {kind}({topic!r}); open: "
                f"{[s.describe() for s in self._subscriptions]}"
            ),
        )

    def wait_for_unsubscribe(
        self,
        kind: SubscriptionKind,
        topic: str | None = None,
        timeout_s: float = 5.0,
        *,
        component: str | None = None,
    ) -> None:
        """Until no subscription of `kind` (for `topic` if given) is open: the client closed the
        stream or its connection. Arguments as for wait_for_subscription."""
        name = component or self.component_name
        self._wait(
            lambda: not self._has_subscription(kind, topic, name),
            timeout_s,
            lambda: (
                f"{name} to drop {kind}({topic!r}); open: "
                f"{[s.describe() for s in self._subscriptions]}"
            ),
        )

    def wait_for_connection(self, timeout_s: float = 5.0, *, component: str | None = None) -> None:
        """Until a client authenticated as `component` is connected."""
        name = component or self.component_name
        self._wait(
            lambda: any(c.component == name and not c.closed for c in self._connections),
            timeout_s,
            lambda: f"{name} to connect; rejected CONNECTs: {self._rejected_connects}",
        )

    # ------------------------------------------------------------------ pushes from the test

    def deliver_iot_core(self, topic: str, payload: bytes) -> int:
        """A message arriving from AWS IoT Core; returns how many subscriptions received it."""
        if has_mqtt_wildcard(topic):
            msg = f"cannot deliver to {topic!r}: a message topic has no wildcards"
            raise ValueError(msg)
        body = {"message": {"topicName": topic, "payload": _b64encode(payload)}}
        with self._cond:
            pushes: list[_Push] = [
                (sub, "IoTCoreMessage", body)
                for sub in self._subscriptions
                if sub.kind == "iot_core"
                and sub.topic is not None
                and iot_core_filter_matches(sub.topic, topic)
            ]
        return self._push(pushes)

    def publish_local(
        self,
        topic: str,
        payload: bytes | Mapping[str, Any],
        *,
        source_component: str = "fake.LocalPublisher",
    ) -> int:
        """A local pub/sub message from another component; returns how many subscriptions got it.

        bytes travel as binaryMessage, a mapping as jsonMessage.
        """
        if any(char in topic for char in "+#*"):
            msg = f"cannot publish to {topic!r}: Publish topic must not contain a wildcard."
            raise ValueError(msg)
        return self._push(self._local_fan_out(source_component, topic, payload))

    def update_configuration(
        self,
        merge: Mapping[str, Any],
        reset: Sequence[str] = (),
        *,
        component: str | None = None,
    ) -> list[KeyPath]:
        """A deployment's configuration update: RESET (JSON pointers), defaults, then MERGE.

        Pushes one ConfigurationUpdateEvents per changed leaf to matching subscribers and
        returns the changed leaf paths. Does not ask validators: see validate_configuration.

        Raises:
            ValueError: a RESET pointer is malformed or points into a list.
        """
        with self._cond:
            target = self._component(component)
            changed = target.store.update(merge, reset)
            pushes = self._configuration_events(target.name, changed)
        self._push(pushes)
        return changed

    def validate_configuration(
        self,
        candidate: Mapping[str, Any],
        deployment_id: str = "fake-deployment-1",
        timeout_s: float = 5.0,
        *,
        component: str | None = None,
    ) -> ValidityReport:
        """Ask the component's validator about `candidate` (its whole proposed configuration).

        Does not apply the candidate: call update_configuration for an accepted one.

        Raises:
            FakeNucleusError: no validator is subscribed (the nucleus would then not ask).
            TimeoutError: no report within `timeout_s` (the nucleus fails the deployment).
        """
        name = component or self.component_name
        key = (name, deployment_id)
        body = {
            "validateConfigurationUpdateEvent": {
                "configuration": dict(candidate),
                "deploymentId": deployment_id,
            }
        }
        with self._cond:
            validators = [
                s
                for s in self._subscriptions
                if s.kind == "validate_configuration" and s.target == name
            ]
            if not validators:
                msg = f"{name} has no SubscribeToValidateConfigurationUpdates stream open"
                raise FakeNucleusError(msg)
            self._pending_validations[key] = None
        # The nucleus keeps one validation listener per component: the first subscriber.
        self._push([(validators[0], "ValidateConfigurationUpdateEvents", body)])
        try:
            self._wait(
                lambda: self._pending_validations.get(key) is not None,
                timeout_s,
                lambda: f"{name} to answer validation of deployment {deployment_id}",
            )
        finally:
            with self._cond:
                report = self._pending_validations.pop(key, None)
        if report is None:  # only if two calls raced on the same deployment id
            msg = f"no validity report for {deployment_id}"
            raise TimeoutError(msg)
        return report

    # ------------------------------------------------------------------ connection handling

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                listener = self._listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # shut down by stop()/kill()
            with self._cond:
                if self._stopping:
                    sock.close()
                    return
                connection = _Connection(sock, next(self._numbers))
                self._connections.append(connection)
                self._spawn(
                    functools.partial(self._serve, connection),
                    f"fake-nucleus-conn-{connection.number}",
                )

    def _serve(self, connection: _Connection) -> None:
        try:
            while True:
                message = read_message(connection.sock)
                if message is None:
                    return
                if not self._handle_frame(connection, to_rpc_frame(message)):
                    return
        except ProtocolError as exc:
            self._protocol_failure(connection, exc)
            connection.send(
                encode_rpc(MessageType.PROTOCOL_ERROR, payload=str(exc).encode("utf-8"))
            )
        except FrameError as exc:
            self._protocol_failure(connection, exc)
        except OSError:
            logger.debug("connection %d: socket error", connection.number, exc_info=True)
        finally:
            self._drop_connection(connection)

    def _protocol_failure(self, connection: _Connection, exc: Exception) -> None:
        logger.warning("connection %d dropped: %s", connection.number, exc)
        with self._cond:
            self._protocol_errors.append(f"connection {connection.number}: {exc}")

    def _drop_connection(self, connection: _Connection) -> None:
        with connection.send_lock:
            connection.closed = True
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
            connection.sock.close()
        with self._cond:
            # The nucleus unsubscribes every stream of a closed connection (onStreamClosed).
            self._subscriptions = [s for s in self._subscriptions if s.connection is not connection]
            if connection in self._connections:
                self._connections.remove(connection)
            self._cond.notify_all()

    def _handle_frame(self, connection: _Connection, frame: RpcFrame) -> bool:
        """Handle one frame; False closes the connection."""
        kind = frame.message_type
        if connection.component is None:
            if kind is not MessageType.CONNECT:
                msg = f"{kind.name} before CONNECT"
                raise ProtocolError(msg)
            return self._connect(connection, frame)
        if kind is MessageType.PING:
            # The Java server echoes the application headers and payload.
            connection.send(
                encode_rpc(
                    MessageType.PING_RESPONSE,
                    headers=[h for h in frame.headers if not h.name.startswith(":")],
                    payload=frame.payload,
                )
            )
            return True
        if kind is MessageType.PING_RESPONSE:
            return True
        if kind not in (MessageType.APPLICATION_MESSAGE, MessageType.APPLICATION_ERROR):
            msg = f"unexpected {kind.name} on an established connection"
            raise ProtocolError(msg)
        if frame.stream_id == 0:
            msg = f"{kind.name} on stream 0"
            raise ProtocolError(msg)
        if frame.stream_id in connection.streams:
            if frame.terminates_stream:
                self._close_stream(connection, frame.stream_id)
            return True  # client-side stream events: no Greengrass operation has any
        if frame.stream_id <= connection.last_stream_id:
            logger.debug(
                "connection %d: frame for closed stream %d", connection.number, frame.stream_id
            )
            return True
        self._handle_request(connection, frame)
        return True

    def _connect(self, connection: _Connection, frame: RpcFrame) -> bool:
        version = frame.string_header(VERSION)
        try:
            token = parse_json_object(frame.payload).get("authToken")
        except ProtocolError:
            token = None
        with self._cond:
            component = next(
                (c.name for c in self._components.values() if c.svcuid == token),
                None,
            )
            if version != VERSION_STRING or component is None:
                self._rejected_connects += 1
                component = None
            else:
                connection.component = component
            self._cond.notify_all()
        if component is None:
            # The Java server answers CONNECT_ACK without CONNECTION_ACCEPTED, then closes.
            connection.send(encode_rpc(MessageType.CONNECT_ACK, flags=MessageFlag.NONE))
            return not self.close_on_reject  # if kept open, any further frame is a protocol error
        connection.send(encode_rpc(MessageType.CONNECT_ACK, flags=MessageFlag.CONNECTION_ACCEPTED))
        return True

    def _close_stream(self, connection: _Connection, stream_id: int) -> None:
        connection.streams.pop(stream_id, None)
        with self._cond:
            self._subscriptions = [
                s
                for s in self._subscriptions
                if not (s.connection is connection and s.stream_id == stream_id)
            ]
            self._cond.notify_all()

    def _handle_request(self, connection: _Connection, frame: RpcFrame) -> None:
        stream_id = frame.stream_id
        connection.last_stream_id = stream_id
        operation = frame.string_header(OPERATION)
        if operation is None:
            msg = f"stream {stream_id} opened without an 'operation' header"
            raise ProtocolError(msg)
        name = operation.removeprefix(MODEL_PREFIX)
        entry = self._operations.get(name) if operation.startswith(MODEL_PREFIX) else None
        if entry is None:
            self._unsupported_operation(connection, stream_id, operation)
            return
        handler, streaming = entry
        try:
            body, subscription = handler(connection, parse_json_object(frame.payload))
        except _IpcError as exc:
            connection.send(encode_application_error(stream_id, exc.shape, exc.body))
            return
        except Exception as exc:  # a fake bug must answer, not leave the client waiting
            logger.exception("fake nucleus failed on %s", operation)
            body = {"message": f"fake nucleus failed on {name}: {exc!r}"}
            connection.send(encode_application_error(stream_id, "ServiceError", body))
            return
        response = f"{name}Response"
        if not streaming:
            connection.send(encode_application_message(stream_id, response, body, terminate=True))
            return
        connection.streams[stream_id] = name
        # Response first, then register: no event may precede the response on the stream
        # (the nucleus gates events on an `active` flag set after the response is sent).
        connection.send(encode_application_message(stream_id, response, body, terminate=False))
        if subscription is not None:
            subscription.stream_id = stream_id
            with self._cond:
                self._subscriptions.append(subscription)
                self._cond.notify_all()

    def _unsupported_operation(
        self, connection: _Connection, stream_id: int, operation: str
    ) -> None:
        # Exactly what the Java server sends: no service-model-type, so the Python client ignores
        # the body and fails the call with StreamClosedError when the stream terminates.
        with self._cond:
            self._unsupported.append(operation)
        payload = (
            '{ "error": "Unsupported Operation", '
            f'"message": "{operation} is an unsupported operation." }}'
        ).encode()
        connection.send(
            encode_rpc(
                MessageType.APPLICATION_ERROR,
                stream_id=stream_id,
                flags=MessageFlag.TERMINATE_STREAM,
                headers=[Header.string(CONTENT_TYPE, CONTENT_TYPE_JSON)],
                payload=payload,
            )
        )

    def _push(self, pushes: Sequence[_Push]) -> int:
        """Send events outside the lock; returns how many reached an open connection."""
        delivered = 0
        for subscription, shape, body in pushes:
            frame = encode_application_message(subscription.stream_id, shape, body, terminate=False)
            delivered += subscription.connection.send(frame)
        return delivered

    # ------------------------------------------------------------------ authorization

    def _authorize(
        self,
        component: str,
        service: str,
        operation: str,
        resource: str,
        policy: LookupPolicy,
        denial_message: str | None = None,
    ) -> None:
        detail = (
            f"Principal {component} is not authorized to perform "
            f"{service}:{MODEL_PREFIX}{operation} on resource {resource}"
        )
        with self._cond:
            configuration = self._components[component].store.snapshot()
            if authorization.check(
                configuration, service, MODEL_PREFIX + operation, resource, policy
            ):
                return
            message = denial_message or detail
            self._denied.append(
                Denial(component, service, MODEL_PREFIX + operation, resource, message)
            )
            self._cond.notify_all()
        logger.info("denied: %s", detail)
        raise _IpcError("UnauthorizedError", message)

    # ------------------------------------------------------------------ operations

    def _get_configuration(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # ConfigStoreIPCEventStreamAgent.GetConfigurationOperationHandler
        name = request.get("componentName") or connection.caller
        key_path = _key_path(request)
        with self._cond:
            component = self._components.get(str(name))
            found = component.store.find(key_path) if component is not None else None
        if found is None:
            raise _IpcError("ResourceNotFoundError", _KEY_NOT_FOUND)
        path, value = found
        if path and not isinstance(value, dict):
            value = {path[-1]: value}  # a leaf comes back as {leafName: value}
        return {"componentName": name, "value": value}, None

    def _update_configuration(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # ConfigStoreIPCEventStreamAgent.UpdateConfigurationOperationHandler. Simplified: the
        # timestamp must be present but is not compared with per-leaf modification times.
        if request.get("timestamp") is None:
            raise _invalid("Timestamp is required")
        value = request.get("valueToMerge")
        if value is None:
            raise _invalid("ValueToMerge is required")
        if not isinstance(value, dict):
            raise _invalid("ValueToMerge must be an object")
        key_path = _key_path(request)
        # The restricted-field check is case-sensitive in the nucleus, unlike the store itself.
        if (not key_path and "accessControl" in value) or key_path[:1] == ["accessControl"]:
            raise _invalid("Config update is not allowed for following fields [accessControl]")
        with self._cond:
            component = self._components[connection.caller]
            changed = component.store.merge_at(key_path, value)
            pushes = self._configuration_events(component.name, changed)
        self._push(pushes)
        return {}, None

    def _configuration_events(self, component: str, changed: Sequence[KeyPath]) -> list[_Push]:
        """One ConfigurationUpdateEvents per changed leaf under each subscriber's key path."""
        pushes: list[_Push] = []
        for path in changed:
            folded = tuple(k.lower() for k in path)
            for sub in self._subscriptions:
                if sub.kind != "configuration" or sub.target != component:
                    continue
                prefix = tuple(k.lower() for k in sub.key_path)
                if folded[: len(prefix)] == prefix:
                    event = {"componentName": component, "keyPath": list(path)}
                    pushes.append(
                        (sub, "ConfigurationUpdateEvents", {"configurationUpdateEvent": event})
                    )
        return pushes

    def _subscribe_to_configuration_update(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        name = request.get("componentName") or connection.caller
        key_path = _key_path(request)
        with self._cond:
            component = self._components.get(str(name))
            found = component.store.find(key_path) if component is not None else None
        if found is None:
            raise _IpcError("ResourceNotFoundError", _KEY_NOT_FOUND)
        subscription = _Subscription(
            "configuration",
            connection,
            0,
            connection.caller,
            target=str(name),
            key_path=found[0],
        )
        return {}, subscription

    def _subscribe_to_validate(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        subscription = _Subscription(
            "validate_configuration",
            connection,
            0,
            connection.caller,
            target=connection.caller,
        )
        return {}, subscription

    def _send_validity_report(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        report = request.get("configurationValidityReport")
        if not isinstance(report, dict):
            raise _invalid("configurationValidityReport is required")
        deployment_id = report.get("deploymentId")
        if deployment_id is None:
            raise _invalid(
                "Cannot accept configuration validity report, the deployment ID provided was null"
            )
        key = (connection.caller, str(deployment_id))
        with self._cond:
            if key not in self._pending_validations or self._pending_validations[key] is not None:
                raise _invalid("Validation request either timed out or was never made")
            self._pending_validations[key] = ValidityReport(
                status=str(report.get("status")),
                deployment_id=str(deployment_id),
                message=report.get("message"),
            )
            self._cond.notify_all()
        return {}, None

    def _update_state(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # LifecycleIPCEventStreamAgent.UpdateStateOperationHandler. Simplified: an unknown state
        # is an InvalidArgumentsError here; the Java server fails it with an unmodeled error.
        state = request.get("state")
        if state not in _REPORTED_STATES:
            raise _invalid(f"Invalid state {state!r}: expected one of {list(_REPORTED_STATES)}")
        with self._cond:
            self._states.append(StateReport(connection.caller, str(state)))
            self._cond.notify_all()
        return {}, None

    @staticmethod
    def _qos(request: Mapping[str, Any]) -> str:
        qos = request.get("qos")
        if qos is None:
            raise _invalid("QoS is required")
        if qos not in ("0", "1"):
            raise _invalid(f"Invalid QoS value: {qos}")
        return str(qos)

    @staticmethod
    def _iot_topic(request: Mapping[str, Any]) -> str:
        topic = request.get("topicName")
        if not isinstance(topic, str):
            raise _invalid("Topic is required")
        return topic

    def _publish_to_iot_core(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # MqttProxyIPCAgent.PublishToIoTCoreOperationHandler, then MqttClient.publish's checks
        # (size, wildcards, topic limits), which the agent reports as ServiceError.
        topic = self._iot_topic(request)
        self._authorize(
            connection.caller,
            MQTT_PROXY_SERVICE,
            "PublishToIoTCore",
            topic,
            LookupPolicy.MQTT_STYLE,
            denial_message="Not Authorized",
        )
        if request.get("payload") is None:
            raise _invalid("Payload is required")
        payload = _b64decode(request["payload"], "payload")
        qos = self._qos(request)
        problem = None
        if len(payload) > self.max_iot_core_message_bytes:
            problem = (
                f"The publishing message size {len(payload)} bytes exceeds the configured "
                f"limit of {self.max_iot_core_message_bytes} bytes"
            )
        elif has_mqtt_wildcard(topic):
            problem = (
                "The topic of publish request should not contain wildcard characters of '#' or '+'"
            )
        else:
            problem = _check_iot_topic(topic)
        if problem is not None:
            raise _IpcError("ServiceError", f"Publish to topic {topic} failed: {problem}")
        record = IotCorePublish(
            component=connection.caller,
            topic=topic,
            qos=qos,
            payload=payload,
            retain=bool(request.get("retain", False)),
            request=request,
        )
        with self._cond:
            self._iot_core_publishes.append(record)
            self._cond.notify_all()
        return {}, None

    def _subscribe_to_iot_core(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # MqttProxyIPCAgent.SubscribeToIoTCoreOperationHandler
        topic = self._iot_topic(request)
        self._authorize(
            connection.caller,
            MQTT_PROXY_SERVICE,
            "SubscribeToIoTCore",
            topic,
            LookupPolicy.MQTT_STYLE,
            denial_message="Not Authorized",
        )
        self._qos(request)
        problem = _check_iot_topic(topic)
        if problem is not None:
            raise _IpcError(
                "ServiceError", f"Subscribe to topic {topic} failed with error {problem}"
            )
        return {}, _Subscription("iot_core", connection, 0, connection.caller, topic=topic)

    def _publish_to_topic(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # PubSubIPCEventStreamAgent.PublishToTopicOperationHandler: authorize, then reject
        # wildcards, then fan out to every matching subscription.
        topic = request.get("topic")
        if not isinstance(topic, str):
            raise _invalid("Publish topic must not be null")
        self._authorize(
            connection.caller, PUBSUB_SERVICE, "PublishToTopic", topic, LookupPolicy.STANDARD
        )
        if any(char in topic for char in "+#*"):
            raise _invalid("Publish topic must not contain a wildcard.")
        message = request.get("publishMessage")
        binary = message.get("binaryMessage") if isinstance(message, dict) else None
        json_message = message.get("jsonMessage") if isinstance(message, dict) else None
        payload: bytes | dict[str, Any]
        if isinstance(binary, dict) and "message" in binary:
            payload = _b64decode(binary["message"], "binaryMessage.message")
        elif isinstance(json_message, dict) and isinstance(json_message.get("message"), dict):
            payload = json_message["message"]
        else:
            # Simplified: the Java server would deliver an empty message.
            raise _invalid("publishMessage needs binaryMessage or jsonMessage")
        with self._cond:
            self._local_publishes.append(
                LocalPublish(
                    component=connection.caller,
                    topic=topic,
                    binary_message=payload if isinstance(payload, bytes) else None,
                    json_message=payload if isinstance(payload, dict) else None,
                )
            )
            self._cond.notify_all()
        self._push(self._local_fan_out(connection.caller, topic, payload))
        return {}, None

    def _local_fan_out(
        self, source: str, topic: str, payload: bytes | Mapping[str, Any]
    ) -> list[_Push]:
        context = {"topic": topic}
        if isinstance(payload, bytes):
            body = {"binaryMessage": {"message": _b64encode(payload), "context": context}}
        else:
            body = {"jsonMessage": {"message": dict(payload), "context": context}}
        with self._cond:
            return [
                (sub, "SubscriptionResponseMessage", body)
                for sub in self._subscriptions
                if sub.kind == "local"
                and sub.topic is not None
                and local_filter_matches(sub.topic, topic)
                # RECEIVE_MESSAGES_FROM_OTHERS compares component names, not connections
                and not (sub.component == source and sub.receive_mode == _RECEIVE_FROM_OTHERS)
            ]

    def _subscribe_to_topic(
        self, connection: _Connection, request: dict[str, Any]
    ) -> tuple[dict[str, Any], _Subscription | None]:
        # PubSubIPCEventStreamAgent.SubscribeToTopicOperationHandler
        topic = request.get("topic")
        if not isinstance(topic, str) or not topic:
            raise _invalid("Subscribe topic must not be empty")
        self._authorize(
            connection.caller, PUBSUB_SERVICE, "SubscribeToTopic", topic, LookupPolicy.STANDARD
        )
        mode = request.get("receiveMode")
        if mode is None:
            mode = _RECEIVE_FROM_OTHERS if is_wildcard_filter(topic) else _RECEIVE_ALL
        elif mode not in (_RECEIVE_ALL, _RECEIVE_FROM_OTHERS):
            raise _invalid(f"Invalid receiveMode {mode!r}")
        subscription = _Subscription(
            "local", connection, 0, connection.caller, topic=topic, receive_mode=str(mode)
        )
        return {}, subscription
