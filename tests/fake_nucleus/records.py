"""What the fake nucleus saw: immutable records that tests assert on.

Owns the public value types returned by `FakeNucleus` (`server.py`). No behaviour, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Denial",
    "FakeNucleusError",
    "IotCorePublish",
    "LocalPublish",
    "StateReport",
    "SubscriptionKind",
    "ValidityReport",
]

SubscriptionKind = Literal["iot_core", "local", "configuration", "validate_configuration"]
"""iot_core: SubscribeToIoTCore; local: SubscribeToTopic; configuration:
SubscribeToConfigurationUpdate; validate_configuration: SubscribeToValidateConfigurationUpdates."""


class FakeNucleusError(RuntimeError):
    """The test drove the fake into a state the real nucleus cannot be in (e.g. no validator)."""


@dataclass(frozen=True, slots=True)
class IotCorePublish:
    """An accepted PublishToIoTCore (the nucleus spooled it; nothing is sent to a cloud)."""

    component: str
    topic: str
    qos: str  # "0" or "1", as on the wire
    payload: bytes  # base64-decoded
    retain: bool
    request: Mapping[str, Any]  # the raw JSON request, for MQTT 5 fields not lifted out


@dataclass(frozen=True, slots=True)
class LocalPublish:
    """An accepted PublishToTopic from a connected component; exactly one message is set."""

    component: str
    topic: str
    binary_message: bytes | None
    json_message: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StateReport:
    """An UpdateState call."""

    component: str
    state: str  # "RUNNING" or "ERRORED"


@dataclass(frozen=True, slots=True)
class Denial:
    """An operation refused by `accessControl` (the client got UnauthorizedError)."""

    component: str
    service: str  # e.g. "aws.greengrass.ipc.mqttproxy"
    operation: str  # e.g. "aws.greengrass#PublishToIoTCore"
    resource: str
    message: str  # the error message sent to the client


@dataclass(frozen=True, slots=True)
class ValidityReport:
    """A component's SendConfigurationValidityReport answer to a validation request."""

    status: str  # "ACCEPTED" or "REJECTED"
    deployment_id: str
    message: str | None
