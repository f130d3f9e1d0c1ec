"""AWS event-stream frames: the binary envelope under Greengrass IPC.

Owns encoding and decoding of single frames (prelude, headers of types 0–9, payload, two
CRC32s) and their size limits. Knows nothing about RPC semantics (message types, streams):
that is `tests.fake_nucleus.rpc`. Pure functions over bytes plus one blocking socket reader.

    offset 0   total_length  u32   whole frame, both CRCs included
    offset 4   headers_length u32
    offset 8   prelude_crc   u32   CRC32 of bytes 0..7
    offset 12  headers       (headers_length bytes)
               payload       (total_length - headers_length - 16 bytes)
    last 4     message_crc   u32   CRC32 of every byte before it

Sources: aws-c-event-stream `source/event_stream.c`, botocore `eventstream.py` (decoder).
"""

from __future__ import annotations

import enum
import socket
import struct
import uuid
import zlib
from dataclasses import dataclass

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADERS_SIZE",
    "MAX_HEADER_NAME_BYTES",
    "MAX_HEADER_VALUE_BYTES",
    "MAX_MESSAGE_SIZE",
    "PRELUDE_LENGTH",
    "ChecksumError",
    "FrameError",
    "Header",
    "HeaderType",
    "HeaderValue",
    "Message",
    "decode_message",
    "decode_prelude",
    "encode_message",
    "read_message",
]

PRELUDE_LENGTH = 12  # total_length, headers_length, prelude_crc
_TRAILER_LENGTH = 4  # message_crc
_OVERHEAD = PRELUDE_LENGTH + _TRAILER_LENGTH

# Current aws-c-event-stream ceiling (AWS_EVENT_STREAM_MAX_MESSAGE_SIZE: 16 MiB, then 256 MiB,
# now 24 MiB). A frame above it is rejected rather than buffered: a corrupt length field would
# otherwise make the reader allocate gigabytes.
MAX_MESSAGE_SIZE = 24 * 1024 * 1024
MAX_HEADERS_SIZE = 128 * 1024  # AWS_EVENT_STREAM_MAX_HEADERS_SIZE; botocore uses the same cap
MAX_HEADERS = 1024
MAX_HEADER_NAME_BYTES = 255  # the name length is one unsigned byte
MAX_HEADER_VALUE_BYTES = (
    32767  # string/byte_buf lengths are u16 but the C library caps at INT16_MAX
)


class FrameError(ValueError):
    """A frame is malformed: bad length, unknown header type, truncated data."""


class ChecksumError(FrameError):
    """A prelude or message CRC32 does not match the bytes it covers."""


class HeaderType(enum.IntEnum):
    """Header value types, numbered as on the wire."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTE_BUF = 6
    STRING = 7
    TIMESTAMP = 8  # int64 milliseconds since the Unix epoch
    UUID = 9


HeaderValue = bool | int | bytes | str | uuid.UUID

_INT_FORMATS: dict[HeaderType, str] = {
    HeaderType.BYTE: ">b",
    HeaderType.INT16: ">h",
    HeaderType.INT32: ">i",
    HeaderType.INT64: ">q",
    HeaderType.TIMESTAMP: ">q",
}


@dataclass(frozen=True, slots=True)
class Header:
    """One typed header. Build with the classmethods so value and type always agree."""

    name: str
    type: HeaderType
    value: HeaderValue

    @classmethod
    def bool_(cls, name: str, value: bool) -> Header:
        return cls(name, HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE, value)

    @classmethod
    def byte(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.BYTE, value)

    @classmethod
    def int16(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT16, value)

    @classmethod
    def int32(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT32, value)

    @classmethod
    def int64(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT64, value)

    @classmethod
    def byte_buf(cls, name: str, value: bytes) -> Header:
        return cls(name, HeaderType.BYTE_BUF, bytes(value))

    @classmethod
    def string(cls, name: str, value: str) -> Header:
        return cls(name, HeaderType.STRING, value)

    @classmethod
    def timestamp(cls, name: str, millis_since_epoch: int) -> Header:
        return cls(name, HeaderType.TIMESTAMP, millis_since_epoch)

    @classmethod
    def uuid(cls, name: str, value: uuid.UUID) -> Header:
        return cls(name, HeaderType.UUID, value)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded frame: headers in wire order and the raw payload."""

    headers: tuple[Header, ...]
    payload: bytes = b""

    def get(self, name: str) -> HeaderValue | None:
        """Value of the first header called `name` (case-insensitive, as the SDK looks them up)."""
        wanted = name.lower()
        for header in self.headers:
            if header.name.lower() == wanted:
                return header.value
        return None


