"""The wire format of requests and replies, in the shapes of LFV's DetectAnomalies API. Pure.

Request (JSON; exactly one image source):

    {"RequestId": "line3-000142",
     "ImagePath": "/data/images/part-142.png"}              # a file under an image root
    {"RequestId": "r2", "Body": "<base64>", "ContentType": "image/jpeg"}   # as DetectAnomalies
    {"RequestId": "r3", "Frame": {"Width": 640, "Height": 480, "Encoding": "rgb8", "Data": "<base64>"}}

Optional: `"IncludeMask": false` (omit the mask in this reply), `"Metadata": {...}` (echoed
back untouched: camera id, serial number, …). A payload that is not JSON but is an image
(JPEG, PNG, …) is treated as a `Body` without a `RequestId`.

Success reply:

    {"SchemaVersion": "1", "RequestId": "line3-000142",
     "DetectAnomalyResult": {"Source": {"Type": "direct"}, "IsAnomalous": true,
                             "Confidence": 0.93, "Anomalies": [...], "AnomalyMask": "<base64 PNG>"},
     "Model": {"Name": "...", "Version": "sha256:..."}, "Threshold": 0.5, "Score": 0.93,
     "Timestamp": "2026-11-28T17:00:00.123Z", "TimingsMs": {"decode": 6.1, ..., "total": 150.2}}

Error reply: `{"SchemaVersion": "1", "RequestId": ..., "Error": {"Code": ..., "Message": ...},
"Timestamp": ...}` with a code from `ERROR_CODES`. `RequestId` is null when the request had none.
"""

from __future__ import annotations

import binascii
import json
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pybase64

from lfv_edge.errors import InputError
from lfv_edge.inspection.imaging import (
    IMAGE_TOO_LARGE,
    IMAGE_TOO_SMALL,
    IMAGE_UNREADABLE,
    sniff_size,
)
from lfv_edge.inspection.pipeline import EncodedImage, ImageFile, ImageSource, Inspection, RawFrame

