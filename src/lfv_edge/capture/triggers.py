"""Trigger messages: a PLC or light barrier asks for the inspection of what a camera sees now.

    {"RequestId": "part-000142", "Source": "cam1", "Metadata": {"Serial": "A-17"}}

All keys are optional: without `RequestId` the verdict gets one of the source's own; without
`Source` the trigger goes to the one camera listening on that topic (several: `Source` is
required); `Metadata` is echoed in the verdict as a request's is. The verdict goes to the
results topic with `RequestId` = the trigger's and `Capture.TriggerId` = the same. An empty
payload is a trigger too (a bare signal). Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from lfv_edge.errors import InputError
from lfv_edge.service.messages import BAD_REQUEST

_KEYS = frozenset({"RequestId", "Source", "Metadata"})
_MAX_REQUEST_ID = 256
_MAX_TRIGGER_BYTES = 64 << 10  # a trigger is a few dozen bytes; Metadata gets some room


@dataclass(frozen=True, slots=True)
class Trigger:
    """One parsed trigger message."""

    request_id: str | None
    source: str | None
    metadata: Mapping[str, object] | None = None
    received_at: float = 0.0  # time.perf_counter() when it arrived
    received_mono: float = 0.0  # time.monotonic() when it arrived
    topic: str = field(default="", compare=False)


def parse_trigger(payload: bytes) -> tuple[str | None, str | None, Mapping[str, object] | None]:
    """(RequestId, Source, Metadata) of a trigger payload.

    Raises:
        InputError: BadRequest, with the RequestId when one could be read (`request_id_of`).
    """
    if len(payload) > _MAX_TRIGGER_BYTES:
        raise InputError(BAD_REQUEST, f"a trigger is at most {_MAX_TRIGGER_BYTES} bytes")
    if not payload.strip():
        return None, None, None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InputError(BAD_REQUEST, f"the trigger is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InputError(BAD_REQUEST, "the trigger must be a JSON object")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise InputError(BAD_REQUEST, f"unknown trigger key(s) {unknown} (known: {sorted(_KEYS)})")
    request_id, source, metadata = body.get("RequestId"), body.get("Source"), body.get("Metadata")
    if request_id is not None and (
        not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_REQUEST_ID
    ):
        raise InputError(
            BAD_REQUEST, f"RequestId must be a string of 1–{_MAX_REQUEST_ID} characters"
        )
    if source is not None and (not isinstance(source, str) or not source):
        raise InputError(BAD_REQUEST, "Source must be a source id")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(BAD_REQUEST, "Metadata must be a JSON object")
    return request_id, source, metadata