def _encode_header(header: Header) -> bytes:
    name = header.name.encode("utf-8")
    if not 1 <= len(name) <= MAX_HEADER_NAME_BYTES:
        msg = f"header {header.name!r}: name must be 1..{MAX_HEADER_NAME_BYTES} UTF-8 bytes"
        raise FrameError(msg)
    head = struct.pack(">B", len(name)) + name + struct.pack(">B", header.type)
    value = header.value
    kind = header.type
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        if value is not (kind is HeaderType.BOOL_TRUE):
            msg = f"header {header.name!r}: type {kind.name} does not match value {value!r}"
            raise FrameError(msg)
        return head
    if kind in _INT_FORMATS:
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"header {header.name!r}: {kind.name} needs an int, got {type(value).__name__}"
            raise FrameError(msg)
        try:
            return head + struct.pack(_INT_FORMATS[kind], value)
        except struct.error as exc:
            msg = f"header {header.name!r}: {value} does not fit {kind.name}"
            raise FrameError(msg) from exc
    if kind in (HeaderType.BYTE_BUF, HeaderType.STRING):
        if kind is HeaderType.STRING and isinstance(value, str):
            raw = value.encode("utf-8")
        elif kind is HeaderType.BYTE_BUF and isinstance(value, bytes):
            raw = value
        else:
            msg = f"header {header.name!r}: {kind.name} got {type(value).__name__}"
            raise FrameError(msg)
        if len(raw) > MAX_HEADER_VALUE_BYTES:
            msg = (
                f"header {header.name!r}: value is {len(raw)} bytes, limit {MAX_HEADER_VALUE_BYTES}"
            )
            raise FrameError(msg)
        return head + struct.pack(">H", len(raw)) + raw
    if kind is HeaderType.UUID and isinstance(value, uuid.UUID):
        return head + value.bytes
    msg = f"header {header.name!r}: cannot encode {kind!r} with value {value!r}"
    raise FrameError(msg)


def encode_message(message: Message) -> bytes:
    """Serialise one frame, computing both CRCs.

    Raises:
        FrameError: a header is out of range, or the frame exceeds the size limits.
    """
    if len(message.headers) > MAX_HEADERS:
        msg = f"{len(message.headers)} headers, limit {MAX_HEADERS}"
        raise FrameError(msg)
    headers = b"".join(_encode_header(h) for h in message.headers)
    if len(headers) > MAX_HEADERS_SIZE:
        msg = f"headers take {len(headers)} bytes, limit {MAX_HEADERS_SIZE}"
        raise FrameError(msg)
    total = _OVERHEAD + len(headers) + len(message.payload)
    if total > MAX_MESSAGE_SIZE:
        msg = f"frame would be {total} bytes, limit {MAX_MESSAGE_SIZE}"
        raise FrameError(msg)
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + message.payload
    return body + struct.pack(">I", zlib.crc32(body))


def decode_prelude(prelude: bytes) -> tuple[int, int]:
    """Check the 12-byte prelude and return (total_length, headers_length).

    Raises:
        ChecksumError: the prelude CRC does not match.
        FrameError: the lengths are impossible or above the limits.
    """
    if len(prelude) != PRELUDE_LENGTH:
        msg = f"prelude is {len(prelude)} bytes, expected {PRELUDE_LENGTH}"
        raise FrameError(msg)
    total, headers_length, crc = struct.unpack(">III", prelude)
    actual = zlib.crc32(prelude[:8])
    if crc != actual:
        msg = f"prelude CRC mismatch: frame says {crc:#010x}, bytes give {actual:#010x}"
        raise ChecksumError(msg)
    if total < _OVERHEAD or total > MAX_MESSAGE_SIZE:
        msg = f"total_length {total} outside {_OVERHEAD}..{MAX_MESSAGE_SIZE}"
        raise FrameError(msg)
    if headers_length > total - _OVERHEAD or headers_length > MAX_HEADERS_SIZE:
        msg = f"headers_length {headers_length} does not fit total_length {total}"
        raise FrameError(msg)
    return total, headers_length