SCHEMA_VERSION = "1"
BAD_REQUEST = "BadRequest"
PATH_REFUSED = "PathRefused"
PAYLOAD_TOO_LARGE = "PayloadTooLarge"
BUSY = "Busy"
INFERENCE_FAILED = "InferenceFailed"
INTERNAL_ERROR = "InternalError"
NO_FRAME = "NoFrame"  # capture: a trigger found no frame (camera not connected)
INTERRUPTED = "Interrupted"  # capture: a hot-folder file was in flight when the process ended
# Every code a reply can carry, with what it means (documented in the README).
ERROR_CODES = {
    BAD_REQUEST: "the payload is not a valid request (JSON shape, field types, image source)",
    IMAGE_UNREADABLE: "the image cannot be read or decoded",
    PATH_REFUSED: "ImagePath is outside every configured image root (or none is configured)",
    PAYLOAD_TOO_LARGE: "the payload is larger than limits.maxPayloadBytes",
    IMAGE_TOO_LARGE: "the image is larger than limits.maxImageSide pixels per side",
    IMAGE_TOO_SMALL: "the image is smaller than limits.minImageSide pixels per side",
    BUSY: "the request queue is full; the request was not processed (retry later)",
    INFERENCE_FAILED: "the model failed on this image",
    INTERNAL_ERROR: "an unexpected error; the service keeps running",
    NO_FRAME: "a capture trigger found no frame to inspect (the camera is not connected)",
    INTERRUPTED: "a hot-folder file was in flight when the process ended; it is not inspected again",
}
CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/bmp", "image/gif", "image/webp", "image/tiff"}
)
_REQUEST_KEYS = frozenset(
    {"RequestId", "ImagePath", "Body", "ContentType", "Frame", "IncludeMask", "Metadata"}
)
_FRAME_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
_MAX_REQUEST_ID = 256
_DEEP_SCAN_BYTES = 256 << 10  # bounds the pure-Python scan of a too-deep payload (~0.1 s)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# A base64 `Body` or `Frame.Data` is nearly all of a request (460 KB for a 1080p JPEG, 4 MB for
# a 1000×1000 frame). json.loads copies it into a str and b64decode copies that into ASCII
# bytes before decoding: 13 ms of CPU for a 4 MB frame, 1.5 ms for a 1080p JPEG (measured).
# So a large one is cut out of the payload, the rest is parsed as usual, and the value is
# decoded straight from a memoryview of the payload (with pybase64: 1.6 ms and 0.2 ms for
# the JSON and the base64 together). The placeholder left
# in its place carries a per-process random token and must come back from json.loads exactly
# where the value was, so a payload built to confuse the cut is simply parsed in full.
_CUT_MIN_BYTES = 64 << 10
_CUT_TOKEN = secrets.token_hex(8)
_CUT_MARK = "\0lfv-cut-" + _CUT_TOKEN  # what json.loads makes of _CUT_JSON
_CUT_JSON = b"\\u0000lfv-cut-" + _CUT_TOKEN.encode()
_CUT_FIELDS = ((b'"Body"', "Body"), (b'"Data"', "Frame.Data"))
_CUT_TRIES = 4  # occurrences of the key looked at before parsing the payload in full
_JSON_SPACE_BYTES = b" \t\n\r"


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request."""

    request_id: str | None
    source: ImageSource
    include_mask: bool = True
    metadata: Mapping[str, object] | None = None


def request_id_of(payload: bytes) -> str | None:
    """Best-effort `RequestId` of a payload that failed to parse, so its error reply carries it."""
    try:
        body = json.loads(payload)
    except RecursionError:  # valid JSON nested deeper than json.loads goes: scan the top level
        return _top_level_request_id(payload[:_DEEP_SCAN_BYTES])
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, dict):
        value = body.get("RequestId")
        if isinstance(value, str) and len(value) <= _MAX_REQUEST_ID:
            return value
    return None


def _top_level_request_id(payload: bytes) -> str | None:
    """The `RequestId` string among the top-level keys of a JSON object, read without recursion.

    Only for payloads `json.loads` gives up on because of their depth: nested values are
    skipped by counting brackets. None when the object is malformed before the key is found.
    """
    try:
        text = payload.decode("utf-8")
        index = _skip_space(text, 0)
        if text[index : index + 1] != "{":
            return None
        index = _skip_space(text, index + 1)
        while text[index : index + 1] == '"':
            key, index = _DECODER.raw_decode(text, index)
            index = _skip_space(text, index)
            if text[index : index + 1] != ":":
                return None
            index = _skip_space(text, index + 1)
            if key == "RequestId":
                if text[index : index + 1] != '"':
                    return None
                value, _ = _DECODER.raw_decode(text, index)
                return (
                    value if isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID else None
                )
            index = _skip_space(text, _skip_value(text, index))
            if text[index : index + 1] != ",":
                return None
            index = _skip_space(text, index + 1)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return None
    return None


def _skip_space(text: str, index: int) -> int:
    match = _JSON_SPACE.match(text, index)
    return match.end() if match else index


def _skip_value(text: str, index: int) -> int:
    """The index just after the JSON value starting at `index`, brackets counted, not recursed."""
    depth = 0
    while index < len(text):
        char = text[index]
        if char == '"':
            _, index = _DECODER.raw_decode(text, index)  # a string: no recursion
            if depth == 0:
                return index
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return index  # the end of the enclosing object: a scalar value ended here
            depth -= 1
            if depth == 0:
                return index + 1
        elif char == "," and depth == 0:
            return index
        index += 1
    msg = "unterminated value"
    raise ValueError(msg)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: would come back as Infinity, which is not JSON
        msg = f"number {text} is out of range"
        raise ValueError(msg)
    return value


def _no_constant(name: str) -> object:
    # NaN and Infinity are accepted by Python's json but are not JSON: echoed in Metadata they
    # would make the reply unreadable for strict parsers (JavaScript, Go, AWS IoT rules).
    msg = f"{name} is not a JSON value"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class _Cut:
    """A large base64 value cut out of a payload before parsing (see _CUT_MIN_BYTES)."""

    field: str  # "Body" or "Frame.Data"
    data: memoryview


def _parse_json(payload: bytes) -> object:
    return json.loads(payload, parse_float=_finite_float, parse_constant=_no_constant)


def _skip_space_bytes(payload: bytes, index: int) -> int:
    while index < len(payload) and payload[index] in _JSON_SPACE_BYTES:
        index += 1
    return index


def _large_string_span(payload: bytes, key: bytes, start: int) -> tuple[int, int] | None:
    """(start, end) of the content of the string after `key` `:` at `start`, if large and plain."""
    index = _skip_space_bytes(payload, start + len(key))
    if payload[index : index + 1] != b":":
        return None
    index = _skip_space_bytes(payload, index + 1)
    if payload[index : index + 1] != b'"':
        return None
    begin = index + 1
    end = payload.find(b'"', begin)
    if end - begin < _CUT_MIN_BYTES or payload.find(b"\\", begin, end) >= 0:
        return None  # small, unterminated, or with escapes: json.loads handles it
    return begin, end


def _field_value(body: object, field: str) -> object:
    if not isinstance(body, dict):
        return None
    if field == "Body":
        return body.get("Body")
    frame = body.get("Frame")
    return frame.get("Data") if isinstance(frame, dict) else None


def _load_request_json(payload: bytes) -> tuple[object, _Cut | None]:
    """The parsed payload, with a large base64 `Body` or `Frame.Data` cut out when there is one.

    Raises what json.loads raises for the whole payload.
    """
    if len(payload) >= _CUT_MIN_BYTES:
        # Keys come before their large value: look for them in the first _CUT_MIN_BYTES only
        # (a search through all of a 4 MB payload costs 2.5 ms).
        for key, field in _CUT_FIELDS:
            found = payload.find(key, 0, _CUT_MIN_BYTES)
            for _ in range(_CUT_TRIES):
                if found < 0:
                    break
                span = _large_string_span(payload, key, found)
                if span is not None:
                    begin, end = span
                    try:
                        body = _parse_json(b"".join((payload[:begin], _CUT_JSON, payload[end:])))
                    except (ValueError, RecursionError):
                        return _parse_json(payload), None  # its own error, not the cut's
                    if _field_value(body, field) == _CUT_MARK:
                        return body, _Cut(field, memoryview(payload)[begin:end])
                    return _parse_json(payload), None
                found = payload.find(key, found + 1, _CUT_MIN_BYTES)
    return _parse_json(payload), None


def _b64(value: object, field: str, cut: _Cut | None = None) -> bytes:
    data: str | memoryview
    if cut is not None and cut.field == field and value == _CUT_MARK:
        data = cut.data
    elif isinstance(value, str):
        data = value
    else:
        raise InputError(BAD_REQUEST, f"{field} must be a base64 string")
    try:
        # pybase64 (SIMD) is 5× faster than binascii (1.8 against 9.9 ms for a 4 MB frame) and
        # as strict: only the alphabet and correct padding, nothing after it.
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(BAD_REQUEST, f"{field} is not valid base64") from exc


def _image_path(value: object, roots: Sequence[Path]) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise InputError(BAD_REQUEST, "ImagePath must be a non-empty string")
    if not roots:
        raise InputError(
            PATH_REFUSED, "ImagePath is refused: no image root is configured (--image-root)"
        )
    given = Path(value)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)  # follows every symlink and ".."
        except (OSError, RuntimeError):
            continue
        for root in roots:
            try:
                real_root = root.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if resolved.is_relative_to(real_root):
                if not resolved.is_file():
                    raise InputError(IMAGE_UNREADABLE, f"ImagePath {value} is not a file")
                return resolved
        raise InputError(PATH_REFUSED, f"ImagePath {value} is outside the configured image roots")
    raise InputError(IMAGE_UNREADABLE, f"ImagePath {value} does not exist")


def _frame(value: object, cut: _Cut | None = None) -> RawFrame:
    if not isinstance(value, dict):
        raise InputError(BAD_REQUEST, "Frame must be an object with Width, Height, Encoding, Data")
    unknown = sorted(set(value) - {"Width", "Height", "Encoding", "Data"})
    if unknown:
        raise InputError(BAD_REQUEST, f"Frame has unknown key(s) {unknown}")
    width, height, encoding = value.get("Width"), value.get("Height"), value.get("Encoding")
    for name, number in (("Width", width), ("Height", height)):
        if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
            raise InputError(BAD_REQUEST, f"Frame.{name} must be a positive integer")
    if encoding not in _FRAME_CHANNELS:
        raise InputError(BAD_REQUEST, f"Frame.Encoding must be one of {sorted(_FRAME_CHANNELS)}")
    assert isinstance(width, int) and isinstance(height, int)  # noqa: S101, PT018 - checked above
    channels = _FRAME_CHANNELS[str(encoding)]
    expected = width * height * channels
    if expected > 4096 * 4096 * 3:
        raise InputError(IMAGE_TOO_LARGE, f"Frame {width}×{height} is larger than 4096×4096")
    data = _b64(value.get("Data"), "Frame.Data", cut)
    if len(data) != expected:
        raise InputError(
            BAD_REQUEST,
            f"Frame.Data has {len(data)} bytes; {width}×{height} {encoding} needs {expected}",
        )
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(
        (height, width, channels) if channels > 1 else (height, width)
    )
    return RawFrame(pixels=pixels, order="bgr" if encoding == "bgr8" else "rgb")


def parse_request(
    payload: bytes, *, image_roots: Sequence[Path], max_payload_bytes: int
) -> Request:
    """Parse a request payload (JSON, or a bare encoded image).

    Raises:
        InputError: with a code from `ERROR_CODES`.
    """
    if len(payload) > max_payload_bytes:
        raise InputError(
            PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes; the limit is {max_payload_bytes}"
        )
    if payload.lstrip()[:1] != b"{":
        if sniff_size(payload) is not None:
            return Request(request_id=None, source=EncodedImage(payload))
        raise InputError(BAD_REQUEST, "payload is neither a JSON request nor an image")
    try:
        body, cut = _load_request_json(payload)
    except RecursionError as exc:
        raise InputError(BAD_REQUEST, "payload JSON is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(BAD_REQUEST, f"payload is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InputError(BAD_REQUEST, "the request must be a JSON object")
    request_id = body.get("RequestId")
    if request_id is not None and (
        not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_REQUEST_ID
    ):
        raise InputError(
            BAD_REQUEST, f"RequestId must be a string of 1–{_MAX_REQUEST_ID} characters"
        )
    unknown = sorted(set(body) - _REQUEST_KEYS)
    if unknown:
        raise InputError(BAD_REQUEST, f"unknown key(s) {unknown} (known: {sorted(_REQUEST_KEYS)})")
    sources = [key for key in ("ImagePath", "Body", "Frame") if key in body]
    if len(sources) != 1:
        raise InputError(BAD_REQUEST, "a request needs exactly one of ImagePath, Body, Frame")
    include_mask = body.get("IncludeMask", True)
    if not isinstance(include_mask, bool):
        raise InputError(BAD_REQUEST, "IncludeMask must be true or false")
    metadata = body.get("Metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(BAD_REQUEST, "Metadata must be a JSON object")
    source: ImageSource
    if sources[0] == "ImagePath":
        source = ImageFile(_image_path(body["ImagePath"], image_roots))
    elif sources[0] == "Body":
        content_type = body.get("ContentType")
        if content_type is not None and str(content_type).lower() not in CONTENT_TYPES:
            raise InputError(
                BAD_REQUEST, f"ContentType {content_type!r} is not one of {sorted(CONTENT_TYPES)}"
            )
        source = EncodedImage(_b64(body["Body"], "Body", cut))
    else:
        source = _frame(body["Frame"], cut)
    return Request(
        request_id=request_id, source=source, include_mask=include_mask, metadata=metadata
    )


def utc_timestamp(now: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a Z."""
    moment = (
        datetime.now(tz=timezone.utc)
        if now is None
        else datetime.fromtimestamp(now, tz=timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Which model produced a verdict."""

    name: str
    version: str
    arn: str = ""  # LFV's model ARN where one is configured (model.lookoutVisionModelArn)


def encode_verdict(
    inspection: Inspection,
    model: ModelIdentity,
    *,
    head: Mapping[str, object],
    tail: Mapping[str, object] | None = None,
    include_mask: bool = True,
    timestamp: bool = True,
    max_bytes: int | None = None,
) -> bytes:
    """A verdict as JSON: the one encoder of MQTT/IPC replies, the agent's published verdicts
    and `infer`'s lines.

    `head` comes first (`SchemaVersion` and `RequestId`, or `Image`), then the LFV result,
    `Model`, `Threshold`, `Score`, `Timestamp`, `TimingsMs`, then `tail` (`Metadata`,
    identity fields, …). Over `max_bytes`, the mask goes first, then `Metadata` (each
    replaced by a note saying why), so a route's size limit never swallows the reply.
    """
    verdict = inspection.verdict
    with_mask = include_mask and verdict.mask is not None
    identity: dict[str, object] = {"Name": model.name, "Version": model.version}
    if model.arn:
        identity["Arn"] = model.arn
    body: dict[str, object] = {
        **head,
        "DetectAnomalyResult": verdict.to_lfv(include_mask=with_mask),
        "Model": identity,
        "Threshold": verdict.threshold,
        "Score": verdict.score,
    }
    if timestamp:
        body["Timestamp"] = utc_timestamp()
    body["TimingsMs"] = inspection.timings.to_dict()
    if verdict.mask is not None and not with_mask:
        body["AnomalyMaskOmitted"] = "not requested"
    if tail:
        body.update(tail)
    encoded = _dumps(body)
    if max_bytes is not None and len(encoded) > max_bytes and with_mask:
        body["DetectAnomalyResult"] = verdict.to_lfv(include_mask=False)
        body["AnomalyMaskOmitted"] = f"the reply would exceed {max_bytes} bytes"
        encoded = _dumps(body)
    if max_bytes is not None and len(encoded) > max_bytes and "Metadata" in body:
        # Echoed metadata can outgrow the request (JSON escapes non-ASCII as 6-byte \uXXXX):
        # a reply the route refuses would be no reply at all.
        del body["Metadata"]
        body["MetadataOmitted"] = f"the reply would exceed {max_bytes} bytes"
        encoded = _dumps(body)
    return encoded


def encode_result(
    request: Request,
    inspection: Inspection,
    model: ModelIdentity,
    *,
    include_mask: bool = True,
    max_bytes: int | None = None,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """The success reply to a request (MQTT, IPC)."""
    tail: dict[str, object] = {}
    if request.metadata is not None:
        tail["Metadata"] = request.metadata
    if extra:
        tail.update(extra)
    return encode_verdict(
        inspection,
        model,
        head={"SchemaVersion": SCHEMA_VERSION, "RequestId": request.request_id},
        tail=tail,
        include_mask=include_mask and request.include_mask,
        max_bytes=max_bytes,
    )


def _dumps(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def encode_error(
    request_id: str | None, code: str, message: str, *, extra: Mapping[str, object] | None = None
) -> bytes:
    """An error reply with a stable code (`extra`: more top-level fields, e.g. `Capture`)."""
    body: dict[str, object] = {
        "SchemaVersion": SCHEMA_VERSION,
        "RequestId": request_id,
        "Error": {"Code": code, "Message": message[:1000]},
        "Timestamp": utc_timestamp(),
    }
    if extra:
        body.update(extra)
    return _dumps(body)


def environment_identity(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Device identity fields for replies and stats (the Greengrass thing name, when set)."""
    thing = environ.get("AWS_IOT_THING_NAME")
    return {"ThingName": thing} if thing else {}
