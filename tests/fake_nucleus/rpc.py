"""Event-stream RPC: message types, flags and stream ids on top of `eventstream` frames.

Owns the three RPC headers every frame carries (`:message-type`, `:message-flags`,
`:stream-id`) and the JSON application envelope (`:content-type`, `service-model-type`).
Knows no Greengrass operation; `server.py` does. Pure functions over frames.

Sources: aws-c-event-stream `source/event_stream_rpc*.c`; awsiotsdk `awsiot/eventstreamrpc.py`;
aws-iot-device-sdk-java-v2 `ServiceOperationMappingContinuationHandler.java` (the nucleus side).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.fake_nucleus.eventstream import (
    FrameError,
    Header,
    HeaderType,
    Message,
    encode_message,
)

__all__ = [
    "CONTENT_TYPE",
    "CONTENT_TYPE_JSON",
    "MODEL_PREFIX",
    "OPERATION",
    "SERVICE_MODEL_TYPE",
    "VERSION",
    "VERSION_STRING",
    "MessageFlag",
    "MessageType",
    "ProtocolError",
    "RpcFrame",
    "encode_application_error",
    "encode_application_message",
    "encode_rpc",
    "parse_json_object",
    "to_rpc_frame",
]

MESSAGE_TYPE = ":message-type"
MESSAGE_FLAGS = ":message-flags"
STREAM_ID = ":stream-id"
VERSION = ":version"
CONTENT_TYPE = ":content-type"
SERVICE_MODEL_TYPE = "service-model-type"
OPERATION = "operation"

VERSION_STRING = "0.1.0"  # awsiot.eventstreamrpc.VERSION_STRING; the Java server requires equality
CONTENT_TYPE_JSON = "application/json"
MODEL_PREFIX = "aws.greengrass#"


class ProtocolError(FrameError):
    """A frame is well formed but breaks the RPC protocol (missing or wrong RPC headers)."""


class MessageType(enum.IntEnum):
    """`:message-type` values (awscrt.eventstream.rpc.MessageType)."""

    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


class MessageFlag(enum.IntFlag):
    """`:message-flags` bits (awscrt.eventstream.rpc.MessageFlag)."""

    NONE = 0
    CONNECTION_ACCEPTED = 0x1
    TERMINATE_STREAM = 0x2


_RPC_HEADERS = frozenset({MESSAGE_TYPE, MESSAGE_FLAGS, STREAM_ID})


@dataclass(frozen=True, slots=True)
class RpcFrame:
    """A frame seen through the RPC layer; `headers` excludes the three RPC headers."""

    message_type: MessageType
    flags: MessageFlag
    stream_id: int
    headers: tuple[Header, ...]
    payload: bytes

    def string_header(self, name: str) -> str | None:
        """Value of a string header, matched case-insensitively as the SDK does."""
        wanted = name.lower()
        for header in self.headers:
            if header.name.lower() == wanted and isinstance(header.value, str):
                return header.value
        return None

    @property
    def terminates_stream(self) -> bool:
        return bool(self.flags & MessageFlag.TERMINATE_STREAM)


def _int32_header(message: Message, name: str) -> int:
    for header in message.headers:
        if header.name == name:
            if header.type is not HeaderType.INT32 or not isinstance(header.value, int):
                msg = f"RPC header {name} must be int32, got {header.type.name}"
                raise ProtocolError(msg)
            return header.value
    msg = f"RPC header {name} is missing"
    raise ProtocolError(msg)


def to_rpc_frame(message: Message) -> RpcFrame:
    """Interpret a decoded frame as an RPC message.

    Raises:
        ProtocolError: an RPC header is missing, mistyped or out of range.
    """
    raw_type = _int32_header(message, MESSAGE_TYPE)
    try:
        message_type = MessageType(raw_type)
    except ValueError as exc:
        msg = f"unknown :message-type {raw_type}"
        raise ProtocolError(msg) from exc
    flags = MessageFlag(_int32_header(message, MESSAGE_FLAGS) & 0x3)
    stream_id = _int32_header(message, STREAM_ID)
    if stream_id < 0:
        msg = f"negative :stream-id {stream_id}"
        raise ProtocolError(msg)
    headers = tuple(h for h in message.headers if h.name not in _RPC_HEADERS)
    return RpcFrame(message_type, flags, stream_id, headers, message.payload)


def encode_rpc(
    message_type: MessageType,
    *,
    stream_id: int = 0,
    flags: MessageFlag = MessageFlag.NONE,
    headers: Sequence[Header] = (),
    payload: bytes = b"",
) -> bytes:
    """Encode one RPC frame; the RPC headers follow the application ones, as the C library does."""
    rpc_headers = (
        Header.int32(MESSAGE_TYPE, int(message_type)),
        Header.int32(MESSAGE_FLAGS, int(flags)),
        Header.int32(STREAM_ID, stream_id),
    )
    return encode_message(Message((*headers, *rpc_headers), payload))


def _json_headers(model_type: str) -> tuple[Header, Header]:
    return (
        Header.string(CONTENT_TYPE, CONTENT_TYPE_JSON),
        Header.string(SERVICE_MODEL_TYPE, MODEL_PREFIX + model_type),
    )


def encode_application_message(
    stream_id: int, model_type: str, body: Mapping[str, Any], *, terminate: bool
) -> bytes:
    """A JSON APPLICATION_MESSAGE of shape `aws.greengrass#<model_type>` on `stream_id`."""
    return encode_rpc(
        MessageType.APPLICATION_MESSAGE,
        stream_id=stream_id,
        flags=MessageFlag.TERMINATE_STREAM if terminate else MessageFlag.NONE,
        headers=_json_headers(model_type),
        payload=json.dumps(body).encode("utf-8"),
    )


def encode_application_error(stream_id: int, model_type: str, body: Mapping[str, Any]) -> bytes:
    """A modeled APPLICATION_ERROR; it always terminates the stream (Java server behaviour)."""
    return encode_rpc(
        MessageType.APPLICATION_ERROR,
        stream_id=stream_id,
        flags=MessageFlag.TERMINATE_STREAM,
        headers=_json_headers(model_type),
        payload=json.dumps(body).encode("utf-8"),
    )


def parse_json_object(payload: bytes) -> dict[str, Any]:
    """Decode a JSON object payload; an empty payload is `{}` (the SDK sends that for no fields).

    Raises:
        ProtocolError: the payload is not a UTF-8 JSON object.
    """
    if not payload:
        return {}
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"payload is not JSON: {exc}"
        raise ProtocolError(msg) from exc
    if not isinstance(value, dict):
        msg = f"payload is JSON {type(value).__name__}, expected an object"
        raise ProtocolError(msg)
    return value