def _decode_headers(data: bytes) -> tuple[Header, ...]:
    headers: list[Header] = []
    pos = 0
    try:
        while pos < len(data):
            name_len = data[pos]
            pos += 1
            if name_len == 0:
                msg = f"header at offset {pos - 1} has an empty name"
                raise FrameError(msg)
            name = data[pos : pos + name_len].decode("utf-8")
            pos += name_len
            try:
                kind = HeaderType(data[pos])
            except ValueError as exc:
                msg = f"header {name!r}: unknown type {data[pos]}"
                raise FrameError(msg) from exc
            pos += 1
            value: HeaderValue
            if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
                value = kind is HeaderType.BOOL_TRUE
            elif kind in _INT_FORMATS:
                fmt = _INT_FORMATS[kind]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += struct.calcsize(fmt)
            elif kind in (HeaderType.BYTE_BUF, HeaderType.STRING):
                (length,) = struct.unpack_from(">H", data, pos)
                pos += 2
                raw = data[pos : pos + length]
                if len(raw) != length:
                    msg = f"header {name!r}: value runs past the headers block"
                    raise FrameError(msg)
                pos += length
                value = raw.decode("utf-8") if kind is HeaderType.STRING else bytes(raw)
            else:  # HeaderType.UUID
                raw = data[pos : pos + 16]
                if len(raw) != 16:
                    msg = f"header {name!r}: UUID runs past the headers block"
                    raise FrameError(msg)
                pos += 16
                value = uuid.UUID(bytes=bytes(raw))
            headers.append(Header(name, kind, value))
            if len(headers) > MAX_HEADERS:
                msg = f"more than {MAX_HEADERS} headers"
                raise FrameError(msg)
    except (struct.error, IndexError) as exc:
        msg = f"headers block truncated at offset {pos}"
        raise FrameError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"header name or string value is not UTF-8 near offset {pos}"
        raise FrameError(msg) from exc
    if pos != len(data):
        msg = f"headers block is {len(data)} bytes but headers end at {pos}"
        raise FrameError(msg)
    return tuple(headers)


def decode_message(frame: bytes) -> Message:
    """Decode exactly one complete frame.

    Raises:
        ChecksumError: a CRC does not match.
        FrameError: the frame is malformed or its length disagrees with `len(frame)`.
    """
    total, headers_length = decode_prelude(frame[:PRELUDE_LENGTH])
    if len(frame) != total:
        msg = f"frame is {len(frame)} bytes but its prelude says {total}"
        raise FrameError(msg)
    (crc,) = struct.unpack(">I", frame[-_TRAILER_LENGTH:])
    actual = zlib.crc32(frame[:-_TRAILER_LENGTH])
    if crc != actual:
        msg = f"message CRC mismatch: frame says {crc:#010x}, bytes give {actual:#010x}"
        raise ChecksumError(msg)
    headers_end = PRELUDE_LENGTH + headers_length
    return Message(
        headers=_decode_headers(frame[PRELUDE_LENGTH:headers_end]),
        payload=bytes(frame[headers_end:-_TRAILER_LENGTH]),
    )


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    """Read `count` bytes; None on a clean EOF before the first byte."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    received = 0
    while received < count:
        n = sock.recv_into(view[received:])
        if n == 0:
            if received == 0:
                return None
            msg = f"connection closed mid-frame after {received} of {count} bytes"
            raise FrameError(msg)
        received += n
    return bytes(buffer)


def read_message(sock: socket.socket) -> Message | None:
    """Block until one frame arrives on `sock`; None when the peer closed between frames.

    The prelude is checked before the rest is read, so a corrupt length never drives a huge read.

    Raises:
        FrameError: malformed frame or EOF inside a frame (ChecksumError for CRC failures).
        OSError: the socket failed.
    """
    prelude = _recv_exactly(sock, PRELUDE_LENGTH)
    if prelude is None:
        return None
    total, _ = decode_prelude(prelude)
    rest = _recv_exactly(sock, total - PRELUDE_LENGTH)
    if rest is None:
        msg = "connection closed after a frame prelude"
        raise FrameError(msg)
    return decode_message(prelude + rest)
